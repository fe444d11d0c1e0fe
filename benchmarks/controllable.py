"""Inpainting and colorization quality vs steps: vanilla PC vs PDS, and score_sde's known-region start vs #39's.

Samplers (`pds_jax.controllable_generation`, all from the same per-sample keys): reverse_diffusion +
langevin (snr 0.16), N = num_scales / k steps and eps · k (PDS's speed_up k); 'pds' adds the PDS
preconditioner with the α(N) default (`sampling.pds_alpha`); '#39' starts the known region at
its time-T marginal (known_init = 'marginal') instead of the clean observation (score_sde).

Exact Gaussian (configs/gaussian/natural_32: VE σ 0.01 → 25, 2000 scales, 32×32×3): metric = the
exact conditional error ratio E‖x_U - μ_c‖² / tr Σ_c over the unknown coordinates (1 for exact
conditional draws; docs/method.md §7), with its standard error over the images; 'ignore' is the ratio of
exact draws that ignore the observation. PDS uses the frequency statistic of 200 exact draws.
  inpaint_random50   each pixel known with probability ½ (the same mask for every image)
  inpaint_center     the central 16×16 square missing
  colorize           channel-correlated colours (`ColourGaussianReference.correlated`; on the
                     plain reference the colour channels are independent of the gray one)
Shipped model (configs/default_model.py, the small NCSN++ on 32×32 natural patches, with its
shipped frequency and space statistics for PDS), on eval patches (the 'chelsea' photo, never
trained on): inpainting of the central 16×16 square, metric = SWD ×10³ of the inpainted centres
against the originals' centres; colorization, metric = SWD ×10³ (average of the levels) and
fd_features of the colorized images against the originals. The floor is the same metric between
the originals and as many other eval patches.

  python -m benchmarks.controllable            # full setting
  python -m benchmarks.controllable --quick    # smoke setting (< 2 min)
"""
from __future__ import annotations

import argparse
import time
from typing import Dict, Optional, Sequence

import jax
import ml_collections
import numpy as np

from benchmarks import common
from configs.default_model import get_config as model_config
from configs.gaussian.natural_32 import get_config as gaussian_config
from pds_jax import controllable_generation as cg
from pds_jax import (datasets, evaluation, gaussian, inpaint_masks, preconditioning, references, sampling, sampling_run,
                     sde_lib)
from pds_jax.metrics import swd
from pds_jax.preconditioning import Preconditioner

GAUSSIAN_TASKS = ('inpaint_random50', 'inpaint_center', 'colorize')
MODEL_TASKS = ('inpaint_center', 'colorize')
FAMILIES = {'vanilla': (False, 'data'), 'pds': (True, 'data'), 'vanilla #39': (False, 'marginal'),
            'pds #39': (True, 'marginal')}
MODEL_FAMILIES = {'inpaint_center': ('vanilla', 'pds', 'pds #39'), 'colorize': ('vanilla', 'pds')}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--quick', action='store_true', help='smoke setting (16×16 Gaussian, 16 images, 5 steps)')
  p.add_argument('--gaussian_images', type=int, default=128)
  p.add_argument('--gaussian_steps', type=str, default='10,20,50,100,200,500')
  p.add_argument('--model_images', type=int, default=128)
  p.add_argument('--model_steps', type=str, default='10,20,50,100,200')
  p.add_argument('--image_size', type=int, default=32, help='Gaussian image size')
  p.add_argument('--families', type=str, default=','.join(FAMILIES), help='Gaussian sampler families')
  p.add_argument('--out_dir', type=str, default=None, help='default benchmarks/results')
  p.add_argument('--replot', action='store_true', help='no sampling: re-summarise and re-plot the results JSON')
  args = p.parse_args(argv)
  if args.quick:
    args.gaussian_images, args.gaussian_steps, args.image_size, args.families = 16, '5', 16, 'vanilla,pds'
    args.model_steps = '5'
    args.model_images = 4
  return args


# ----------------------------------------------------------------------------- exact Gaussian


def _gaussian_task(task: str, size: int, num_images: int, seed: int):
  """(score reference, images, mask or None, the exact conditional) of a Gaussian task."""
  config = gaussian_config()
  config.data.image_size = size
  plain = references.gaussian_reference(config)
  if task == 'colorize':
    reference = gaussian.ColourGaussianReference.correlated(plain)
    x = np.asarray(reference.sample(jax.random.PRNGKey(seed), num_images))
    return reference, x, None, reference.condition_on_channels(x, cg.COLOR_MATRIX, [0])
  mask = inpaint_masks.builtin_mask('random_50' if task == 'inpaint_random50' else 'center_square', plain.shape, seed)
  x = np.asarray(plain.sample(jax.random.PRNGKey(seed), num_images))
  return plain, x, mask, plain.condition_on_pixels(x, mask)


def _conditional(task: str, sde, steps: int, pds: bool, known_init: str, preconditioner: Preconditioner):
  make = cg.get_pc_colorizer if task == 'colorize' else cg.get_pc_inpainter
  return make(sde, 'reverse_diffusion', 'langevin', lambda x: x, common.SNR, eps=1e-5, speed_up=sde.N / steps,
              preconditioner=preconditioner if pds else None, known_init=known_init)


def run_gaussian(args) -> dict:
  results, config = {}, gaussian_config()
  sde = sde_lib.VESDE(config.model.sigma_min, config.model.sigma_max, config.model.num_scales)
  for task in GAUSSIAN_TASKS:
    reference, x, mask, conditional = _gaussian_task(task, args.image_size, args.gaussian_images, seed=1)
    draws = np.clip(np.asarray(reference.sample(jax.random.PRNGKey(2), 200)), 0., 1.)
    freq, _ = preconditioning.compute_statistics(draws)
    keys = sampling.sample_keys(0, 0, len(x))
    data = cg.to_grayscale(x) if task == 'colorize' else x
    entry = {'ignore_ratio': conditional.ignore_ratio(), 'trace': conditional.trace, 'families': {}}
    for family in args.families.split(','):
      pds, known_init = FAMILIES[family]
      rows = []
      for steps in common.int_list(args.gaussian_steps):
        precond = preconditioning.from_statistics(freq, None, sampling.pds_alpha(steps), shape=reference.shape)
        fn = _conditional(task, sde, steps, pds, known_init, precond)
        start = time.perf_counter()
        out, nfe = fn(keys, reference.score_fn(sde), data) if mask is None else fn(keys, reference.score_fn(sde), data, mask)
        out = np.asarray(jax.block_until_ready(out))
        errors = conditional.squared_errors(out) / conditional.trace
        rows.append({'steps': steps, 'nfe': int(nfe), 'ratio': float(errors.mean()),
                     'ratio_sem': float(errors.std() / np.sqrt(len(errors))),
                     'wall_seconds_incl_compile': time.perf_counter() - start})
        print(f'gaussian {task:17s} {family:12s} N={steps:4d} ratio={rows[-1]["ratio"]:.4f} '
              f'± {rows[-1]["ratio_sem"]:.4f}', flush=True)
      entry['families'][family] = rows
    results[task] = entry
  return results


# ----------------------------------------------------------------------------- shipped model


def _centre(images: np.ndarray) -> np.ndarray:
  h = images.shape[1]
  return images[:, h // 4:h // 4 + h // 2, h // 4:h // 4 + h // 2]


def _model_metric(task: str, out: np.ndarray, originals: np.ndarray, metric_config) -> Dict[str, float]:
  if task == 'inpaint_center':
    return {'swd_centre': swd.swd(_centre(out), _centre(originals))['avg']}
  m = evaluation.evaluate_samples(np.clip(out, 0., 1.), originals, metric_config)
  return {'swd_avg': m['swd']['avg'], 'fd_features': m['fd_features']}


def run_model(args) -> dict:
  config = model_config()
  n = args.model_images
  _, eval_source = datasets.get_sources(config)
  if 2 * n > len(eval_source):
    raise ValueError(f'--model_images = {n}: the eval split has {len(eval_source)} patches, 2 × n are needed.')
  order = np.random.default_rng(config.seed).permutation(len(eval_source))
  originals = datasets.to_channels(eval_source.read(np.sort(order[:n]))[0], 3)
  others = datasets.to_channels(eval_source.read(np.sort(order[n:2 * n]))[0], 3)
  metric_config = ml_collections.ConfigDict(config.to_dict())
  metric_config.eval.kid_subset_size = n
  sde, eps = sde_lib.get_sde(config)
  score_fn, _ = sampling_run.get_score_fn(config, None, sde)
  mask = inpaint_masks.builtin_mask('center_square', references.image_shape(config))
  keys = sampling.sample_keys(config.seed, 0, n)
  results = {}
  for task in MODEL_TASKS:
    entry = {'floor': _model_metric(task, others, originals, metric_config), 'families': {}}
    print(f'model {task}: floor {entry["floor"]}', flush=True)
    for family in [f for f in MODEL_FAMILIES[task] if f in args.families.split(',') or not args.quick]:
      pds, known_init = FAMILIES[family]
      rows = []
      for steps in common.int_list(args.model_steps):
        cfg = model_config()
        cfg.sampling.speed_up = cfg.model.num_scales / steps
        precond = sampling_run.load_preconditioner(cfg) if pds else None
        make = cg.get_pc_colorizer if task == 'colorize' else cg.get_pc_inpainter
        fn = make(sde, 'reverse_diffusion', 'langevin', lambda x: x, cfg.sampling.snr, eps=eps,
                  speed_up=cfg.sampling.speed_up, preconditioner=precond, known_init=known_init)
        start = time.perf_counter()
        outs = []
        for b in range(0, n, 64):
          k = keys[b:b + 64]
          if task == 'colorize':
            out, nfe = fn(k, score_fn, cg.to_grayscale(originals[b:b + 64]))
          else:
            out, nfe = fn(k, score_fn, originals[b:b + 64], mask)
          outs.append(np.asarray(out))
        out = np.concatenate(outs)
        rows.append({'steps': steps, 'nfe': int(nfe), 'alpha': sampling.pds_alpha(steps) if pds else None,
                     'metrics': _model_metric(task, out, originals, metric_config),
                     'unknown_mse': float(np.mean((out - originals)[np.broadcast_to(mask == 0, out.shape)] ** 2))
                     if task != 'colorize' else float(np.mean((out - originals) ** 2)),
                     'wall_seconds_incl_compile': time.perf_counter() - start})
        print(f'model {task:15s} {family:8s} N={steps:4d} ' +
              ' '.join(f'{k}={v:.4g}' for k, v in rows[-1]['metrics'].items()), flush=True)
      entry['families'][family] = rows
    results[task] = entry
  return results


def run(args) -> dict:
  return {'gaussian': run_gaussian(args), 'model': run_model(args)}


# ----------------------------------------------------------------------------- summary, plot, tables


def summarise(payload: dict) -> dict:
  """Per Gaussian task and family: the fewest steps whose ratio is within 5 % of 1 (exact), and PDS's
  and #39's ratio gains at each N."""
  summary = {}
  for task, entry in payload['gaussian'].items():
    fams = entry['families']
    within = {f: next((r['steps'] for r in rows if abs(r['ratio'] - 1) <= 0.05), None) for f, rows in fams.items()}
    summary[task] = {'first_steps_within_5_percent': within,
                     'pds_over_vanilla_excess': [
                         {'steps': v['steps'], 'vanilla_excess': v['ratio'] - 1, 'pds_excess': p['ratio'] - 1}
                         for v, p in zip(fams['vanilla'], fams['pds'])],
                     'marginal_minus_data': [
                         {'steps': d['steps'], 'vanilla': m['ratio'] - d['ratio'], 'pds': pm['ratio'] - pd['ratio'],
                          'sem': float(np.hypot(m['ratio_sem'], d['ratio_sem']))}
                         for d, m, pd, pm in zip(fams['vanilla'], fams['vanilla #39'], fams['pds'], fams['pds #39'])]
                     if 'pds #39' in fams else None}
  return summary


def plot(payload: dict, path) -> None:
  import matplotlib.ticker
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  panels = [('gaussian', t, 'ratio') for t in payload['gaussian']] + \
           [('model', t, m) for t, e in payload['model'].items() for m in e['floor']]
  fig = Figure(figsize=(3.6 * len(panels), 3.4), dpi=110)
  FigureCanvasAgg(fig)
  for i, (part, task, metric) in enumerate(panels):
    ax = fig.add_subplot(1, len(panels), i + 1)
    entry = payload[part][task]
    for family, rows in entry['families'].items():
      values = [r['ratio'] if part == 'gaussian' else r['metrics'][metric] for r in rows]
      ax.plot([r['nfe'] for r in rows], values, marker='o', label=family, ls='--' if '#39' in family else '-')
    if part == 'gaussian':
      ax.axhline(1., color='grey', ls=':', label='exact conditional')
      ax.set_ylabel('E|x_U - mu_c|^2 / tr Sigma_c')
    else:
      ax.axhline(entry['floor'][metric], color='grey', ls=':', label='other eval patches (floor)')
      ax.set_yscale('log')
    ax.set_xscale('log')
    nfes = sorted({r['nfe'] for rows in entry['families'].values() for r in rows})
    ax.set_xticks(nfes, [f'{n:g}' for n in nfes])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())  # no overlapping minor labels
    ax.set_xlabel('score evaluations (NFE)')
    ax.set_title(f'{"exact Gaussian" if part == "gaussian" else "shipped model"}: {task}\n{metric}', fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(str(path))


def report(payload: dict) -> str:
  lines = []
  for task, entry in payload['gaussian'].items():
    fams = entry['families']
    header = ['N', 'NFE'] + list(fams)
    rows = []
    for j, r in enumerate(fams['vanilla']):
      rows.append([r['steps'], r['nfe']] + [f'{fams[f][j]["ratio"]:.3f} ± {fams[f][j]["ratio_sem"]:.3f}' for f in fams])
    lines += [f'exact Gaussian, {task}: E|x_U - mu_c|^2 / tr Sigma_c (1 = exact; ignoring the observation: '
              f'{entry["ignore_ratio"]:.3f})', '', common.markdown_table(header, rows), '']
  for task, entry in payload['model'].items():
    fams, metrics = entry['families'], list(entry['floor'])
    header = ['N', 'NFE'] + [f'{f} {m}' for f in fams for m in metrics]
    rows = []
    for j, r in enumerate(next(iter(fams.values()))):
      rows.append([r['steps'], r['nfe']] + [fams[f][j]['metrics'][m] for f in fams for m in metrics])
    rows.append(['floor', '-'] + [entry['floor'][m] for f in fams for m in metrics])
    lines += [f'shipped model, {task}', '', common.markdown_table(header, rows), '']
  return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> dict:
  return common.main('controllable', parse_args(argv), run, summarise, plot, report)


if __name__ == '__main__':
  main()
