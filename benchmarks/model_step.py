"""NCSN++ forward time (float32 vs bfloat16) and the PDS preconditioner's share of one PC step.

1. Forward pass: the continuous VE score of NCSN++ (`get_score_fn(..., continuous=True, dtype=...)`,
   random weights from `init_model`), jitted, at 32², 64² (the architecture of
   `configs/ve/cifar10_ncsnpp_continuous.py`) and 256² (`configs/ve/bedroom_ncsnpp_continuous.py`).
   On a CPU the width `model.nf` is reduced (32, 32, 16); `--full` keeps the configs' nf (for a GPU).
2. One PC step (reverse_diffusion + langevin, as the configs sample): `PCSampler` with N = 10 steps per
   call (one jitted `lax.scan`), wall time of a call / N, with the identity preconditioner, a frequency
   mask, and frequency + space masks from random positive (H, W, C) statistics (alpha 5). The PDS share
   of a step is (t_pds - t_vanilla) / t_pds. The jitted operator cost M Mᵀ g + M ξ (twice per step,
   once per score evaluation) is timed too, as a check of that difference.

Every setting is compiled by a warm-up call first (its wall time is recorded as `first_call_s`; it may
have been served by the persistent compilation cache). Repetitions alternate the settings, rotating their
order, and ratios are taken within a repetition, so the load of a shared machine hits the compared
settings alike; reported values are medians over repetitions.

  python -m benchmarks.model_step            # reduced nf (CPU)
  python -m benchmarks.model_step --full     # nf as in the configs (GPU); writes model_step_full.*
  python -m benchmarks.model_step --quick    # smoke setting (< 1 min)
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import time
from typing import Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from pds_jax import preconditioning, sampling, sde_lib
from pds_jax.models import utils as mutils

DTYPES = ('float32', 'bfloat16')
METHODS = ('vanilla', 'pds_freq', 'pds_freq_space')


@dataclasses.dataclass(frozen=True)
class Setting:
  """One image size: the config module whose architecture is used and the reduced width / batch."""
  size: int
  config_module: str
  nf: int
  batch_size: int


SETTINGS = {
    32: Setting(32, 'configs.ve.cifar10_ncsnpp_continuous', 32, 2),
    64: Setting(64, 'configs.ve.cifar10_ncsnpp_continuous', 32, 2),
    256: Setting(256, 'configs.ve.bedroom_ncsnpp_continuous', 16, 1),
}
QUICK = Setting(16, 'configs.ve.cifar10_ncsnpp_continuous', 8, 1)
QUICK_MODEL = {'num_res_blocks': 1, 'ch_mult': (1, 2)}  # keeps the smoke setting's compile time short


def _ints(text: str) -> List[int]:
  return [int(v) for v in text.split(',') if v]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--quick', action='store_true',
                 help='smoke setting: 16x16, nf 8, num_res_blocks 1, ch_mult (1, 2), batch 1, N 2, 1 repetition')
  p.add_argument('--full', action='store_true', help="keep the configs' model.nf (for a GPU)")
  p.add_argument('--sizes', type=str, default='32,64,256', help='image sizes of the forward-pass timing')
  p.add_argument('--pc_sizes', type=str, default='32,64,256', help='image sizes of the PC-step timing')
  p.add_argument('--repeats', type=int, default=7, help='repetitions of the forward-pass timing')
  p.add_argument('--pc_repeats', type=int, default=3, help='repetitions of the PC-step timing')
  p.add_argument('--num_steps', type=int, default=10, help='PC steps per sampler call (N)')
  p.add_argument('--pc_dtype', type=str, default='float32', choices=DTYPES, help='score dtype of the PC step')
  p.add_argument('--alpha', type=float, default=5.)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--out_dir', type=str, default=None)
  args = p.parse_args(argv)
  if args.quick and args.full:
    p.error('--quick and --full exclude each other')
  if args.quick:
    args.sizes = args.pc_sizes = str(QUICK.size)
    args.repeats, args.pc_repeats, args.num_steps = 1, 1, 2
    return args
  unknown = set(_ints(args.sizes) + _ints(args.pc_sizes)) - set(SETTINGS)
  if unknown:
    p.error(f'--sizes / --pc_sizes: no setting for {sorted(unknown)}; choose from {sorted(SETTINGS)}')
  return args


# ----------------------------------------------------------------------------- model


def get_config(setting: Setting, full: bool, quick: bool):
  """The setting's config with data.image_size = size and, unless `full`, model.nf = setting.nf.

  Returns (config, overrides): the overrides applied to the config module's `get_config()`.
  """
  config = importlib.import_module(setting.config_module).get_config()
  overrides = {'data.image_size': setting.size}
  if not full:
    overrides['model.nf'] = setting.nf
  if quick:
    overrides.update({f'model.{field}': value for field, value in QUICK_MODEL.items()})
  for path, value in overrides.items():
    group, field = path.split('.')
    config[group][field] = value
  return config, overrides


def build_model(config, seed: int):
  """(model, states, params) of `init_model`, initialised under jit (cached; eager init is slow on CPU)."""
  model = mutils.get_model(config.model.name)(config=config)
  states, params = jax.jit(lambda rng: mutils.init_model(rng, config)[1:])(jax.random.PRNGKey(seed))
  return model, states, params


# ----------------------------------------------------------------------------- timing


def _rotated(names: Sequence[str], rep: int) -> List[str]:
  k = rep % len(names)
  return list(names[k:]) + list(names[:k])


def alternate(calls: Dict[str, Callable[[int], object]], repeats: int) -> Dict[str, dict]:
  """Wall times (`all_s`) and the process's CPU times (`cpu_all_s`, all threads) of calls[name](rep): one
  warm-up call each, then `repeats` rounds in rotating order."""
  first = {name: common.seconds(fn, -1) for name, fn in calls.items()}
  times: Dict[str, List[float]] = {name: [] for name in calls}
  cpu_times: Dict[str, List[float]] = {name: [] for name in calls}
  for rep in range(repeats):
    for name in _rotated(list(calls), rep):
      cpu_start = time.process_time()
      times[name].append(common.seconds(calls[name], rep))
      cpu_times[name].append(time.process_time() - cpu_start)
  return {name: {'first_call_s': first[name], 'all_s': times[name], 'cpu_all_s': cpu_times[name]} for name in calls}


def _ratios(times: Dict[str, dict], num: str, den: str) -> List[float]:
  return [a / b for a, b in zip(times[num]['all_s'], times[den]['all_s'])]


def time_forward(sde, model, states, params, shape, repeats: int, seed: int) -> dict:
  """Jitted score_fn(x, t) in float32 and bfloat16, ms per call; ratio bfloat16 / float32."""
  forward = jax.jit(lambda score_fn, x, t: score_fn(x, t))
  x = jax.random.uniform(jax.random.PRNGKey(seed), shape)
  t = jnp.full((shape[0],), 0.5)
  score_fns = {dtype: mutils.get_score_fn(sde, model, params, states, train=False, continuous=True, dtype=dtype)
               for dtype in DTYPES}
  times = alternate({dtype: (lambda rep, fn=fn: forward(fn, x, t)) for dtype, fn in score_fns.items()}, repeats)
  result = {dtype: {'ms_median': 1e3 * common.median(v['all_s']), 'ms_all': [1e3 * s for s in v['all_s']],
                    'first_call_s': v['first_call_s']} for dtype, v in times.items()}
  ratios = _ratios(times, 'bfloat16', 'float32')
  result['bfloat16_over_float32_median'] = common.median(ratios)
  result['bfloat16_over_float32_all'] = ratios
  return result


def _operator_ms(pre: preconditioning.Preconditioner, shape, repeats: int) -> float:
  """Median ms of one jitted (M Mᵀ g, M ξ) on a batch: what M adds to one score evaluation."""
  op = jax.jit(lambda pre, g: (pre.apply_mmt(g), pre.apply(g)))
  g = jax.random.normal(jax.random.PRNGKey(0), shape)
  common.seconds(op, pre, g)
  return 1e3 * common.median([common.seconds(op, pre, g) for _ in range(repeats)])


def time_pc_step(config, sde, sampling_eps: float, model, states, params, shape, args) -> dict:
  """ms per PC step (sampler call / N) for identity, frequency and frequency + space preconditioners."""
  score_fn = mutils.get_score_fn(sde, model, params, states, train=False, continuous=True, dtype=args.pc_dtype)
  sampler = sampling.PCSampler(sde.with_num_scales(args.num_steps), shape, config.sampling.predictor,
                               config.sampling.corrector, snr=config.sampling.snr,
                               n_steps=config.sampling.n_steps_each, eps=sampling_eps)
  stats = np.random.default_rng(args.seed).uniform(0.1, 1., (2,) + tuple(shape[1:])).astype(np.float32)
  pres = {'vanilla': None,
          'pds_freq': preconditioning.from_statistics(stats[0], None, args.alpha),
          'pds_freq_space': preconditioning.from_statistics(stats[0], stats[1], args.alpha)}
  rng = jax.random.PRNGKey(args.seed)
  calls = {name: (lambda rep, pre=pre: sampler(jax.random.fold_in(rng, rep + 1), score_fn, pre)[0])
           for name, pre in pres.items()}
  times = alternate(calls, args.pc_repeats)
  result = {}
  for name in METHODS:
    per_step = [1e3 * s / args.num_steps for s in times[name]['all_s']]
    entry = {'ms_per_step_median': common.median(per_step), 'ms_per_step_all': per_step,
             'first_call_s': times[name]['first_call_s']}
    if name != 'vanilla':
      ratios = _ratios(times, name, 'vanilla')
      shares = [1. - 1. / r for r in ratios]  # (t_pds - t_vanilla) / t_pds of one repetition
      entry.update({'ratio_to_vanilla_median': common.median(ratios), 'ratio_to_vanilla_all': ratios,
                    'pds_share_median': common.median(shares), 'pds_share_all': shares,
                    'operator_ms_per_step': 2 * _operator_ms(pres[name], shape, 2 * args.pc_repeats + 1)})
    result[name] = entry
  return result


# ----------------------------------------------------------------------------- run and output


def _cpu_name() -> Optional[str]:
  try:
    with open('/proc/cpuinfo') as f:
      return next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), None)
  except OSError:
    return None


def machine_note(load_before: Sequence[float]) -> str:
  """Where the timings come from, in words (the CPU case says how many cores and whether they were busy)."""
  if jax.default_backend() != 'cpu':
    return f'{jax.default_backend()}: {jax.devices()[0].device_kind}'
  busy = load_before[0] >= 0.5 * os.cpu_count()
  return (f'CPU only: {os.cpu_count()} cores ({_cpu_name()}); '
          + ('shared with other jobs (1-min load average {:.1f} before the run), so times are noisy and '
             'only the side-by-side ratios are meant to be compared'.format(load_before[0]) if busy else
             'idle before the run'))


def run(args: argparse.Namespace) -> dict:
  load_before = list(os.getloadavg())
  start = time.perf_counter()
  sizes, pc_sizes = _ints(args.sizes), _ints(args.pc_sizes)
  results = []
  for size in sorted(set(sizes) | set(pc_sizes)):
    setting = QUICK if args.quick else SETTINGS[size]
    config, overrides = get_config(setting, args.full, args.quick)
    sde, sampling_eps = sde_lib.get_sde(config)
    model, states, params = build_model(config, args.seed)
    shape = (setting.batch_size, size, size, config.data.num_channels)
    entry = {'size': size, 'shape': list(shape), 'config_module': setting.config_module,
             'overrides': overrides, 'nf': config.model.nf, 'ch_mult': list(config.model.ch_mult),
             'num_params': sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params)),
             'config': json.loads(config.to_json_best_effort())}
    if size in sizes:
      entry['forward'] = time_forward(sde, model, states, params, shape, args.repeats, args.seed)
      print(f'{size}x{size} forward: ' + ', '.join(f'{d} {entry["forward"][d]["ms_median"]:.1f} ms' for d in DTYPES),
            flush=True)
    if size in pc_sizes:
      entry['pc_step'] = time_pc_step(config, sde, sampling_eps, model, states, params, shape, args)
      print(f'{size}x{size} PC step: ' + ', '.join(f'{m} {entry["pc_step"][m]["ms_per_step_median"]:.1f} ms'
                                                  for m in METHODS), flush=True)
    results.append(entry)
  return {
      'benchmark': 'model_step',
      'setting': {
          'quick': args.quick, 'full_width': args.full, 'repeats': args.repeats, 'pc_repeats': args.pc_repeats,
          'num_steps_per_call': args.num_steps, 'pc_dtype': args.pc_dtype, 'alpha': args.alpha,
          'weights': 'random (init_model, seed {}); timings do not depend on the weights'.format(args.seed),
          'forward': 'jax.jit(lambda score_fn, x, t: score_fn(x, t)) with score_fn = get_score_fn(sde, model, '
                     'params, states, train=False, continuous=True, dtype), x uniform in [0, 1], t = 0.5; '
                     'params cast once outside the jitted call',
          'pc_step': 'PCSampler(sde.with_num_scales(N), shape, config.sampling.predictor, config.sampling.corrector, '
                     'snr, n_steps_each, eps = sampling_eps of get_sde); wall time of sampler(rng, score_fn, M) / N '
                     '(includes the prior draw and the final finite check, once per call); masks from random '
                     'uniform(0.1, 1) (H, W, C) statistics via preconditioning.from_statistics',
          'pds_share': '(t_pds - t_vanilla) / t_pds per repetition, median over repetitions',
          'operator_ms_per_step': '2 x median ms of one jitted (M M^T g, M xi) on a batch (one per score '
                                  'evaluation; reverse_diffusion + langevin evaluate the score twice per step)',
          'timing': 'warm-up call per setting (compilation; first_call_s), then repetitions alternating the '
                    'settings in rotating order; ratios within a repetition, medians over repetitions'},
      'machine': machine_note(load_before),
      'results': results,
      'environment': {**common.environment(), 'cpu': _cpu_name(), 'load_average_before': load_before},
      'total_wall_s': time.perf_counter() - start}


def plot(payload: dict, path) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fwd = [r for r in payload['results'] if 'forward' in r]
  pcs = [r for r in payload['results'] if 'pc_step' in r]
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  ax = axes[0]
  for j, dtype in enumerate(DTYPES):
    xs = np.arange(len(fwd)) + (j - 0.5) * 0.38
    ax.bar(xs, [r['forward'][dtype]['ms_median'] for r in fwd], 0.38, label=dtype, color=f'C{j}')
  for i, r in enumerate(fwd):
    ax.annotate(f'bf16/f32 x{r["forward"]["bfloat16_over_float32_median"]:.2f}',
                (i, r['forward']['float32']['ms_median']), ha='center', va='bottom', fontsize=8)
  ax.set_yscale('log')
  ax.margins(y=0.12)
  ax.set_xticks(range(len(fwd)), [f'{r["size"]}², nf {r["nf"]}\nB {r["shape"][0]}, {r["num_params"] / 1e6:.2f}M'
                                  for r in fwd], fontsize=8)
  ax.set_ylabel('ms per forward pass (median)')
  ax.set_title('NCSN++ score forward (jitted)', fontsize=10)
  ax.legend(fontsize=8)
  ax = axes[1]
  for j, name in enumerate(METHODS):
    xs = np.arange(len(pcs)) + (j - 1) * 0.27
    values = [r['pc_step'][name]['ms_per_step_median'] for r in pcs]
    ax.bar(xs, values, 0.27, label=name, color=f'C{j + 2}')
    if name != 'vanilla':
      for x, v, r in zip(xs, values, pcs):
        ax.annotate(f'{100 * r["pc_step"][name]["pds_share_median"]:.1f}%', (x, v), ha='center', va='bottom',
                    fontsize=7)
  ax.set_yscale('log')
  ax.margins(y=0.12)
  ax.set_xticks(range(len(pcs)), [f'{r["size"]}², nf {r["nf"]}, B {r["shape"][0]}' for r in pcs], fontsize=8)
  ax.set_ylabel('ms per PC step (median); label: PDS share')
  ax.set_title(f'reverse_diffusion + langevin, N={payload["setting"]["num_steps_per_call"]} per call', fontsize=10)
  ax.legend(fontsize=8)
  common.save_figure(fig, path, note=payload['machine'])


def report(payload: dict) -> str:
  fwd_rows = [[f'{r["size"]}²', r['config_module'].rsplit('.', 1)[-1], r['nf'], r['shape'][0], r['num_params'],
               r['forward']['float32']['ms_median'], r['forward']['bfloat16']['ms_median'],
               r['forward']['bfloat16_over_float32_median']] for r in payload['results'] if 'forward' in r]
  pc_rows = []
  for r in payload['results']:
    if 'pc_step' in r:
      step = r['pc_step']
      for name in METHODS:
        s = step[name]
        pc_rows.append([f'{r["size"]}²', r['nf'], r['shape'][0], name, s['ms_per_step_median'],
                        s.get('ratio_to_vanilla_median', 1.), s.get('pds_share_median'),
                        s.get('operator_ms_per_step')])
  return '\n'.join([
      common.markdown_table(['size', 'config', 'nf', 'batch', 'params', 'float32 ms', 'bfloat16 ms',
                             'bf16 / f32'], fwd_rows), '',
      common.markdown_table(['size', 'nf', 'batch', 'preconditioner', 'ms / PC step', 't_pds / t_vanilla',
                             '(t_pds - t_van) / t_pds', 'M ops ms / step'], pc_rows), '',
      payload['machine']])


def main(argv: Optional[Sequence[str]] = None) -> dict:
  args = parse_args(argv)
  common.use_compilation_cache()
  paths = common.output_paths('model_step_full' if args.full else 'model_step', args.out_dir, args.quick)
  payload = run(args)
  print(f'measured in {payload["total_wall_s"]:.0f} s')
  return common.finish(paths, payload, plot, report)


if __name__ == '__main__':
  main()
