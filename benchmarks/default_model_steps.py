"""Sample quality vs steps on the shipped default model: vanilla PC, PDS, and initialization-aware.

Model: the small NCSN++ (VE) of configs/default_model.py, trained with this project's --mode train
on the bundled 32×32 natural-image patches. Samplers, all from the same per-sample seeds:
  vanilla   reverse_diffusion + langevin (snr 0.16), N = 1000 / k steps, eps = 1e-5 · k (PDS's speed_up)
  pds       the same with the shipped PDS masks (frequency and space statistic, α = --alpha)
  init_s<σ_T>      x_T ~ the closed-form spectral Gaussian init at σ_T (`run_lib.fit_init` on 4096
                   training patches; zero training), then EDM Heun on the Karras grid σ_T → 0.002 (ρ 5)
Metrics against 2000 training patches (pds_jax.evaluation): multi-scale SWD (×10³, average of the
levels), Fréchet distance and KID on the fixed statistics features; the noise floor is the same
metrics of as many other training patches (disjoint from the reference). The speed-up at equal
quality is read off per metric (RULE: the first NFE at which a method gets within 1.05 × of
vanilla's best value over its grid), counting score evaluations (NFE).

  python -m benchmarks.default_model_steps            # full setting
  python -m benchmarks.default_model_steps --quick    # smoke setting (< 1 min)
"""
from __future__ import annotations

import argparse
import os
import tempfile
from typing import Dict, Optional, Sequence

import ml_collections
import numpy as np

import run_lib
from benchmarks import common
from configs.default_model import get_config
from pds_jax import evaluation, references, sampling, sampling_run
from pds_jax.preconditioning import Preconditioner

METRICS = ('swd_avg', 'fd_features', 'kid')
TOLERANCE = 1.05
EQUIVALENT_RULE = ('vanilla_nfe = the NFE at which vanilla first reaches the value of a point (by the same '
                   'interpolation); the speed-up of the point is vanilla_nfe / its NFE (None: vanilla never gets '
                   'that good in the grid).')
RULE = ('target = 1.05 x the best (smallest) value of the metric over the vanilla grid; nfe_to_reach = the first '
        'grid NFE of a method whose value is <= target, interpolated on the straight line in (log NFE, log '
        'metric) from the previous grid point; speed_up = vanilla nfe_to_reach / the method\'s.')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--quick', action='store_true', help='smoke setting (16 samples, 5 PC steps, 3 Heun nodes)')
  p.add_argument('--num_samples', type=int, default=200)
  p.add_argument('--batch_size', type=int, default=100)
  p.add_argument('--steps', type=str, default='10,20,50,100,200,500,1000', help='PC steps N (vanilla and pds)')
  p.add_argument('--init_nodes', type=str, default='4,6,10,20', help='Karras nodes of the init-aware runs')
  p.add_argument('--sigma_t', type=str, default='1,3.5', help='σ_T of the init-aware runs (spectral init refitted)')
  p.add_argument('--alpha', type=float, default=5.)
  p.add_argument('--num_reference', type=int, default=2000)
  p.add_argument('--out_dir', type=str, default=None, help='default benchmarks/results')
  p.add_argument('--replot', action='store_true', help='no sampling: re-summarise and re-plot the results JSON')
  args = p.parse_args(argv)
  if args.quick:
    args.num_samples, args.batch_size, args.steps, args.init_nodes, args.num_reference = 16, 16, '5', '3', 64
    args.sigma_t = '3.5'
  return args


def _config(args, method: str, n: int, init_dirs: Dict[str, str]) -> ml_collections.ConfigDict:
  config = get_config()
  config.eval.batch_size = args.batch_size
  config.sampling.alpha = args.alpha
  config.sampling.num_chunks = 1
  if method.startswith('init'):
    config.sampling.method = 'init_aware'
    config.sampling.init_nodes = n
    config.sampling.init_path = init_dirs[method.split('_s')[-1]]
  else:
    config.sampling.speed_up = config.model.num_scales / n
  return config


def _metrics(config, samples: np.ndarray, reference) -> Dict[str, float]:
  config = ml_collections.ConfigDict(config.to_dict())
  config.eval.kid_subset_size = min(len(samples), 1000)
  m = evaluation.evaluate_samples(samples, reference, config)
  return {'swd_avg': m['swd']['avg'], 'fd_features': m['fd_features'], 'kid': m['kid']['mean']}


def run(args) -> dict:
  base = get_config()
  base.eval.batch_size = args.batch_size
  reference_images, held_out = references.reference_images(base, args.num_reference, args.num_samples)
  metric_config = ml_collections.ConfigDict(base.to_dict())
  metric_config.eval.kid_subset_size = min(args.num_samples, 1000)
  reference = evaluation.image_features(reference_images, metric_config, 'reference')
  floor = _metrics(base, held_out, reference)
  print('noise floor (training patches not in the reference):', floor)
  families = {'vanilla': common.int_list(args.steps), 'pds': common.int_list(args.steps)}
  with tempfile.TemporaryDirectory() as init_root:
    init_dirs = {}
    for sigma_t in common.float_list(args.sigma_t):  # the closed-form spectral init of the patches at each σ_T
      config = get_config()
      config.init_aware.sigma_t = sigma_t
      fitted = run_lib.fit_init(config, os.path.join(init_root, f'init_{sigma_t:g}'))  # writes <workdir>/init
      init_dirs[f'{sigma_t:g}'] = os.path.dirname(fitted['path'])
      families[f'init_s{sigma_t:g}'] = common.int_list(args.init_nodes)
    results = _run_families(args, families, init_dirs, reference)
  return {'floor': floor, 'results': results}


def _run_families(args, families: Dict[str, list], init_dirs: Dict[str, str], reference) -> dict:
  results = {}
  for method, grid in families.items():
    for n in grid:
      config = _config(args, method, n, init_dirs)
      sampler_run = sampling_run.SamplingRun.build(config, None)
      precond = sampling_run.load_preconditioner(config) if 'pds' in method else Preconditioner()
      sampler = sampler_run.sampler(precond)
      batches, nfe, wall = [], 0, 0.
      for start in range(0, args.num_samples, args.batch_size):
        keys = sampling.sample_keys(config.seed, start, args.batch_size)
        samples, nfe, seconds = sampling_run.draw(sampler, keys, sampler_run.score_fn)
        batches.append(samples)
        wall += seconds
      samples = np.clip(np.concatenate(batches)[:args.num_samples], 0., 1.)
      entry = {'n': n, 'nfe': int(nfe), 'wall_seconds_incl_compile': wall, 'metrics': _metrics(config, samples, reference),
               'settings': sampler_run.settings(sampler)}
      results.setdefault(method, []).append(entry)
      print(f'{method:9s} n={n:5d} nfe={int(nfe):5d} wall={wall:7.1f}s ' +
            ' '.join(f'{k}={v:.4g}' for k, v in entry['metrics'].items()), flush=True)
  return results


def summarise(payload: dict) -> dict:
  """Per metric: the NFE each method needs to reach 1.05 × vanilla's best value (see RULE)."""
  results = payload['results']
  summary = {'rule': RULE}
  for metric in METRICS:
    vanilla = results['vanilla']
    summary[metric] = common.reach_summary(results, 'vanilla', metric, TOLERANCE)
    for method, entries in results.items():
      # EQUIVALENT_RULE: the NFE vanilla needs for each of this method's points
      summary[metric][method]['vanilla_equivalent'] = [
          {'nfe': e['nfe'], 'value': e['metrics'][metric],
           'vanilla_nfe': common.first_reach([v['nfe'] for v in vanilla], [v['metrics'][metric] for v in vanilla],
                                      max(e['metrics'][metric], 1e-12))} for e in entries]
  summary['equivalent_rule'] = EQUIVALENT_RULE
  return summary


def plot(payload: dict, path) -> None:
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(12, 3.6), dpi=110)
  FigureCanvasAgg(fig)
  for i, metric in enumerate(METRICS):
    ax = fig.add_subplot(1, len(METRICS), i + 1)
    for method, entries in payload['results'].items():
      ax.plot([e['nfe'] for e in entries], [max(e['metrics'][metric], 1e-3) for e in entries], marker='o', label=method)
    ax.axhline(payload['floor'][metric], color='grey', ls='--', label='data (noise floor)')
    ax.set_xscale('log')
    ax.set_yscale('log')  # KID is clipped at 1e-3 (its unbiased estimate can be slightly negative)
    ax.set_xlabel('score evaluations (NFE)')
    ax.set_title(metric)
    ax.grid(True, alpha=0.3)
  fig.axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(str(path))


def report(payload: dict) -> str:
  rows = []
  for method, entries in payload['results'].items():
    for e in entries:
      rows.append([method, e['n'], e['nfe'], *(e['metrics'][m] for m in METRICS), e['wall_seconds_incl_compile']])
  rows.append(['data (noise floor)', '-', '-', *(payload['floor'][m] for m in METRICS), '-'])
  lines = [common.markdown_table(['method', 'N / nodes', 'NFE', *METRICS, 'wall s'], rows), '']
  reach = []
  for metric in METRICS:
    s = payload['summary'][metric]
    for method in payload['results']:
      r = s[method]
      nfe = None if r['nfe_to_reach'] is None else (('<= ' if r['at_most_grid_minimum'] else '') +
                                                    f'{r["nfe_to_reach"]:.0f}')
      speed = None if r['speed_up'] is None else f'{r["speed_up"]:.1f}x'
      reach.append([metric, s['target'], method, nfe or 'not reached', speed or '-'])
  lines.append(common.markdown_table(['metric', 'target (1.05 x vanilla best)', 'method', 'NFE to reach',
                                      'speed-up vs vanilla'], reach))
  lines.append('')
  equivalent = []
  for method in payload['results']:
    if method == 'vanilla':
      continue
    points = zip(*(payload['summary'][m][method]['vanilla_equivalent'] for m in METRICS))
    for per_metric in points:
      cells = []
      for p in per_metric:
        cells.append('-' if p['vanilla_nfe'] is None else f'{p["vanilla_nfe"]:.0f} ({p["vanilla_nfe"] / p["nfe"]:.1f}x)')
      equivalent.append([method, per_metric[0]['nfe'], *cells])
  lines.append(common.markdown_table(['method', 'NFE', *(f'vanilla NFE for the same {m} (speed-up)' for m in METRICS)],
                                     equivalent))
  return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> dict:
  return common.main('default_model_steps', parse_args(argv), run, summarise, plot, report)


if __name__ == '__main__':
  main()
