"""Initialization-aware sampling on the toys of Fassina et al.: sample quality vs NFE for each init.

Targets (pds_jax.init_aware.toys, official constructions, standardised):
  gmm_grid_2d     25 Gaussian modes on the 5×5 grid, 2-D           exact noised score (closed form)
  gmm_10d         20 random Gaussian modes, 10-D                   exact noised score
  student_t_2d    4 Student-t (df 3) modes, 2-D                    learned MLP score (ToyScoreMLP, the
  student_t_10d   20 Student-t (df 3) modes, 10-D                  project's DSM loss on fresh draws)
Sampler (the official toy sampler): VE ancestral (DDPM posterior) steps on the Karras grid with
ρ = 2 down to σ_min = 2·10⁻⁴, then a last step to 0; one score evaluation per step, NFE = nodes.
Methods, all with the same sampler noise and evaluation draws:
  classic    x ~ N(0, σ_max² I), σ_max = 3, the grid from σ_max (the official toy grid's top)
  flow       the affine-coupling flow (5 layers, width 50, depth 3; Gaussian base for GMMs,
             Student-t base for the t mixtures) fitted by maximum likelihood on 10⁴ noised
             training draws (dynamic regime), the grid from σ_T
  moment     N(m, C + σ_T² I) with the training draws' mean and covariance (not in the paper)
  gaussian   the uninformed N(0, σ_T² I)
  empirical  the oracle: a training draw + σ_T ε
σ_T: the reference values of docs/method.md §8, 1 for the 2-D toys and 2.3 for the 10-D ones; the dip-test
selection (pds_jax.init_aware.sigma_t, 64 directions) is run on the training draws and reported.
Metrics against fresh exact draws of the target: sliced W1 (256 directions) and max-sliced W1
(best of 256 directions + 300 Adam steps); the noise floor is the same metrics between two sets of
exact draws. Order 1, not 2: a t₃ law has no fourth moment, so empirical W2 distances between
heavy-tailed samples are dominated by a few extreme draws (measured with W2 on 10⁴ draws: a floor
of 0.84 in 10-D, above most samplers' values). KL(p_T ‖ q_T) of each init is a Monte-Carlo estimate
on draws of p_T with the analytic log p_T (closed form for GMMs, quadrature for Student-t; for
classic p_{σ_max}).
NFE to match classic: the first NFE at which a method gets within 1.05 × of classic's best value
over its grid (benchmarks.common.reach_summary).

  python -m benchmarks.init_aware_toys            # full setting
  python -m benchmarks.init_aware_toys --quick    # smoke setting (< 1 min)
"""
from __future__ import annotations

import argparse
import functools
import time
from typing import Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from benchmarks import common
from pds_jax import sde_lib
from pds_jax.samplers import edm, grid
from pds_jax.samplers.driver import Sampler
from pds_jax.init_aware import flow_training, inits, metrics, toy_score, toys
from pds_jax.init_aware.sigma_t import select_sigma_t

SIGMA_MAX = 3.
SIGMA_MIN = 2e-4
RHO = 2.
METRICS = ('sw', 'max_sw')
METHODS = ('classic', 'flow', 'moment', 'gaussian', 'empirical')
TARGETS: Dict[str, dict] = {
    'gmm_grid_2d': dict(build=toys.grid_gaussian_mixture, sigma_t=1., score='exact', base='gaussian'),
    'gmm_10d': dict(build=functools.partial(toys.random_gaussian_mixture, dim=10, n_mixture=20), sigma_t=2.3,
                    score='exact', base='gaussian'),
    'student_t_2d': dict(build=functools.partial(toys.random_student_t_mixture, dim=2, n_mixture=4), sigma_t=1.,
                         score='learned', base='student_t'),
    'student_t_10d': dict(build=functools.partial(toys.random_student_t_mixture, dim=10, n_mixture=20),
                          sigma_t=2.3, score='learned', base='student_t'),
}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--quick', action='store_true', help='smoke setting (2-D targets, tiny training, 2 grids)')
  p.add_argument('--targets', type=str, default=','.join(TARGETS))
  p.add_argument('--nodes', type=str, default='2,3,5,8,12,20,40,80', help='grid nodes = NFE of every method')
  p.add_argument('--num_samples', type=int, default=10000, help='samples per run (and exact evaluation draws)')
  p.add_argument('--num_train', type=int, default=10000, help='training draws of the flow, moment and empirical inits')
  p.add_argument('--flow_epochs', type=int, default=1000)
  p.add_argument('--score_steps', type=int, default=20000, help='DSM steps of the learned score (Student-t)')
  p.add_argument('--max_sw_steps', type=int, default=300)
  p.add_argument('--p', type=float, default=1., help='order of the (max-)sliced Wasserstein distances')
  p.add_argument('--dip_directions', type=int, default=64)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--out_dir', type=str, default=None, help='default benchmarks/results')
  p.add_argument('--replot', action='store_true', help='no sampling: re-summarise and re-plot the results JSON')
  args = p.parse_args(argv)
  if args.quick:
    args.targets, args.nodes, args.num_samples, args.num_train = 'gmm_grid_2d,student_t_2d', '3,10', 500, 500
    args.flow_epochs, args.score_steps, args.max_sw_steps, args.dip_directions = 2, 200, 10, 4
  unknown = set(args.targets.split(',')) - set(TARGETS)
  if unknown:
    p.error(f'--targets: unknown {sorted(unknown)}; choose from {sorted(TARGETS)}')
  return args


def _exact_score(target, x: jax.Array, t: jax.Array, *, sde: sde_lib.VESDE) -> jax.Array:
  return target.noised_score(x, sde.edm_sigma(t))


def _score_fn(spec: dict, target, dim: int, sde: sde_lib.VESDE, args, rng: jax.Array, info: dict) -> Partial:
  """The exact noised score of a GMM, or a ToyScoreMLP trained with the DSM loss (Student-t)."""
  if spec['score'] == 'exact':
    return Partial(functools.partial(_exact_score, sde=sde), target)
  start = time.time()
  params, history = toy_score.train_toy_score(target.sample, dim, sde, rng, num_steps=args.score_steps)
  score_fn = toy_score.toy_score_fn(toy_score.ToyScoreMLP(), params, sde)
  info['score_training'] = {'steps': args.score_steps, 'seconds': time.time() - start, 'final_loss': history[-1]}
  info['score_relative_error'] = _score_error(target, score_fn, sde, jax.random.fold_in(rng, 1))
  return score_fn


def _score_error(target, score_fn, sde: sde_lib.VESDE, rng: jax.Array, n: int = 2000) -> Dict[str, float]:
  """E‖s_θ - ∇log p_σ‖² / E‖∇log p_σ‖² on draws of p_σ at a few σ (the quadrature score is the truth)."""
  errors = {}
  x0 = target.sample(rng, n)
  for sigma in (0.01, 0.1, 0.5, 1., 2.):
    x = x0 + sigma * jax.random.normal(jax.random.fold_in(rng, 7), x0.shape)
    t = jnp.full((n,), np.log(sigma / sde.sigma_min) / np.log(sde.sigma_max / sde.sigma_min))
    exact, learned = target.noised_score(x, sigma), score_fn(x, t)
    errors[f'{sigma:g}'] = float(jnp.sum((learned - exact) ** 2) / jnp.sum(exact ** 2))
  return errors


def _inits(spec: dict, train: jax.Array, args, rng: jax.Array, info: dict) -> Dict[str, inits.InitDistribution]:
  sigma_t = spec['sigma_t']
  module = flow_training.build_flow('coupling', (train.shape[1],), sigma_t, base=spec['base'])
  start = time.time()
  flow, history = flow_training.fit_flow(module, train, sigma_t, rng, epochs=args.flow_epochs, batch_size=1000,
                                         regime='dynamic', progress=False)
  info['flow_training'] = {'epochs': args.flow_epochs, 'seconds': time.time() - start,
                           'final_train_nll_per_dim': history['train_nll'][-1]}
  return {'classic': inits.IsotropicGaussianInit.create(SIGMA_MAX, (train.shape[1],)),
          'flow': flow,
          'moment': inits.MomentGaussianInit.from_samples(train, sigma_t),
          'gaussian': inits.IsotropicGaussianInit.create(sigma_t, (train.shape[1],)),
          'empirical': inits.EmpiricalInit.create(train, sigma_t)}


def _kl(target, init, sigma: float, rng: jax.Array, n: int) -> Dict[str, float]:
  """KL(p_σ ‖ q) ± its standard error from n draws of p_σ (the analytic log p_σ)."""
  k_x, k_eps = jax.random.split(rng)
  x0 = target.sample(k_x, n)
  x = x0 + sigma * jax.random.normal(k_eps, x0.shape)
  value, error = metrics.kl_monte_carlo(lambda y: target.noised_log_prob(y, sigma), init.log_prob, x)
  return {'value': value, 'std_error': error}


def _quality(samples: jax.Array, reference: jax.Array, rng: jax.Array, args) -> Dict[str, float]:
  k_sw, k_max = jax.random.split(rng)
  sw = metrics.sliced_wasserstein(samples, reference, k_sw, p=args.p)
  max_sw, _ = metrics.max_sliced_wasserstein(samples, reference, k_max, num_steps=args.max_sw_steps, p=args.p)
  return {'sw': float(sw), 'max_sw': float(max_sw)}


@functools.partial(jax.jit, static_argnames=('n',))
def _draw_init(init, rng: jax.Array, n: int) -> jax.Array:
  return init.sample(rng, n)


def run_target(name: str, args) -> dict:
  spec = TARGETS[name]
  rng = jax.random.PRNGKey(args.seed)
  k_train, k_ref, k_floor, k_score, k_flow, k_dip, k_kl, k_init, k_sampler, k_metric = jax.random.split(
      jax.random.fold_in(rng, sorted(TARGETS).index(name)), 10)
  target = spec['build']()
  dim = target.dim
  train = target.sample(k_train, args.num_train)
  reference = target.sample(k_ref, args.num_samples)
  info: dict = {'dim': dim, 'sigma_t': spec['sigma_t'], 'score': spec['score'], 'flow_base': spec['base']}
  start = time.time()
  info['sigma_t_dip'] = select_sigma_t(np.asarray(train), k_dip, args.dip_directions)[0]
  info['dip_seconds'] = time.time() - start
  floor = _quality(target.sample(k_floor, args.num_samples), reference, k_metric, args)
  sde = sde_lib.VESDE(SIGMA_MIN, SIGMA_MAX, 1000)
  score_fn = _score_fn(spec, target, dim, sde, args, k_score, info)
  init_dists = _inits(spec, train, args, k_flow, info)
  results, kl = {}, {}
  for method, init in init_dists.items():
    sigma_start = SIGMA_MAX if method == 'classic' else spec['sigma_t']
    kl[method] = _kl(target, init, sigma_start, k_kl, min(args.num_samples, 5000))
    x_t = _draw_init(init, k_init, args.num_samples)
    for n in common.int_list(args.nodes):
      sigmas = grid.karras_sigmas(sigma_start, SIGMA_MIN, n, RHO)
      start = time.time()
      samples, nfe = Sampler(edm.AncestralSolver(sde, sigmas), x_t.shape)(k_sampler, score_fn, x_init=x_t)
      samples = jax.block_until_ready(samples)
      seconds = time.time() - start
      entry = {'nodes': n, 'nfe': int(nfe), 'sampling_seconds_incl_compile': seconds,
               'metrics': _quality(samples, reference, k_metric, args)}
      results.setdefault(method, []).append(entry)
      values = ' '.join(f'{k}={v:.4g}' for k, v in entry['metrics'].items())
      print(f'{name:14s} {method:9s} nfe={int(nfe):4d} {values}', flush=True)
  print(f'{name}: ' + ', '.join(f'KL(p_T||{m}) = {v["value"]:.4g}' for m, v in kl.items()), flush=True)
  return {**info, 'floor': floor, 'kl_init': kl, 'results': results}


def run(args) -> dict:
  return {'targets': {name: run_target(name, args) for name in args.targets.split(',')}}


def summarise(payload: dict) -> dict:
  """Per target and metric: the NFE each init needs to match classic's best value (1.05 x)."""
  return {name: {metric: common.reach_summary(t['results'], 'classic', metric) for metric in METRICS}
          for name, t in payload['targets'].items()}


def plot(payload: dict, path) -> None:
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from matplotlib.ticker import NullFormatter
  targets = payload['targets']
  fig = Figure(figsize=(9, 3.2 * len(targets)), dpi=100)
  FigureCanvasAgg(fig)
  for row, (name, t) in enumerate(targets.items()):
    for col, metric in enumerate(METRICS):
      ax = fig.add_subplot(len(targets), len(METRICS), row * len(METRICS) + col + 1)
      for method, entries in t['results'].items():
        ax.plot([e['nfe'] for e in entries], [e['metrics'][metric] for e in entries], marker='o', ms=3, label=method)
      ax.axhline(t['floor'][metric], color='grey', ls='--', label='exact draws (floor)')
      ax.set_xscale('log')
      ax.set_yscale('log')
      nfe = [e['nfe'] for e in t['results']['classic']]
      ax.set_xticks(nfe, [str(n) for n in nfe])
      ax.xaxis.set_minor_formatter(NullFormatter())
      ax.set_title(f'{name} (σ_T = {t["sigma_t"]:g}): {metric}', fontsize=9)
      ax.set_xlabel('NFE')
      ax.grid(True, alpha=0.3)
  fig.axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(str(path))


def report(payload: dict) -> str:
  lines = []
  for name, t in payload['targets'].items():
    nodes = [e['nfe'] for e in t['results']['classic']]
    rows = [[m, t['kl_init'][m]['value'], *(e['metrics']['sw'] for e in entries)]
            for m, entries in t['results'].items()]
    rows.append(['exact draws (floor)', None, *([t['floor']['sw']] * len(nodes))])
    title = (f'{name}: sliced W{payload["setting"]["p"]:g} vs NFE (σ_T = {t["sigma_t"]:g}, '
             f'dip test {t["sigma_t_dip"]:.3g})')
    lines += [f'### {title}', '',
              common.markdown_table(['init', 'KL(p_T ‖ q_T)', *(f'NFE {n}' for n in nodes)], rows), '']
  reach = []
  for name, per_metric in payload['summary'].items():
    for method in METHODS:
      reach.append([name, method, *(common.reach_cell(per_metric[metric][method]) for metric in METRICS)])
  lines.append(common.markdown_table(['target', 'init', *(f'NFE to match classic {m} (speed-up)' for m in METRICS)],
                                     reach))
  return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> dict:
  return common.main('init_aware_toys', parse_args(argv), run, summarise, plot, report)


if __name__ == '__main__':
  main()
