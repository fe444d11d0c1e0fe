"""The peers on the same exact score: k-diffusion, diffusers and the official DPM-Solver against pds_jax at 4-20 NFE.

On the exact Gaussian targets of the sampler leaderboard (`benchmarks.samplers.Target`:
gaussian64_ve, gaussian64_vp; configs/gaussian, 256 samples) every sampler gets
  - the same exact denoiser D(x̃, σ) = μ + F⁻¹[λ / (λ + σ²) F(x̃ - μ)] of the reference in the model's
    range (VP: the data centred to [-1, 1]), written once in torch float32 for the peers
    (`TorchDenoiser`, checked against pds_jax's `denoiser_from_score` of the exact score);
  - the same x_T: the SDE's prior drawn once from pds_jax's per-sample keys
    (`sampling.sample_keys(seed, 0, n)`, split as `Sampler._draw` does), given to pds_jax as `x_init`
    and to every peer in its own variable (EDM's x̃ = x_T / m(T) for k-diffusion, VP x = x̃ / sqrt(1 + σ²)
    at the scheduler's first σ for diffusers, x_T itself (VP) or α(T) x̃_T (VE) for the official code);
  - the same metric (`pds_jax.gaussian.metrics` on the samples after the inverse data scaler: KL per
    dimension of the samples' Gaussian fit, log-variance error, Fréchet distance).
Each sampler runs at the largest setting whose NFE (counted score evaluations) is at most each budget
of --nfe (Heun-type methods only reach odd NFE). Peers (optional benchmark dependencies, never
imported by pds_jax):
  k-diffusion   sample_euler, sample_heun, sample_dpmpp_2m, sample_dpmpp_3m_sde (eta = 0: deterministic,
                DPM-Solver++(3M)), sample_lms (order 4), sample_dpm_2 on get_sigmas_karras (ρ = 7) and
                get_sigmas_exponential from σ(T) to σ(eps) of the project's SDE, then 0 (k-diffusion's own
                grids). The PyPI k-diffusion's `__init__` imports its training stack (torchvision, kornia,
                clip, wandb), whose resolver pins would replace torch; with `pip install --no-deps
                k-diffusion torchsde trampoline torchdiffeq` its unmodified `sampling.py` is loaded on its
                own (`load_k_diffusion`), the one helper it takes from `utils` (append_dims) given here.
  diffusers     DPMSolverMultistepScheduler (dpmsolver++, order 2 and 3) and UniPCMultistepScheduler (bh2,
                order 2 and 3), each with its default 'linspace' timesteps, use_karras_sigmas and
                use_exponential_sigmas; prediction_type='sample', the rest at diffusers' defaults
                (lower_order_final, final_sigmas_type='zero'). The scheduler's 1000 training steps get
                `trained_betas` with ᾱ_i = 1 / (1 + σ(t_i)²) = m(t_i)² of the project's SDE at t_i uniform
                from eps to T, so its σ range is the SDE's [σ(eps), σ(T)] (VP: the continuous β schedule
                itself; VE: the VE marginals written as the equivalent VP process x = x̃ / sqrt(1 + σ²)).
                The model is called with the σ the scheduler steps with (`scheduler.sigmas[i]`), so it
                integrates the same ODE with the exact denoiser; only its node placement is its own.
  dpm_solver    the official dpm_solver_pytorch.py (LuChengTHU/dpm-solver) from --dpm_solver_dir (skipped
                without it): DPM-Solver++ multistep 2M / 3M and singlestep order 3 (DPM-Solver-fast,
                algorithm 'dpmsolver', the paper's), skip types 'logSNR' and 'time_uniform', its defaults
                (lower_order_final) as run (`steps` = NFE, ending at t = eps without denoising) and, for
                the multistep ones, with denoise_to_zero (`steps` = NFE - 1, pds_jax's count: the last
                evaluation is D at σ(eps)).
                VP: NoiseScheduleVP('linear', β 0.1-20) = the project's VP SDE; t from 1 to 1e-3.
                VE: the code has no EDM/VE form, so the VE marginals as the equivalent VP process
                (NoiseScheduleVP('discrete') with the ᾱ above: its log-SNR grid is VE's -log σ grid);
                the output x_{t_end} is divided by α(t_end) (x̃; 1 - 5e-5 on VP).
  pds_jax       get_sampling_fn with only method / solver_order / num_steps set: dpm_solver (++2M, ++3M),
                heun, euler, and unipc (2, 3), ipndm, restart, edm_stochastic where registered.
Fairness checks (printed, in the JSON): the torch denoiser against pds_jax's; pds_jax's own x_T
against the shared x_T; k-diffusion's sample_euler at 20 NFE against pds_jax's euler on the same
Karras grid; the model calls each peer made against its NFE.

  python -m benchmarks.peers --target gaussian64_ve --dpm_solver_dir ~/src/dpm-solver
  python -m benchmarks.peers --target all --dpm_solver_dir ~/src/dpm-solver
  python -m benchmarks.peers --target gaussian64_vp --quick     # smoke setting (16², 16 samples, NFE 5 and 10)
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import math
import os
import sys
import time
import types
from typing import Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from benchmarks import common
from benchmarks import samplers as leaderboard
from pds_jax import sampling
from pds_jax.samplers import grid, methods
from pds_jax.samplers.driver import split

TARGETS = ('gaussian64_ve', 'gaussian64_vp')
PEERS = ('k_diffusion', 'dpm_solver', 'diffusers')
NFES = '4,5,6,8,10,15,20'
NUM_TRAIN_TIMESTEPS = 1000  # diffusers' training steps and the official code's discrete ᾱ (VE)
# pds_jax rows: label -> (method, config.sampling fields besides num_steps); a method not registered is skipped.
PDS_ROWS = {
    'dpm_solver++2M': ('dpm_solver', {'solver_order': 2}),
    'dpm_solver++3M': ('dpm_solver', {'solver_order': 3}),
    'heun': ('heun', {}),
    'euler': ('euler', {}),
    'unipc-2': ('unipc', {'solver_order': 2}),
    'unipc-3': ('unipc', {'solver_order': 3}),
    'ipndm': ('ipndm', {}),
    'restart': ('restart', {}),
    'edm_stochastic': ('edm_stochastic', {}),
}
QUICK_PDS_ROWS = 'dpm_solver++2M,heun,euler'


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--target', choices=TARGETS + ('all',), default='all')
  p.add_argument('--quick', action='store_true', help='smoke setting (16x16, 16 samples, NFE 5 and 10)')
  p.add_argument('--num_samples', type=int, default=256)
  p.add_argument('--nfe', default=NFES, help='NFE budgets (each sampler at its largest setting within each)')
  p.add_argument('--peers', default=','.join(PEERS), help='comma-separated peers to run')
  p.add_argument('--pds_rows', default=','.join(PDS_ROWS), help='comma-separated pds_jax rows to run')
  p.add_argument('--dpm_solver_dir', default=None,
                 help='a checkout of github.com/LuChengTHU/dpm-solver (holding dpm_solver_pytorch.py); unset: '
                      'the official DPM-Solver is skipped')
  p.add_argument('--skip_checks', action='store_true', help='skip the fairness checks (e.g. a run of one peer whose '
                 'rows are merged into a full run)')
  p.add_argument('--torch_threads', type=int, default=1)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--out_dir', default=None)
  p.add_argument('--replot', action='store_true', help='redo the summary, plot and tables from the results JSON')
  args = p.parse_args(argv)
  if args.quick:
    args.nfe = '5,10'
    if args.pds_rows == ','.join(PDS_ROWS):
      args.pds_rows = QUICK_PDS_ROWS
  return args


# ----------------------------------------------------------------------------- loading the peers


def _append_dims(x, target_dims: int):
  """k_diffusion.utils.append_dims: trailing singleton axes up to target_dims."""
  return x[(...,) + (None,) * (target_dims - x.ndim)]


def load_k_diffusion():
  """(k_diffusion.sampling, version): the package's module, or its sampling.py loaded on its own.

  k-diffusion 0.1.1's `__init__` imports its training stack (torchvision, kornia, clip, wandb); where
  those are absent (installed with --no-deps to keep the project's torch), the package's unmodified
  sampling.py is executed as a module whose `utils` holds the one helper it uses (append_dims).
  Raises ImportError when k-diffusion (or torchsde / torchdiffeq, which sampling.py imports) is absent.
  """
  from importlib import metadata
  try:
    version = metadata.version('k-diffusion')
  except metadata.PackageNotFoundError as e:
    raise ImportError('k-diffusion is not installed (pip install --no-deps k-diffusion torchsde trampoline '
                      'torchdiffeq keeps the installed torch)') from e
  try:
    import k_diffusion
    return k_diffusion.sampling, version
  except ImportError:
    pass
  spec = importlib.util.find_spec('k_diffusion')
  folder = os.path.dirname(spec.origin)
  name = '_k_diffusion_sampling_only'
  if name + '.sampling' in sys.modules:
    return sys.modules[name + '.sampling'], version
  package = types.ModuleType(name)
  package.__path__ = [folder]
  utils = types.ModuleType(name + '.utils')
  utils.append_dims = _append_dims
  package.utils = utils
  sys.modules[name], sys.modules[name + '.utils'] = package, utils
  module_spec = importlib.util.spec_from_file_location(name + '.sampling', os.path.join(folder, 'sampling.py'))
  module = importlib.util.module_from_spec(module_spec)
  sys.modules[module_spec.name] = module
  module_spec.loader.exec_module(module)
  return module, version + ' (sampling.py only)'


def load_dpm_solver(folder: str):
  """(the official dpm_solver_pytorch module read from a checkout, sha256 of the file)."""
  path = os.path.join(os.path.expanduser(folder), 'dpm_solver_pytorch.py')
  if not os.path.isfile(path):
    raise ImportError(f'--dpm_solver_dir={folder}: no dpm_solver_pytorch.py there (a checkout of '
                      'github.com/LuChengTHU/dpm-solver).')
  with open(path, 'rb') as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  spec = importlib.util.spec_from_file_location('_official_dpm_solver_pytorch', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module, digest


# ----------------------------------------------------------------------------- the shared problem


class TorchDenoiser:
  """The exact denoiser D(x̃, σ) = μ + F⁻¹[λ / (λ + σ²) F(x̃ - μ)] in torch float32, NHWC; counts its calls.

  λ are the variances of the unitary Fourier coefficients (`GaussianReference.spectrum`), so the
  per-mode posterior mean of x_0 given x̃ = x_0 + σ ε shrinks each coefficient by λ / (λ + σ²).
  σ: a float, a 0-d tensor or one per sample (B,).
  """

  def __init__(self, reference):
    import torch
    self.torch = torch
    self.mean = torch.from_numpy(np.array(reference.mean, np.float32))
    spectrum = np.asarray(reference.spectrum, np.float32)
    self.width = spectrum.shape[1]
    # λ(k) = λ(-k) (a real stationary covariance), so the real FFT's half of the modes suffices
    self.spectrum = torch.from_numpy(spectrum[:, :self.width // 2 + 1].copy())
    self.calls = 0

  def __call__(self, x, sigma):
    torch = self.torch
    sigma = torch.as_tensor(sigma, dtype=x.dtype)
    if sigma.ndim:
      sigma = sigma.reshape(-1, 1, 1, 1)
    self.calls += 1
    gain = self.spectrum / (self.spectrum + sigma ** 2)
    coefficients = torch.fft.rfft2(x - self.mean, dim=(1, 2))
    return self.mean + torch.fft.irfft2(gain * coefficients, s=(x.shape[1], self.width), dim=(1, 2))


class Problem:
  """A target's SDE, exact score and denoiser, the shared x_T and the metric."""

  def __init__(self, name: str, args):
    self.name, self.args = name, args
    self.target = leaderboard.Target(name, argparse.Namespace(quick=args.quick, num_samples=args.num_samples,
                                                              seed=args.seed))
    t = self.target
    self.sde, self.eps, self.config = t.sde, t.eps, t.config
    self.n = t.num_samples
    self.shape = (self.n,) + t.image_shape
    scale, shift = (2., -1.) if t.config.data.centered else (1., 0.)
    self.model_reference = t.reference.affine(scale, shift)  # the law in the model's range
    self.sigma_max = float(self.sde.edm_sigma(np.float64(self.sde.T)))
    self.sigma_min = float(self.sde.edm_sigma(np.float64(self.eps)))
    self.keys = sampling.sample_keys(args.seed, 0, self.n)
    _, init_rng = split(self.keys)  # as Sampler._start_impl, then _draw with per-sample keys
    self.x_T = jax.vmap(lambda key: self.sde.prior_sampling(key, self.shape[1:]))(init_rng)
    # EDM's x̃_T = x_T / m(T), in float32 as the σ-grid solvers' init computes it
    self.x_tilde_T = np.asarray(self.x_T / self.sde.edm_scale(jnp.float32(self.sde.T)), np.float32)
    self.is_vp = not type(self.sde).__name__ == 'VESDE'
    self.floor = t.metrics(t.floor_images)

  def metrics(self, samples_model_range) -> Dict[str, float]:
    samples = np.asarray(samples_model_range, np.float32)
    if not np.all(np.isfinite(samples)):
      return {m: float('inf') for m in self.floor}
    return self.target.metrics(np.asarray(self.target.inverse_scaler(samples), np.float32))

  def sigma_table(self, count: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    """σ(t_i) of the SDE at t_i uniform from eps to T (float64): the discrete schedule given to the peers."""
    t = np.linspace(np.float64(self.eps), np.float64(self.sde.T), count)
    return np.asarray(self.sde.edm_sigma(t), np.float64)

  def base_config(self) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(self.config.to_dict())


# ----------------------------------------------------------------------------- pds_jax


def _pds_config(problem: Problem, method: str, fields: dict, num_steps: int) -> ml_collections.ConfigDict:
  config = problem.base_config()
  config.sampling.method = method
  for k, v in fields.items():
    setattr(config.sampling, k, v)
  config.sampling.num_steps = int(num_steps)
  config.sampling.num_chunks = 1
  return config


def _pds_fn(problem: Problem, config):
  return sampling.get_sampling_fn(config, problem.sde, problem.shape, lambda x: x, problem.eps)


def pds_steps_for(problem: Problem, method: str, fields: dict, budget: int) -> Optional[int]:
  """The largest num_steps whose NFE is at most `budget` (None if none is)."""
  best = None
  for steps in range(1, budget + 2):
    try:
      fn = _pds_fn(problem, _pds_config(problem, method, fields, steps))
    except ValueError:
      continue
    if fn.nfe is not None and fn.nfe <= budget:
      best = steps
  return best


def run_pds(problem: Problem, method: str, fields: dict, num_steps: int, x_init=None, schedule=None):
  """(samples in the model's range, nfe, settings) of a pds_jax method from the shared x_T."""
  extra = dict(fields, **({'schedule': schedule} if schedule else {}))
  fn = _pds_fn(problem, _pds_config(problem, method, extra, num_steps))
  if abs(fn.sampler.solver.t_start - problem.sde.T) > 1e-9:  # the shared x_T lives at T (init 'auto' = prior here)
    raise ValueError(f'{method} starts at t = {fn.sampler.solver.t_start}, not T: the shared prior x_T does not apply.')
  samples, nfe = fn(problem.keys, problem.target.score_fn, x_init=problem.x_T if x_init is None else x_init)
  settings = {k: v for k, v in fn.settings.items() if isinstance(v, (int, float, str, bool)) or v is None}
  if settings.get('schedule') is None and 'sigma_max' in settings:
    settings['schedule'] = f'{grid.default_schedule(method)} (default)'
  return np.asarray(jax.block_until_ready(samples), np.float32), nfe, settings


def pds_rows(problem: Problem, budgets: List[int], labels: List[str]) -> List[dict]:
  registered = methods.method_names()
  rows, cache = [], {}
  for label in labels:
    method, fields = PDS_ROWS[label]
    if method not in registered:
      print(f'pds_jax {label}: method {method!r} is not registered here; skipped', flush=True)
      continue
    for budget in budgets:
      steps = pds_steps_for(problem, method, fields, budget)
      if steps is None:
        rows.append(_row('pds_jax', label, None, budget, None, None, None, f'no num_steps within {budget} NFE'))
        continue
      if (label, steps) not in cache:
        start = time.time()
        try:
          samples, nfe, settings = run_pds(problem, method, fields, steps)
          cache[label, steps] = (nfe, problem.metrics(samples), settings, time.time() - start, None)
        except sampling.NonFiniteSampleError as e:
          cache[label, steps] = (None, {m: float('inf') for m in problem.floor}, {}, time.time() - start, str(e))
      nfe, metrics, settings, seconds, error = cache[label, steps]
      setting = {'num_steps': steps, **{k: settings[k] for k in ('schedule', 'sigma_max', 'sigma_min') if k in settings}}
      rows.append(_row('pds_jax', label, setting.get('schedule'), budget, nfe, metrics, setting, error, seconds))
      _print_row(rows[-1])
  return rows


# ----------------------------------------------------------------------------- k-diffusion

K_SAMPLERS = {  # name -> (NFE of n grid nodes (n + 1 sigmas ending at 0), extra arguments)
    'euler': (lambda n: n, {}),
    'heun': (lambda n: 2 * n - 1, {}),
    'dpmpp_2m': (lambda n: n, {}),
    'dpmpp_3m_sde(eta=0)': (lambda n: n, {'eta': 0., 'noise_sampler': lambda sigma, sigma_next: None}),
    'lms': (lambda n: n, {}),
    'dpm_2': (lambda n: 2 * n - 1, {}),
}


def _largest(nfe_of: Callable[[int], int], budget: int, smallest: int = 1) -> Optional[int]:
  fits = [n for n in range(smallest, budget + 2) if nfe_of(n) <= budget]
  return max(fits) if fits else None


def k_diffusion_sample(problem: Problem, kd, sampler: str, schedule: str, nodes: int):
  """(samples (model range), model calls) of k-diffusion's sample_<sampler> on its `schedule` grid."""
  import torch
  denoiser = TorchDenoiser(problem.model_reference)
  make = kd.get_sigmas_karras if schedule == 'karras' else kd.get_sigmas_exponential
  kwargs = {'rho': 7.} if schedule == 'karras' else {}
  sigmas = make(nodes, problem.sigma_min, problem.sigma_max, **kwargs)
  name = sampler.split('(')[0]
  extra = K_SAMPLERS[sampler][1]
  with torch.no_grad():
    x = getattr(kd, f'sample_{name}')(denoiser, torch.from_numpy(problem.x_tilde_T.copy()), sigmas, disable=True,
                                        **extra)
  return x.numpy(), denoiser.calls


def k_diffusion_rows(problem: Problem, budgets: List[int]) -> List[dict]:
  kd, version = load_k_diffusion()
  print(f'k-diffusion {version}', flush=True)
  rows = []
  for sampler, (nfe_of, _) in K_SAMPLERS.items():
    smallest = 3 if sampler.startswith('dpmpp_3m') else 2
    for schedule in ('karras', 'exponential'):
      for budget in budgets:
        nodes = _largest(nfe_of, budget, smallest)
        start = time.time()
        samples, calls = k_diffusion_sample(problem, kd, sampler, schedule, nodes)
        rows.append(_row('k-diffusion', sampler, schedule, budget, calls, problem.metrics(samples),
                         {'nodes': nodes, 'expected_nfe': nfe_of(nodes)}, None, time.time() - start))
        _print_row(rows[-1])
  return rows


# ----------------------------------------------------------------------------- diffusers


def _trained_betas(problem: Problem) -> np.ndarray:
  """β_i with cumprod(1 - β) = ᾱ_i = 1 / (1 + σ(t_i)²) = m(t_i)² on the SDE's t grid from eps to T."""
  alphas_cumprod = 1. / (1. + problem.sigma_table() ** 2)
  return 1. - alphas_cumprod / np.concatenate([[1.], alphas_cumprod[:-1]])


def diffusers_sample(problem: Problem, scheduler_name: str, order: int, sigmas_kind: str, nfe: int):
  """(samples (model range), model calls, the scheduler's σ range) of a diffusers multistep scheduler."""
  import diffusers
  import torch
  common_kwargs = dict(num_train_timesteps=NUM_TRAIN_TIMESTEPS, trained_betas=_trained_betas(problem),
                       solver_order=order, prediction_type='sample',
                       use_karras_sigmas=sigmas_kind == 'karras', use_exponential_sigmas=sigmas_kind == 'exponential')
  if scheduler_name == 'DPMSolverMultistep':
    scheduler = diffusers.DPMSolverMultistepScheduler(algorithm_type='dpmsolver++', **common_kwargs)
  else:
    scheduler = diffusers.UniPCMultistepScheduler(solver_type='bh2', predict_x0=True, **common_kwargs)
  scheduler.set_timesteps(nfe)
  sigmas = scheduler.sigmas.to(torch.float32)
  denoiser = TorchDenoiser(problem.model_reference)
  x_tilde = torch.from_numpy(problem.x_tilde_T.copy())
  x = x_tilde / torch.sqrt(1 + sigmas[0] ** 2)  # the VP variable x = α x̃, α = 1 / sqrt(1 + σ²)
  with torch.no_grad():
    for i, timestep in enumerate(scheduler.timesteps):
      sigma = sigmas[i]  # the σ the scheduler's update uses at this step
      x0 = denoiser(x * torch.sqrt(1 + sigma ** 2), sigma)
      x = scheduler.step(x0, timestep, x).prev_sample
  final = float(sigmas[-1])
  out = x * torch.sqrt(torch.tensor(1 + final ** 2))  # x̃ (σ = 0: x itself)
  positive = sigmas[sigmas > 0]
  return out.numpy(), denoiser.calls, {'sigma_max': float(positive[0]), 'sigma_min': float(positive[-1]),
                                       'timesteps': [int(v) for v in scheduler.timesteps]}


def diffusers_rows(problem: Problem, budgets: List[int]) -> List[dict]:
  import diffusers
  print(f'diffusers {diffusers.__version__}', flush=True)
  rows = []
  for scheduler_name, tag in (('DPMSolverMultistep', 'dpmsolver++'), ('UniPCMultistep', 'unipc-bh2')):
    for order in (2, 3):
      for sigmas_kind in ('linspace', 'karras', 'exponential'):
        for budget in budgets:
          start = time.time()
          try:
            samples, calls, info = diffusers_sample(problem, scheduler_name, order, sigmas_kind, budget)
            metrics, error = problem.metrics(samples), None
          except Exception as e:  # a setting the scheduler refuses is a result, not a crash
            calls, info, metrics, error = None, {}, None, f'{type(e).__name__}: {e}'
          rows.append(_row('diffusers', f'{scheduler_name} {tag} order {order}', sigmas_kind, budget, calls, metrics,
                           info, error, time.time() - start))
          _print_row(rows[-1])
  return rows


# ----------------------------------------------------------------------------- the official DPM-Solver

OFFICIAL = {  # label -> (algorithm_type, method, order, also with denoise_to_zero)
    'DPM-Solver++(2M)': ('dpmsolver++', 'multistep', 2, True),
    'DPM-Solver++(3M)': ('dpmsolver++', 'multistep', 3, True),
    'DPM-Solver-3 singlestep': ('dpmsolver', 'singlestep', 3, False),
}


def official_sample(problem: Problem, module, label: str, skip_type: str, nfe: int, denoise_to_zero: bool):
  """(samples (model range), model calls) of the official DPM_Solver.sample at `nfe` evaluations."""
  import torch
  algorithm, method, order, _ = OFFICIAL[label]
  if problem.is_vp:
    schedule = module.NoiseScheduleVP('linear', continuous_beta_0=problem.sde.beta_0,
                                      continuous_beta_1=problem.sde.beta_1)
  else:  # VE as the equivalent VP process: ᾱ_i = 1 / (1 + σ_i²) at t_i = (i + 1) / N ↔ σ(eps) … σ(T)
    alphas_cumprod = torch.tensor(1. / (1. + problem.sigma_table() ** 2), dtype=torch.float64)
    schedule = module.NoiseScheduleVP('discrete', alphas_cumprod=alphas_cumprod)
  denoiser = TorchDenoiser(problem.model_reference)

  def model(x, t_input):  # data prediction at the official code's own (α_t, σ_t)
    t = t_input if schedule.schedule == 'linear' else t_input / 1000. + 1. / schedule.total_N
    alpha, std = schedule.marginal_alpha(t).to(x.dtype), schedule.marginal_std(t).to(x.dtype)
    return denoiser(x / alpha.reshape(-1, 1, 1, 1), std / alpha)

  model_fn = module.model_wrapper(model, schedule, model_type='x_start')
  solver = module.DPM_Solver(model_fn, schedule, algorithm_type=algorithm)
  t_end = problem.eps if problem.is_vp else 1. / schedule.total_N
  if problem.is_vp:
    x_T = torch.from_numpy(np.asarray(problem.x_T, np.float32).copy())  # the prior draw itself
  else:
    x_T = torch.from_numpy(problem.x_tilde_T.copy()) * schedule.marginal_alpha(torch.ones(1) * schedule.T)
  steps = nfe - 1 if denoise_to_zero else nfe
  with torch.no_grad():
    x = solver.sample(x_T, steps=steps, t_start=1., t_end=t_end, order=order, skip_type=skip_type, method=method,
                      lower_order_final=True, denoise_to_zero=denoise_to_zero)
    if not denoise_to_zero:  # x_{t_end} = α x̃
      x = x / schedule.marginal_alpha(torch.tensor([t_end], dtype=torch.float32))
  return x.numpy(), denoiser.calls


def dpm_solver_rows(problem: Problem, budgets: List[int], folder: str) -> List[dict]:
  module, digest = load_dpm_solver(folder)
  print(f'official DPM-Solver: dpm_solver_pytorch.py sha256 {digest[:12]}', flush=True)
  rows = []
  for label, (_, method, order, with_denoise) in OFFICIAL.items():
    for skip_type in ('logSNR', 'time_uniform'):
      for denoise_to_zero in (False, True) if with_denoise else (False,):
        for budget in budgets:
          start = time.time()
          steps = budget - 1 if denoise_to_zero else budget
          setting = {'steps': steps, 'denoise_to_zero': denoise_to_zero, 'lower_order_final': True,
                     'file_sha256': digest}
          if method == 'multistep' and steps < order:
            rows.append(_row('dpm_solver', label, skip_type, budget, None, None, setting, f'steps {steps} < order'))
            continue
          try:
            samples, calls = official_sample(problem, module, label, skip_type, budget, denoise_to_zero)
            metrics, error = problem.metrics(samples), None
          except Exception as e:  # e.g. an assertion of the official code
            calls, metrics, error = None, None, f'{type(e).__name__}: {e}'
          name = label + (' +denoise_to_zero' if denoise_to_zero else '')
          rows.append(_row('dpm_solver', name, skip_type, budget, calls, metrics, setting, error, time.time() - start))
          _print_row(rows[-1])
  return rows


# ----------------------------------------------------------------------------- fairness checks


def fairness_checks(problem: Problem, kd) -> dict:
  """The peers see what pds_jax sees: the denoiser, x_T, and one solver that both implement identically."""
  import torch
  checks = {}
  # 1. the torch denoiser against pds_jax's denoiser_from_score of the exact score
  pds_denoise = grid.denoiser_from_score(problem.target.score_fn, problem.sde)
  torch_denoise = TorchDenoiser(problem.model_reference)
  x0 = problem.model_reference.sample(jax.random.PRNGKey(problem.args.seed + 7), 8)
  noise = jax.random.normal(jax.random.PRNGKey(problem.args.seed + 8), x0.shape)
  per_sigma = {}
  for sigma in (problem.sigma_max, 10., 1., 0.1, problem.sigma_min):
    x = np.asarray(x0 + np.float32(sigma) * noise, np.float32)
    reference = np.asarray(pds_denoise(jnp.asarray(x), jnp.float32(sigma)), np.float64)
    ours = torch_denoise(torch.from_numpy(x), torch.tensor(sigma, dtype=torch.float32)).numpy().astype(np.float64)
    exact = _denoise_float64(problem.model_reference, x, float(np.float32(sigma)))
    scale = np.max(np.abs(x))
    per_sigma[f'{sigma:.4g}'] = {'torch_vs_pds_jax_max_abs': float(np.max(np.abs(ours - reference))),
                                 'torch_vs_pds_jax_over_max_abs_x': float(np.max(np.abs(ours - reference)) / scale),
                                 'torch_vs_float64_max_abs': float(np.max(np.abs(ours - exact))),
                                 'pds_jax_vs_float64_max_abs': float(np.max(np.abs(reference - exact)))}
  checks['denoiser_vs_pds_jax'] = per_sigma
  checks['denoiser_torch_vs_pds_jax_max_abs_over_max_abs_x'] = max(
      v['torch_vs_pds_jax_over_max_abs_x'] for v in per_sigma.values())
  checks['denoiser_torch_vs_float64_max_abs'] = max(v['torch_vs_float64_max_abs'] for v in per_sigma.values())
  checks['denoiser_pds_jax_vs_float64_max_abs'] = max(v['pds_jax_vs_float64_max_abs'] for v in per_sigma.values())
  # 2. pds_jax draws the shared x_T itself (no x_init) — euler on the Karras grid, 20 nodes = 20 NFE
  nodes = 20
  own = _run_pds_without_x_init(problem, nodes)
  given, _, _ = run_pds(problem, 'euler', {}, nodes, schedule='karras')
  checks['pds_jax_own_x_T_vs_shared_max_abs'] = float(np.max(np.abs(own - given)))
  # 3. k-diffusion's sample_euler vs pds_jax's euler on the Karras grid at 20 NFE
  if kd is not None:
    samples, calls = k_diffusion_sample(problem, kd, 'euler', 'karras', nodes)
    diff = np.abs(samples.astype(np.float64) - given)
    checks['k_diffusion_euler_vs_pds_jax_euler_karras_20'] = {
        'max_abs': float(diff.max()), 'max_abs_over_max_abs_sample': float(diff.max() / np.abs(given).max()),
        'rms': float(np.sqrt(np.mean(diff ** 2))), 'k_diffusion_calls': calls,
        'kl_k_diffusion': problem.metrics(samples)['kl_per_dim'], 'kl_pds_jax': problem.metrics(given)['kl_per_dim']}
  for name, value in checks.items():
    print(f'fairness {name}: {value}', flush=True)
  return checks


def _denoise_float64(reference, x: np.ndarray, sigma: float) -> np.ndarray:
  """The exact denoiser in float64 numpy (the arbiter of the denoiser check)."""
  mean, lam = np.asarray(reference.mean, np.float64), np.asarray(reference.spectrum, np.float64)
  coefficients = np.fft.fft2(np.asarray(x, np.float64) - mean, axes=(1, 2))
  return mean + np.real(np.fft.ifft2(lam / (lam + sigma ** 2) * coefficients, axes=(1, 2)))


def _run_pds_without_x_init(problem: Problem, nodes: int) -> np.ndarray:
  config = _pds_config(problem, 'euler', {'schedule': 'karras'}, nodes)
  samples, _ = _pds_fn(problem, config)(problem.keys, problem.target.score_fn)
  return np.asarray(jax.block_until_ready(samples), np.float32)


# ----------------------------------------------------------------------------- rows, run, tables


def _row(family, sampler, schedule, budget, nfe, metrics, setting, error=None, seconds=None) -> dict:
  return {'family': family, 'sampler': sampler, 'schedule': schedule, 'budget': budget,
          'nfe': None if nfe is None else float(nfe), 'metrics': metrics, 'setting': setting or {},
          'error': error, 'seconds': seconds}


def _print_row(row: dict) -> None:
  kl = row['metrics']['kl_per_dim'] if row['metrics'] else float('nan')
  print(f"{row['family']:11s} {row['sampler']:42s} {str(row['schedule']):22s} NFE<={row['budget']:3d} "
        f"nfe={row['nfe']} KL={kl:.4g}" + (f" ({row['error'][:80]})" if row['error'] else ''), flush=True)


def _fix_skip(message: str, skipped: Dict[str, str], peer: str) -> None:
  skipped[peer] = message
  print(f'{peer}: skipped: {message}', flush=True)


def run(args) -> dict:
  import torch
  torch.set_num_threads(args.torch_threads)
  problem = Problem(args.target, args)
  budgets = common.int_list(args.nfe)
  peers = [p for p in args.peers.split(',') if p]
  print(f'{args.target}: {problem.n} samples of {problem.shape[1:]}; {type(problem.sde).__name__} σ ∈ '
        f'[{problem.sigma_min:.4g}, {problem.sigma_max:.4g}]; floor {problem.floor}', flush=True)
  skipped: Dict[str, str] = {}
  kd = None
  try:
    kd, _ = load_k_diffusion()
  except ImportError as e:
    _fix_skip(str(e), skipped, 'k_diffusion')
  checks = {} if args.skip_checks else fairness_checks(problem, kd)
  rows: List[dict] = []
  partial = common.output_paths(f'peers_{args.target}', args.out_dir, args.quick)['json']

  def payload(complete: bool) -> dict:
    return {'target': args.target, 'num_samples': problem.n, 'image_shape': list(problem.shape[1:]),
            'sde': type(problem.sde).__name__, 'sigma_max': problem.sigma_max, 'sigma_min': problem.sigma_min,
            'floor': problem.floor, 'budgets': budgets, 'fairness': checks, 'skipped': skipped, 'rows': rows,
            'complete': complete}

  rows += pds_rows(problem, budgets, [r for r in args.pds_rows.split(',') if r])
  common.write_json(partial, {'setting': vars(args), **payload(False)})  # the rows so far, if a run is cut short
  for peer in peers:
    if peer == 'k_diffusion':
      if kd is not None:
        rows += k_diffusion_rows(problem, budgets)
    elif peer == 'diffusers':
      try:
        rows += diffusers_rows(problem, budgets)
      except ImportError as e:
        _fix_skip(f'{e} (pip install diffusers)', skipped, 'diffusers')
    elif peer == 'dpm_solver':
      if not args.dpm_solver_dir:
        _fix_skip('--dpm_solver_dir is unset (a checkout of github.com/LuChengTHU/dpm-solver)', skipped, 'dpm_solver')
      else:
        rows += dpm_solver_rows(problem, budgets, args.dpm_solver_dir)
    else:
      raise ValueError(f'--peers: unknown peer {peer!r}; choose from {PEERS}.')
    common.write_json(partial, {'setting': vars(args), **payload(False)})
  for row in rows:  # every peer evaluated the denoiser exactly NFE times
    expected = row['setting'].get('expected_nfe')
    if expected is not None and row['nfe'] != expected:
      row['error'] = f'made {row["nfe"]} model calls, expected {expected}'
  return payload(True)


def _ok(row: dict) -> bool:
  return row['metrics'] is not None and row['nfe'] is not None and math.isfinite(row['metrics']['kl_per_dim'])


def _label(row: dict) -> str:
  return f"{row['family']} {row['sampler']}" + (f" [{row['schedule']}]" if row['schedule'] else '')


def summarise(payload: dict) -> dict:
  """Per budget: the best peer and the best pds_jax row by KL per dimension, and their ratio."""
  table = {}
  for budget in payload['budgets']:
    rows = [r for r in payload['rows'] if r['budget'] == budget and _ok(r)]
    peers = [r for r in rows if r['family'] != 'pds_jax']
    ours = [r for r in rows if r['family'] == 'pds_jax']
    best_peer = min(peers, key=lambda r: r['metrics']['kl_per_dim']) if peers else None
    best_ours = min(ours, key=lambda r: r['metrics']['kl_per_dim']) if ours else None
    entry = {}
    for key, row in (('peer', best_peer), ('pds_jax', best_ours)):
      entry[key] = None if row is None else {'kl_per_dim': row['metrics']['kl_per_dim'], 'nfe': row['nfe'],
                                             'frechet_distance': row['metrics']['frechet_distance'], 'which': _label(row)}
    entry['ratio_pds_jax_over_peer'] = (best_ours['metrics']['kl_per_dim'] / best_peer['metrics']['kl_per_dim']
                                        if best_peer and best_ours else None)
    table[str(budget)] = entry
  return {'by_budget': table}


def plot(payload: dict, path) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(9, 5.5))
  by_label: Dict[str, List[dict]] = {}
  for row in payload['rows']:
    if _ok(row):
      by_label.setdefault(_label(row), []).append(row)
  for label, rows in by_label.items():
    ours = label.startswith('pds_jax')
    ax.plot([r['budget'] for r in rows], [r['metrics']['kl_per_dim'] for r in rows], lw=1.6 if ours else 0.6,
            color=None if ours else '0.7', marker='o' if ours else None, ms=3, label=label if ours else None)
  best = payload['summary']['by_budget']
  budgets = [b for b in best if best[b]['peer']]
  ax.plot([int(b) for b in budgets], [best[b]['peer']['kl_per_dim'] for b in budgets], 'k--', lw=2, label='best peer')
  ax.axhline(payload['floor']['kl_per_dim'], color='grey', lw=0.8, ls=':', label='exact draws (noise floor)')
  ax.set(xscale='log', yscale='log', xlabel='NFE budget', ylabel='KL per dimension',
         title=f"{payload['target']}: peers (grey) vs pds_jax on the same exact score and x_T ({payload['num_samples']} samples)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  common.save_figure(fig, path)


def report(payload: dict) -> str:
  summary = payload['summary']['by_budget']
  lines = []
  for budget, entry in summary.items():
    peer, ours = entry['peer'], entry['pds_jax']
    lines.append([budget, peer and peer['kl_per_dim'], peer and peer['which'], ours and ours['kl_per_dim'],
                  ours and ours['which'], entry['ratio_pds_jax_over_peer']])
  head = (f"{payload['target']} ({payload['num_samples']} samples, {payload['sde']}; KL per dimension; floor of as "
          f"many exact draws {payload['floor']['kl_per_dim']:.4g}):\n")
  best = common.markdown_table(['NFE ≤', 'best peer KL', 'which', 'best pds_jax KL', 'which', 'pds_jax / peer'], lines)
  budgets = payload['budgets']
  by_label: Dict[str, Dict[int, dict]] = {}
  for row in payload['rows']:
    by_label.setdefault(_label(row), {})[row['budget']] = row
  cell = lambda r: None if r is None or not _ok(r) else (
      f"{r['metrics']['kl_per_dim']:.4g}" + ('' if r['nfe'] == r['budget'] else f" ({r['nfe']:.0f})"))
  every = common.markdown_table(['row'] + [f'NFE ≤ {b}' for b in budgets],
                                [[label] + [cell(rows.get(b)) for b in budgets] for label, rows in by_label.items()])
  skipped = ''.join(f'\nskipped {k}: {v}' for k, v in payload.get('skipped', {}).items())
  fairness = payload.get('fairness', {})
  checks = '\nfairness: ' + ', '.join(
      f'{k} = {v:.3g}' if isinstance(v, float) else f'{k} = {v}' for k, v in fairness.items()
      if k != 'denoiser_vs_pds_jax')
  return (head + best + '\n\nevery row (KL per dimension; the NFE in brackets where below the budget):\n' + every
          + checks + skipped)


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
  args = parse_args(argv)
  payloads = []
  for target in (TARGETS if args.target == 'all' else (args.target,)):
    target_args = argparse.Namespace(**{**vars(args), 'target': target})
    payloads.append(common.main(f'peers_{target}', target_args, run, summarise, plot, report))
  return payloads


if __name__ == '__main__':
  main()
