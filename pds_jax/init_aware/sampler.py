"""The initialization-aware sampler of a config: x_T ~ q_T at σ_T, then a short sampler to σ_min.

`sampling.method = 'init_aware'` with
  sampling.init          'flow' | 'spectral_gaussian' | 'gaussian' | 'empirical'   (q_T)
  sampling.init_sampler  'heun' | 'euler' | 'ancestral' (EDM samplers on the Karras grid
                         σ_T → init_sigma_min with init_nodes nodes, ρ = init_rho, then 0), or
                         'pc' (the Core PC sampler on the VE time grid cut at σ_T, init_nodes steps)
and the PDS fields of `config.sampling` (the masks precondition the short sampler: init × PDS).
`fit_init` (run_lib) writes q_T and σ_T to workdir/init/; `load_init` reads them back.

Files in the init folder: init.json (kind, σ_T, the data shape, metrics), plus
spectral_gaussian.npz (μ, λ + σ_T² of `SpectralGaussianInit`), flow.msgpack (`flow_training`)
or empirical.npz (the clean images x_0 of the oracle).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from pds_jax import sde_lib
from pds_jax.gaussian import GaussianReference
from pds_jax.init_aware import edm, flow_training, inits
from pds_jax.io_utils import atomic_write
from pds_jax.preconditioning import Preconditioner

INITS = ('flow', 'spectral_gaussian', 'gaussian', 'empirical')
INIT_SAMPLERS = ('heun', 'euler', 'ancestral', 'pc')
_FILES = {'spectral_gaussian': 'spectral_gaussian.npz', 'flow': 'flow.msgpack', 'empirical': 'empirical.npz'}


def init_folder(config, workdir: str) -> str:
  """sampling.init_path, else workdir/init."""
  return config.sampling.init_path or os.path.join(workdir, 'init')


def save_init(folder: str, kind: str, init, sigma_t: float, shape: Tuple[int, ...], info: Dict,
              history: Optional[Dict] = None) -> str:
  """Writes q_T (its file and init.json) atomically; returns the init.json path."""
  os.makedirs(folder, exist_ok=True)
  if kind in _FILES:
    path = os.path.join(folder, _FILES[kind])
    if kind == 'flow':
      flow_training.save_flow(path, init, history)
    else:
      arrays = ({'mean': np.asarray(init.noised.mean), 'spectrum': np.asarray(init.noised.spectrum)}
                if kind == 'spectral_gaussian' else {'data': np.asarray(init.data)})
      atomic_write(path, lambda f: np.savez(f, **arrays))
  manifest = {'init': kind, 'sigma_t': float(sigma_t), 'shape': list(shape), **info}
  json_path = os.path.join(folder, 'init.json')
  atomic_write(json_path, lambda f: f.write(json.dumps(manifest, indent=2).encode()))
  return json_path


def load_init(folder: str, kind: str, shape: Tuple[int, ...]) -> Tuple[inits.InitDistribution, float]:
  """(q_T, σ_T) of `kind` from a fit_init folder; errors name the folder, file and shapes."""
  json_path = os.path.join(folder, 'init.json')
  if not os.path.isfile(json_path):
    raise ValueError(f'{json_path}: not found; run --mode fit_init with --config.sampling.init={kind} first '
                     '(or point --config.sampling.init_path at its folder).')
  with open(json_path) as f:
    manifest = json.load(f)
  if manifest['init'] != kind:
    raise ValueError(f'{json_path} holds a {manifest["init"]!r} init; config.sampling.init is {kind!r}.')
  if tuple(manifest['shape']) != tuple(shape):
    raise ValueError(f'{json_path}: the init was fitted to data of shape {tuple(manifest["shape"])}, '
                     f'the model samples {tuple(shape)}.')
  sigma_t = float(manifest['sigma_t'])
  if kind == 'gaussian':
    return inits.IsotropicGaussianInit.create(sigma_t, shape), sigma_t
  path = os.path.join(folder, _FILES[kind])
  if not os.path.isfile(path):
    raise ValueError(f'{path}: the {kind} init file is missing (init.json is there).')
  if kind == 'flow':
    return flow_training.load_flow(path, expected_shape=shape), sigma_t
  with np.load(path) as f:
    if kind == 'spectral_gaussian':
      noised = GaussianReference(mean=jnp.asarray(f['mean']), spectrum=jnp.asarray(f['spectrum']))
      return inits.SpectralGaussianInit(noised), sigma_t
    return inits.EmpiricalInit.create(f['data'], sigma_t), sigma_t


def _draw_init(init, keys: jax.Array) -> jax.Array:
  """x_T (B, ...) with item i drawn from key i."""
  return jax.vmap(lambda key: init.sample(key, 1)[0])(keys)


@dataclasses.dataclass
class InitAwareSampler:
  """Callable like `PCSampler`: sampler(keys (B, 2), score_fn, progress=False) -> (samples, nfe).

  x_T of item i comes from key i; the ancestral sampler's noise is drawn from key 0 folded with
  the step (so, unlike x_T, it depends on the batch composition).
  """
  sde: sde_lib.SDE
  init: inits.InitDistribution
  sigma_t: float
  sampler: str
  num_nodes: int
  rho: float
  sigma_min: float
  inverse_scaler: Callable
  preconditioner: Preconditioner
  pc_kwargs: Dict

  def __post_init__(self):
    if self.sampler not in INIT_SAMPLERS:
      raise ValueError(f'config.sampling.init_sampler = {self.sampler!r}; choose one of {INIT_SAMPLERS}.')
    if not self.sigma_min < self.sigma_t:
      raise ValueError(f'sigma_T = {self.sigma_t} must exceed the final noise level {self.sigma_min} '
                       '(config.sampling.init_sigma_min).')
    if self.num_nodes < 2:
      raise ValueError(f'config.sampling.init_nodes = {self.num_nodes} must be >= 2.')
    if self.sampler != 'pc':
      self.sigmas = edm.karras_sigmas(self.sigma_t, self.sigma_min, self.num_nodes, self.rho)
      self._run = jax.jit(self._edm)

  @property
  def nfe(self) -> int:
    if self.sampler == 'pc':
      evals = 1 + int(self.pc_kwargs['corrector'] != 'none') * self.pc_kwargs['n_steps']
      return self.num_nodes * evals
    steps = len(self.sigmas) - 1
    return 2 * steps - 1 if self.sampler == 'heun' else steps  # Heun's last step (to 0) is Euler

  def _edm(self, keys, score_fn, init, preconditioner):
    x_t = _draw_init(init, keys)
    denoiser = edm.denoiser_from_score(score_fn, self.sde)
    samples, _ = edm.get_sampler(self.sampler)(denoiser, x_t, self.sigmas, keys[0], preconditioner=preconditioner)
    return self.inverse_scaler(samples)

  def __call__(self, keys: jax.Array, score_fn, progress: bool = False) -> Tuple[jax.Array, int]:
    if self.sampler != 'pc':
      return self._run(keys, score_fn, self.init, self.preconditioner), self.nfe
    x_t = jax.jit(_draw_init)(self.init, keys)
    samples, nfe = edm.pc_sample_from(keys, score_fn, self.sde, x_t, self.sigma_t, num_steps=self.num_nodes,
                                      preconditioner=self.preconditioner, **self.pc_kwargs)
    return self.inverse_scaler(samples), nfe


def get_init_aware_sampler(config, sde: sde_lib.SDE, init, sigma_t: float, inverse_scaler: Callable,
                           eps: float, preconditioner: Optional[Preconditioner] = None) -> InitAwareSampler:
  """The InitAwareSampler of `config.sampling` (see the module docstring)."""
  s = config.sampling
  if not isinstance(sde, sde_lib.VESDE) and s.init_sampler == 'pc':
    raise ValueError("init_sampler 'pc' starts the PC sampler of a VE model; use 'heun' / 'euler' / "
                     "'ancestral' for VP / subVP models (they go through D(x, σ)).")
  pc_kwargs = dict(predictor=s.predictor.lower(), corrector=s.corrector.lower(), snr=s.snr, n_steps=s.n_steps_each,
                   probability_flow=s.probability_flow, denoise=s.noise_removal, eps=eps,
                   pds_variant=s.pds_variant)
  return InitAwareSampler(sde, init, float(sigma_t), s.init_sampler, int(s.init_nodes), float(s.init_rho),
                          float(s.init_sigma_min), inverse_scaler,
                          Preconditioner() if preconditioner is None else preconditioner, pc_kwargs)
