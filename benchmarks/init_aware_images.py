"""Initialization-aware sampling on the exact Gaussian reference (64×64×3): exact FD vs NFE, with and without PDS.

Data: the stationary Gaussian with the 1/|k|² spectrum of benchmarks.quality_vs_steps (values
around [0, 1]); its score is exact at every σ, so the sampler and the init are the only sources of
error. Two sampler families, each with and without PDS:
EDM's deterministic Heun (pds_jax.samplers.edm; 2 NFE per step, 1 on the last step to σ = 0)
  classic          x ~ N(0, σ_max² I), σ_max by Song & Ermon's rule (48.7), Karras grid ρ 7 to
                   σ_min = 0.002 (EDM's setting)
  <init>_s<σ_T>    x_T ~ q_T, Karras grid ρ 5 from σ_T to 0.002 (the paper's image setting), with
    spectral       the closed-form spectral Gaussian N(μ, Σ + σ_T² I) fitted to 1000 training draws
                   (stationary, per-channel mean; zero training)
    gaussian       the uninformed N(0, σ_T² I)
    empirical      the oracle: a training draw + σ_T ε (1000 training draws)
score_sde's PC sampler (reverse_diffusion + langevin, snr 0.16; 2 NFE per step), PDS's own setting
  classic_pc       from the prior on VESDE(0.01, σ_max, N), eps = 1e-5 · 2000 / N (as quality_vs_steps)
  spectral_s<σ_T>_pc   the spectral init, then the PC sampler on the VE grid cut at σ_T
                   (sampling.PCSolver from t(σ_T), N steps, eps 1e-5)
  ...+pds          the PC families with the PDS frequency mask (official statistic of 200 exact
                   draws clipped to [0, 1], α = 5), the official PDS variant. (Heun + PDS was measured
                   before the sampler layer — no run below FD 13, README — and is now refused: K = M Mᵀ
                   on a deterministic ODE changes its flow map.)
The learned TarFlow init is not run here: fitting it at 64×64×3 takes GPU-days in the paper
and is out of reach on a CPU; the closed-form spectral init is its zero-training counterpart.
σ_T: 3.5 (the paper's σ_T = 7 for data in [-1, 1], rescaled to [0, 1]) and 1.
Metrics (pds_jax.gaussian.metrics): the exact Fréchet distance to the reference of the
samples' stationary Gaussian fit, and the RMS log-variance error over frequencies; the noise floor
is the same metrics of as many exact draws; KL(p_T ‖ q_T) of the Gaussian inits is exact (closed
form in the Fourier basis, gaussian.kl_divergence). NFE to match a baseline (classic, classic_pc):
the first NFE at which a method gets within 1.05 × of the baseline's best FD over its grid
(benchmarks.common.reach_summary).

  python -m benchmarks.init_aware_images            # full setting
  python -m benchmarks.init_aware_images --quick    # smoke setting (< 1 min)
"""
from __future__ import annotations

import argparse
import time
from typing import Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from pds_jax import gaussian, preconditioning, sampling, sde_lib
from pds_jax.samplers import edm, grid
from pds_jax.samplers.driver import Sampler
from pds_jax.init_aware import inits

SIGMA_MIN = 0.002
RHO_CLASSIC, RHO_SHORT = 7., 5.
METRICS = ('frechet_distance', 'log_variance_error')
INITS = ('spectral', 'gaussian', 'empirical')
BASELINES = ('classic', 'classic_pc')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--quick', action='store_true', help='smoke setting (16x16, 64 samples, 2 grids, one σ_T)')
  p.add_argument('--size', type=int, default=64, help='image height = width')
  p.add_argument('--num_samples', type=int, default=1000)
  p.add_argument('--num_train', type=int, default=1000, help='training draws of the spectral and empirical inits')
  p.add_argument('--classic_nodes', type=str, default='3,4,6,8,12,16,24,32,48,64', help='Karras nodes of classic')
  p.add_argument('--short_nodes', type=str, default='2,3,4,6,8,12,16,24', help='Karras nodes from σ_T')
  p.add_argument('--classic_pc_steps', type=str, default='10,20,50,100,200,500', help='PC steps of classic_pc')
  p.add_argument('--short_pc_steps', type=str, default='5,10,20,50,100', help='PC steps from σ_T')
  p.add_argument('--sigma_t', type=str, default='1,3.5')
  p.add_argument('--alpha', type=float, default=5.)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--out_dir', type=str, default=None, help='default benchmarks/results')
  p.add_argument('--replot', action='store_true', help='no sampling: re-summarise and re-plot the results JSON')
  args = p.parse_args(argv)
  if args.quick:
    args.size, args.num_samples, args.num_train, args.classic_nodes, args.short_nodes = 16, 64, 64, '3,8', '2,4'
    args.classic_pc_steps, args.short_pc_steps = '10,20', '5,10'
    args.sigma_t = '3.5'
  return args


def _init(name: str, train: np.ndarray, sigma_t: float, shape) -> inits.InitDistribution:
  if name == 'spectral':
    return inits.SpectralGaussianInit.from_images(train, sigma_t)
  if name == 'gaussian':
    return inits.IsotropicGaussianInit.create(sigma_t, shape)
  return inits.EmpiricalInit.create(train, sigma_t)


def run(args) -> dict:
  shape = (args.size, args.size, 3)
  reference = gaussian.GaussianReference.power_law(shape)
  sigma_max = round(gaussian.song_ermon_sigma_max(reference), 1)
  sde = sde_lib.VESDE(SIGMA_MIN, sigma_max, 1000)
  freq_stat, _ = common.reference_statistics(reference, 200, seed=args.seed + 1)
  pds = preconditioning.from_statistics(freq_stat, None, alpha=args.alpha)
  rng = jax.random.PRNGKey(args.seed)
  k_train, k_floor, k_init, k_classic = jax.random.split(rng, 4)
  train = np.asarray(reference.sample(k_train, args.num_train))
  floor = gaussian.metrics(reference.sample(k_floor, args.num_samples), reference)
  print('noise floor (exact draws):', floor, flush=True)
  pc_sde = sde_lib.VESDE(common.SIGMA_MIN, sigma_max, 1000)
  families: Dict[str, dict] = {}
  classic = inits.IsotropicGaussianInit.create(sigma_max, shape)
  short_inits = {(name, sigma_t): _init(name, train, sigma_t, shape)
                 for sigma_t in common.float_list(args.sigma_t) for name in INITS}
  families['classic'] = dict(sampler='heun', init=classic, sigma=sigma_max, rho=RHO_CLASSIC,
                             grid=common.int_list(args.classic_nodes), precond=None)
  for sigma_t in common.float_list(args.sigma_t):
    for name in INITS:
      families[f'{name}_s{sigma_t:g}'] = dict(sampler='heun', init=short_inits[name, sigma_t], sigma=sigma_t,
                                             rho=RHO_SHORT, grid=common.int_list(args.short_nodes), precond=None)
  for suffix, precond in (('', None), ('+pds', pds)):
    families['classic_pc' + suffix] = dict(sampler='pc', init=None, sigma=sigma_max,
                                           grid=common.int_list(args.classic_pc_steps), precond=precond)
    for sigma_t in common.float_list(args.sigma_t):
      families[f'spectral_s{sigma_t:g}_pc{suffix}'] = dict(
          sampler='pc', init=short_inits['spectral', sigma_t], sigma=sigma_t,
          grid=common.int_list(args.short_pc_steps), precond=precond)
  results, kl = {}, {}
  for method, f in families.items():
    x_t = None if f['init'] is None else f['init'].sample(k_init, args.num_samples)
    for n in f['grid']:
      start = time.time()
      if f['sampler'] == 'heun':
        solver = edm.HeunSolver(sde, grid.karras_sigmas(f['sigma'], SIGMA_MIN, n, f['rho']))
        samples, nfe = Sampler(solver, x_t.shape)(k_classic, reference.score_fn(sde), x_init=x_t)
      elif x_t is None:  # classic PC: score_sde's sampler from the prior N(0, σ_max² I)
        sampler = common.ve_sampler(sigma_max, (args.num_samples,) + shape, n)
        samples, nfe = sampler(k_classic, reference.score_fn(sampler.sde), f['precond'])
      else:  # the PC sampler on the grid cut at σ_T
        solver = sampling.PCSolver(pc_sde.with_num_scales(n), snr=common.SNR, eps=1e-5,
                                   t_start=float(pc_sde.edm_time(np.float64(f['sigma']))))
        samples, nfe = Sampler(solver, x_t.shape)(k_classic, reference.score_fn(pc_sde), f['precond'], x_init=x_t)
      samples = jax.block_until_ready(samples)
      entry = {'steps': n, 'nfe': int(nfe), 'sampling_seconds_incl_compile': time.time() - start,
               'metrics': gaussian.metrics(samples, reference)}
      results.setdefault(method, []).append(entry)
      print(f'{method:24s} nfe={int(nfe):4d} ' + ' '.join(f'{k}={v:.4g}' for k, v in entry['metrics'].items()),
            flush=True)
  for method, f in families.items():
    if f['sampler'] == 'heun' and not isinstance(f['init'], inits.EmpiricalInit):
      kl[method] = _init_kl(reference, f['sigma'], f['init'])
  return {'sigma_max': sigma_max, 'floor': floor, 'kl_init': kl, 'results': results}


def _init_kl(reference: gaussian.GaussianReference, sigma: float, init) -> float:
  """The exact KL(p_σ ‖ q) of a Gaussian init: both are stationary Gaussians (gaussian.kl_divergence)."""
  p_sigma = inits.SpectralGaussianInit.from_reference(reference, sigma).noised
  if isinstance(init, inits.SpectralGaussianInit):
    q = init.noised
  else:  # IsotropicGaussianInit: N(0, σ² I)
    q = gaussian.GaussianReference(mean=jnp.zeros(reference.shape),
                                   spectrum=jnp.full(reference.shape, init.sigma_t ** 2))
  return gaussian.kl_divergence(p_sigma, q)


def summarise(payload: dict) -> dict:
  """Per baseline (classic Heun, classic PC) and metric: the NFE each method needs to match its best value (1.05 x)."""
  return {baseline: {metric: common.reach_summary(payload['results'], baseline, metric) for metric in METRICS}
          for baseline in BASELINES}


def plot(payload: dict, path) -> None:
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(12, 4.2), dpi=100)
  FigureCanvasAgg(fig)
  for col, metric in enumerate(METRICS):
    ax = fig.add_subplot(1, len(METRICS), col + 1)
    colours = {}
    for method, entries in payload['results'].items():
      base = method.replace('+pds', '')
      line, = ax.plot([e['nfe'] for e in entries], [e['metrics'][metric] for e in entries], marker='o', ms=3,
                      ls='--' if method.endswith('+pds') else '-', color=colours.get(base),
                      label=method)
      colours.setdefault(base, line.get_color())
    ax.axhline(payload['floor'][metric], color='grey', ls=':', label='exact draws (floor)')
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xlabel('NFE (Heun)')
    ax.set_title(metric + ' (dashed: with PDS)', fontsize=9)
    ax.grid(True, alpha=0.3)
  fig.axes[0].legend(fontsize=6, ncol=2)
  fig.tight_layout()
  fig.savefig(str(path))


def report(payload: dict) -> str:
  results = payload['results']
  nfe_sets = sorted({e['nfe'] for entries in results.values() for e in entries})
  rows = []
  for method, entries in results.items():
    by_nfe = {e['nfe']: e['metrics']['frechet_distance'] for e in entries}
    kl = payload['kl_init'].get(method.replace('+pds', '').replace('_pc', ''))  # the same init
    rows.append([method, kl, *(by_nfe.get(n) for n in nfe_sets)])
  rows.append(['exact draws (floor)', None, *([payload['floor']['frechet_distance']] * len(nfe_sets))])
  lines = ['Exact Fréchet distance vs NFE', '',
           common.markdown_table(['method', 'KL(p_T ‖ q_T)', *(f'NFE {n}' for n in nfe_sets)], rows), '']
  reach = []
  for method in results:
    reach.append([method, *(common.reach_cell(payload['summary'][b]['frechet_distance'][method]) for b in BASELINES)])
  header = [f'NFE to match {b} FD (speed-up vs it)' for b in BASELINES]
  lines.append(common.markdown_table(['method', *header], reach))
  return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> dict:
  return common.main('init_aware_images', parse_args(argv), run, summarise, plot, report)


if __name__ == '__main__':
  main()
