"""Per-step cost of PDS vs vanilla PC sampling with a score function of realistic cost.

The score is a small U-Net-shaped conv net (`common.ConvScoreNet`, random weights bound in a
`jax.tree_util.Partial`, so they are jit arguments) at 64x64x3, batch 8. Each method samples
N = 50 steps after a warm-up call (compilation); repetitions alternate the methods so that the
load of the shared machine hits them alike, and each PDS time is divided by the vanilla time of
the same repetition. The cost of one score evaluation and of the preconditioner operators
(M Mᵀ g and M ξ, two of each per PC step) is timed too: `ratio_from_operators` = 1 + 2 x their
cost / vanilla's step, a low-noise estimate of the overhead when it is below the timing noise.

  python -m benchmarks.overhead            # full setting
  python -m benchmarks.overhead --quick    # smoke setting (< 1 min)
"""
from __future__ import annotations

import argparse
from typing import Dict, Optional, Sequence

import jax
import jax.numpy as jnp

from benchmarks import common
from pds_jax import gaussian, preconditioning


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--quick', action='store_true', help='tiny smoke setting (16x16, net (8, 16), N=5, 2 repetitions)')
  p.add_argument('--size', type=int, default=64)
  p.add_argument('--batch_size', type=int, default=8)
  p.add_argument('--num_steps', type=int, default=50)
  p.add_argument('--repeats', type=int, default=11)
  p.add_argument('--features', type=str, default='32,64,128,256', help='channels per level of the net')
  p.add_argument('--num_convs', type=int, default=2)
  p.add_argument('--alpha', type=float, default=5.)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--out_dir', type=str, default=None)
  args = p.parse_args(argv)
  if args.quick:
    args.size, args.features, args.num_steps, args.repeats = 16, '8,16', 5, 2
  return args


def _op_ms(fn, x, repeats: int) -> float:
  """Median ms of a jitted fn(x) after one warm-up call."""
  fn = jax.jit(fn)
  common.seconds(fn, x)
  return 1e3 * common.median([common.seconds(fn, x) for _ in range(repeats)])


def run(args: argparse.Namespace) -> dict:
  shape = (args.batch_size, args.size, args.size, 3)
  model = common.ConvScoreNet(features=tuple(int(f) for f in args.features.split(',')), num_convs=args.num_convs)
  sampler = common.ve_sampler(common.SIGMA_MAX_64, shape, args.num_steps)
  score_fn, num_params = common.conv_score_fn(model, sampler.sde, shape, args.seed)
  freq_stat, space_stat = common.reference_statistics(gaussian.GaussianReference.power_law(shape[1:]))
  methods = {'vanilla': None,
             'pds_freq': preconditioning.from_statistics(freq_stat, None, args.alpha),
             'pds_freq_space': preconditioning.from_statistics(freq_stat, space_stat, args.alpha)}
  rng = jax.random.PRNGKey(args.seed)
  for pre in methods.values():  # warm-up: compile every method once
    sampler(rng, score_fn, pre)
  times: Dict[str, list] = {name: [] for name in methods}
  names = list(methods)
  for rep in range(args.repeats):
    key = jax.random.fold_in(rng, rep)
    for name in names[rep % len(names):] + names[:rep % len(names)]:  # rotate the order every repetition
      times[name].append(common.seconds(lambda: sampler(key, score_fn, methods[name])[0]))
    print(f'repetition {rep}: ' + ', '.join(f'{k} {1e3 * v[-1] / args.num_steps:.1f} ms/step'
                                            for k, v in times.items()), flush=True)
  x = jax.random.normal(rng, shape)
  t = jnp.full((args.batch_size,), 0.5)
  op_repeats = 2 * args.repeats + 1
  ops = {'score_eval_ms': _op_ms(lambda x: score_fn(x, t), x, op_repeats)}
  for name, pre in methods.items():
    if pre is not None:
      ops[f'{name}_mmt_plus_noise_ms'] = _op_ms(lambda g, pre=pre: (pre.apply_mmt(g), pre.apply(g)), x, op_repeats)
  per_step = {name: {'ms_per_step_median': 1e3 * common.median(v) / args.num_steps,
                     'ms_per_step_all': [1e3 * s / args.num_steps for s in v]} for name, v in times.items()}
  for name in methods:
    if name != 'vanilla':
      ratios = [a / b for a, b in zip(times[name], times['vanilla'])]
      per_step[name]['ratio_to_vanilla_median'] = common.median(ratios)
      per_step[name]['ratio_to_vanilla_all'] = ratios
      # Two (M Mᵀ g, M ξ) pairs per PC step (corrector + predictor) on top of vanilla's step.
      extra_ms = 2 * ops[f'{name}_mmt_plus_noise_ms']
      per_step[name]['ratio_from_operators'] = 1 + extra_ms / per_step['vanilla']['ms_per_step_median']
  return {
      'benchmark': 'overhead',
      'setting': {'shape': list(shape), 'num_steps': args.num_steps, 'repeats': args.repeats,
                  'net': {'class': 'benchmarks.common.ConvScoreNet', 'features': list(model.features),
                          'num_convs': model.num_convs, 'num_params': num_params, 'weights': 'random'},
                  'sampler': f'reverse_diffusion + langevin, snr {common.SNR}, '
                             f'VESDE({common.SIGMA_MIN}, {common.SIGMA_MAX_64}, N), eps 1e-5 * 2000 / N',
                  'masks': 'official statistics of 200 clipped exact draws of the Gaussian reference, '
                           f'alpha {args.alpha:g}',
                  'score_evals_per_step': 2, 'quick': args.quick,
                  'timing': 'wall time of sampler(rng, score_fn, M) after a warm-up call, methods alternated '
                            '(order rotated) per repetition; ratio = median over repetitions of PDS / vanilla '
                            'of the same repetition; operators: median of jitted calls on the same batch'},
      'per_step': per_step, 'operators': ops, 'environment': common.environment()}


def plot(payload: dict, path) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  per_step = payload['per_step']
  names = list(per_step)
  fig, ax = plt.subplots(figsize=(6, 4))
  for i, name in enumerate(names):
    ax.scatter([i] * len(per_step[name]['ms_per_step_all']), per_step[name]['ms_per_step_all'], c='gray', s=12)
    ax.bar(i, per_step[name]['ms_per_step_median'], color=f'C{i}', alpha=0.7)
    ratio = per_step[name].get('ratio_to_vanilla_median')
    if ratio is not None:
      ax.annotate(f'x{ratio:.3f}', (i, per_step[name]['ms_per_step_median']), ha='center', va='bottom')
  ax.set_xticks(range(len(names)), names)
  ax.set_ylabel('ms per PC step (median, dots: repetitions)')
  s = payload['setting']
  ax.set_title(f'{s["net"]["num_params"] / 1e6:.2f}M-param conv score net, batch {s["shape"][0]}, '
               f'{s["shape"][1]}x{s["shape"][2]}, N={s["num_steps"]}', fontsize=9)
  common.save_figure(fig, path)


def report(payload: dict) -> str:
  rows = [[name, v['ms_per_step_median'], v.get('ratio_to_vanilla_median', 1.), v.get('ratio_from_operators', 1.)]
          for name, v in payload['per_step'].items()]
  ops = payload['operators']
  op_rows = [[k, v] for k, v in ops.items()]
  header = ['method', 'ms/step (median)', 'ratio to vanilla (median of paired)', 'ratio from operator costs']
  return '\n'.join([common.markdown_table(header, rows), '',
                    common.markdown_table(['operator (batch, jitted)', 'ms (median)'], op_rows)])


def main(argv: Optional[Sequence[str]] = None) -> dict:
  args = parse_args(argv)
  common.use_compilation_cache()
  paths = common.output_paths('overhead', args.out_dir, args.quick)
  payload = run(args)
  return common.finish(paths, payload, plot, report)


if __name__ == '__main__':
  main()
