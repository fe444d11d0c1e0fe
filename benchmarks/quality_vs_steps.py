"""Sample quality vs number of steps on the exact Gaussian reference: vanilla PC vs PDS.

Data: the stationary Gaussian with the natural 1/|k|² spectrum (docs/method.md §6), 64x64x3, whose
scores are exact, so the only error left is the sampler's. Samplers: reverse_diffusion +
langevin on VESDE(0.01, σ_max, N), σ_max by Song & Ermon's rule, eps = 1e-5 · 2000 / N; vanilla
(identity M), official PDS and marginal-preserving PDS with the frequency mask of 200 exact
draws clipped to [0, 1] (α = 5). Metrics: per-frequency log-variance error and the exact Fréchet
distance, next to the noise floor (the same metrics of as many exact draws). All methods use the
same sampler rng (common random numbers).

  python -m benchmarks.quality_vs_steps            # full setting (34 min measured on 2 shared cores)
  python -m benchmarks.quality_vs_steps --quick    # smoke setting (< 1 min)
"""
from __future__ import annotations

import argparse
import json
import math
import time
from typing import Dict, List, Optional, Sequence

import jax
import numpy as np

from benchmarks import common
from pds_jax import gaussian, preconditioning

METRICS = ('log_variance_error', 'frechet_distance')
METHODS = {'vanilla': None, 'pds_official': 'official', 'pds_marginal_preserving': 'marginal_preserving'}
TOLERANCE = 1.05
RULE = ('target = 1.05 x the metric of vanilla at the largest N of the grid; grid_steps = the smallest '
        'grid N from which on (this N and every larger grid N) the metric is <= target; '
        'interpolated_steps = the N where the straight line in (log N, log metric) between the next '
        'smaller grid point (above target) and grid_steps crosses the target. None: not reached in the '
        'grid; at_most_grid_minimum: already reached at the smallest grid N.')
EQUIVALENT_RULE = ('for every PDS run whose metric is above the target (not converged): vanilla_steps = the '
                   'steps vanilla needs to reach that run\'s metric by the same rule; speed_up = vanilla_steps / N '
                   '(both upper bounds when vanilla_steps_at_most).')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--quick', action='store_true', help='tiny smoke setting (16x16, 32 samples, N in 100, 20, 10)')
  p.add_argument('--size', type=int, default=64, help='image height = width')
  p.add_argument('--num_samples', type=int, default=128)
  p.add_argument('--steps', type=str, default='10,20,50,100,200,500,1000,2000', help='comma-separated N grid')
  p.add_argument('--alpha', type=float, default=5.)
  p.add_argument('--extra_alpha', type=float, default=2., help='official PDS also at this alpha ...')
  p.add_argument('--extra_alpha_steps', type=str, default='10,20', help='... at these N')
  p.add_argument('--floor_draws', type=int, default=8, help='independent exact batches for the noise floor')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--out_dir', type=str, default=None, help='default benchmarks/results')
  p.add_argument('--replot', action='store_true',
                 help='no sampling: re-summarise, re-plot and print the existing results JSON')
  args = p.parse_args(argv)
  if args.quick:
    args.size, args.num_samples, args.steps, args.extra_alpha_steps, args.floor_draws = 16, 32, '10,20,100', '10', 4
  return args


def steps_to_reach(steps: Sequence[int], values: Sequence[float], target: float) -> dict:
  """Steps needed for a metric to reach `target` (see RULE); steps ascending, values aligned."""
  below = [v <= target for v in values]
  if not below[-1]:
    return {'grid_steps': None, 'interpolated_steps': None, 'at_most_grid_minimum': False}
  j = len(below) - 1
  while j > 0 and below[j - 1]:
    j -= 1
  if j == 0:
    return {'grid_steps': steps[0], 'interpolated_steps': float(steps[0]), 'at_most_grid_minimum': True}
  (n0, v0), (n1, v1) = (steps[j - 1], values[j - 1]), (steps[j], values[j])  # v0 > target >= v1 > 0
  slope = (math.log(n1) - math.log(n0)) / (math.log(v1) - math.log(v0))
  n_star = math.exp(math.log(n0) + (math.log(target) - math.log(v0)) * slope)
  return {'grid_steps': n1, 'interpolated_steps': n_star, 'at_most_grid_minimum': False}


def noise_floor(reference: gaussian.GaussianReference, num_samples: int, draws: int, seed: int) -> dict:
  """Mean and std over `draws` batches of the metrics of `num_samples` exact draws."""
  values = [gaussian.metrics(reference.sample(jax.random.fold_in(jax.random.PRNGKey(seed), i), num_samples),
                             reference) for i in range(draws)]
  return {m: {'mean': float(np.mean([v[m] for v in values])), 'std': float(np.std([v[m] for v in values])),
              'draws': draws} for m in METRICS}


def run(args: argparse.Namespace, paths: Dict) -> dict:
  shape = (args.size, args.size, 3)
  reference = gaussian.GaussianReference.power_law(shape)
  sigma_max = round(gaussian.song_ermon_sigma_max(reference), 1)
  freq_stat, _ = common.reference_statistics(reference, 200, seed=args.seed + 1)
  masks = {a: preconditioning.from_statistics(freq_stat, None, alpha=a) for a in (args.alpha, args.extra_alpha)}
  grid = common.int_list(args.steps)
  payload = {
      'benchmark': 'quality_vs_steps',
      'setting': {
          'shape': list(shape), 'num_samples': args.num_samples, 'steps': grid,
          'num_samples_note': 'chosen so that the full grid runs in well under an hour on 2 shared CPU '
                              'cores (FD noise floor ~ 960 / num_samples at 64x64x3)',
          'reference': 'GaussianReference.power_law(shape, mean=0.45, pixel_std=0.25, exponent=2)',
          'sde': {'name': 'VESDE', 'sigma_min': common.SIGMA_MIN, 'sigma_max': sigma_max,
                  'sigma_max_rule': 'song_ermon_sigma_max(reference, 2000) rounded to 1 decimal'},
          'sampler': {'predictor': 'reverse_diffusion', 'corrector': 'langevin', 'snr': common.SNR,
                      'n_steps_each': 1, 'denoise': True, 'eps': '1e-5 * 2000 / N (PDS speed_up, num_scales 2000)'},
          'preconditioner': {'masks': 'frequency only', 'alpha': args.alpha,
                             'statistics': 'compute_statistics(clip(200 exact draws, 0, 1)), seed %d' % (args.seed + 1),
                             'extra': {'alpha': args.extra_alpha, 'method': 'pds_official',
                                       'steps': common.int_list(args.extra_alpha_steps)}},
          'seed': args.seed, 'rng': 'the same sampler key for every method and N (common random numbers)',
          'quick': args.quick},
      'environment': common.environment(),
  }
  payload['noise_floor'] = noise_floor(reference, args.num_samples, args.floor_draws, args.seed + 2)
  runs = [(n, name, args.alpha) for n in grid for name in METHODS]
  runs += [(n, 'pds_official', args.extra_alpha) for n in common.int_list(args.extra_alpha_steps)]
  results = payload['results'] = []
  rng = jax.random.PRNGKey(args.seed)
  start_all = time.perf_counter()
  for n, name, alpha in runs:
    sampler = common.ve_sampler(sigma_max, (args.num_samples,) + shape, n, METHODS[name] or 'official')
    score_fn = reference.score_fn(sampler.sde)
    start = time.perf_counter()
    samples, nfe = sampler(rng, score_fn, None if METHODS[name] is None else masks[alpha])
    wall = time.perf_counter() - start
    row = {'method': name, 'num_steps': n, 'alpha': None if METHODS[name] is None else alpha, 'nfe': nfe,
           **gaussian.metrics(samples, reference), 'seconds_incl_compile': wall}
    results.append(row)
    print(f'N={n:5d} {name:24s} alpha={row["alpha"]} LVE={row["log_variance_error"]:.4f} '
          f'FD={row["frechet_distance"]:.4f} ({wall:.1f} s)', flush=True)
    common.write_json(paths['json'], payload)  # partial results survive an interrupted run
  payload['steps_to_reach_vanilla_reference'] = summarize(results, grid, args.alpha)
  payload['total_seconds'] = time.perf_counter() - start_all
  payload['environment_end'] = common.environment()
  common.write_json(paths['json'], payload)
  return payload


def _curve(results: List[dict], name: str, alpha: float, metric: str, grid: Sequence[int]) -> List[float]:
  by_n = {r['num_steps']: r[metric] for r in results
          if r['method'] == name and (r['alpha'] is None or r['alpha'] == alpha)}
  return [by_n[n] for n in grid]


def summarize(results: List[dict], grid: Sequence[int], alpha: float) -> dict:
  """Steps each method needs to reach vanilla's converged error, and vanilla steps matching each PDS run."""
  summary = {'rule': RULE, 'tolerance': TOLERANCE, 'reference': f'vanilla, N = {grid[-1]}',
             'equivalent_vanilla_steps_rule': EQUIVALENT_RULE}
  for metric in METRICS:
    vanilla = _curve(results, 'vanilla', alpha, metric, grid)
    target = TOLERANCE * vanilla[-1]
    summary[metric] = {'target': target}
    for name in METHODS:
      summary[metric][name] = steps_to_reach(grid, _curve(results, name, alpha, metric, grid), target)
    summary[metric]['equivalent_vanilla_steps'] = [
        {'method': r['method'], 'alpha': r['alpha'], 'num_steps': r['num_steps'], 'value': r[metric],
         **_equivalent(steps_to_reach(grid, vanilla, r[metric]), r['num_steps'])}
        for r in results if r['method'] != 'vanilla' and r[metric] > target]
  return summary


def _equivalent(reach: dict, num_steps: int) -> dict:
  n = reach['interpolated_steps']
  return {'vanilla_steps': n, 'vanilla_steps_at_most': reach['at_most_grid_minimum'],
          'speed_up': None if n is None else n / num_steps}


def plot(payload: dict, path) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  grid, alpha = payload['setting']['steps'], payload['setting']['preconditioner']['alpha']
  results = payload['results']
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  labels = {'vanilla': 'vanilla PC', 'pds_official': f'PDS official (α={alpha:g})',
            'pds_marginal_preserving': f'PDS marginal-preserving (α={alpha:g})'}
  for ax, metric in zip(axes, METRICS):
    curves = [_curve(results, name, alpha, metric, grid) for name in labels]
    for values, label in zip(curves, labels.values()):
      ax.plot(grid, values, 'o-', label=label)
    top = 2 * max(max(v) for v in curves)  # runs far above every curve are drawn at the top, labelled
    extra = [r for r in results if r['method'] == 'pds_official' and r['alpha'] != alpha]
    if extra:
      ax.plot([r['num_steps'] for r in extra], [min(r[metric], top) for r in extra], 'k^', ms=8,
              label=f'PDS official (α={extra[0]["alpha"]:g})')
      for r in extra:
        if r[metric] > top:
          ax.annotate(f'{r[metric]:.3g} (off scale)', (r['num_steps'], top), xytext=(6, -4),
                      textcoords='offset points', fontsize=8)
    floor = payload['noise_floor'][metric]['mean']
    ax.axhline(floor, ls='--', c='gray', label=f'noise floor ({payload["setting"]["num_samples"]} exact draws)')
    ax.axhline(payload['steps_to_reach_vanilla_reference'][metric]['target'], ls=':', c='gray', lw=1,
               label=f'{TOLERANCE} x vanilla N={grid[-1]}')
    ax.set(xscale='log', yscale='log', xlabel='number of steps N', ylabel=metric.replace('_', ' '))
    ax.set_ylim(top=1.5 * top)
    ax.grid(True, which='both', alpha=0.3)
  axes[0].legend(fontsize=8)
  h, w, c = payload['setting']['shape']
  fig.suptitle(f'Gaussian reference {h}x{w}x{c}, VE σ_max={payload["setting"]["sde"]["sigma_max"]}, '
               f'{payload["setting"]["num_samples"]} samples')
  common.save_figure(fig, path)


def report(payload: dict) -> str:
  grid, alpha = payload['setting']['steps'], payload['setting']['preconditioner']['alpha']
  results = payload['results']
  names = list(METHODS)
  header = ['N'] + [f'{n} {m}' for n in names for m in ('LVE', 'FD')]
  rows = [[n] + [v for name in names for v in (_curve(results, name, alpha, 'log_variance_error', [n])[0],
                                              _curve(results, name, alpha, 'frechet_distance', [n])[0])]
          for n in reversed(grid)]
  floor = payload['noise_floor']
  rows.append(['exact draws (floor)'] + [floor['log_variance_error']['mean'], floor['frechet_distance']['mean']]
              * len(names))
  lines = [common.markdown_table(header, rows), '']
  extra = [r for r in results if r['method'] == 'pds_official' and r['alpha'] != alpha]
  if extra:
    lines += [common.markdown_table(['N', 'method', 'alpha', 'LVE', 'FD'],
                                    [[r['num_steps'], r['method'], r['alpha'], r['log_variance_error'],
                                      r['frechet_distance']] for r in extra]), '']
  summary = payload['steps_to_reach_vanilla_reference']
  reach_rows = []
  for metric in METRICS:
    for name in names:
      s = summary[metric][name]
      n_star = None if s['interpolated_steps'] is None else (
          ('<= ' if s['at_most_grid_minimum'] else '') + f'{s["interpolated_steps"]:.0f}')
      reach_rows.append([metric, summary[metric]['target'], name, s['grid_steps'], n_star])
  lines += [common.markdown_table(['metric', 'target', 'method', 'grid N', 'interpolated N'], reach_rows), '']
  bound = lambda e, v, fmt: None if v is None else ('<= ' if e['vanilla_steps_at_most'] else '') + format(v, fmt)
  eq_rows = [[metric, e['method'], e['alpha'], e['num_steps'], e['value'], bound(e, e['vanilla_steps'], '.0f'),
              bound(e, e['speed_up'], '.2f')]
             for metric in METRICS for e in summary[metric]['equivalent_vanilla_steps']]
  lines.append(common.markdown_table(['metric', 'method', 'alpha', 'N', 'value', 'vanilla N for same value',
                                      'speed-up'], eq_rows))
  return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> dict:
  args = parse_args(argv)
  common.use_compilation_cache()
  paths = common.output_paths('quality_vs_steps', args.out_dir, args.quick)
  if args.replot:
    payload = json.loads(paths['json'].read_text())
    payload['steps_to_reach_vanilla_reference'] = summarize(
        payload['results'], payload['setting']['steps'], payload['setting']['preconditioner']['alpha'])
    common.write_json(paths['json'], payload)
  else:
    payload = run(args, paths)
  return common.finish(paths, payload, plot, report, write=False)


if __name__ == '__main__':
  main()
