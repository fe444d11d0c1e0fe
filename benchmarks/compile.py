"""Compile time and peak memory of the sampler for N = 50 vs N = 2000 steps.

The N steps are one `lax.scan`, so the compiled program, its compile time and its memory should
not grow with N. Each (method, N, repetition) runs in a fresh subprocess with the persistent
compilation cache disabled; it lowers and compiles `PCSampler.lower_scan` (the jitted scan) for the conv
score net of `benchmarks.overhead` and reports the lowering and compile wall times, the process
RSS before lowering and its peak after compiling (`getrusage`), XLA's memory analysis of the
compiled program and the size of the lowered StableHLO text.

  python -m benchmarks.compile            # full setting
  python -m benchmarks.compile --quick    # smoke setting (< 1 min)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import List, Optional, Sequence

from benchmarks import common

METHODS = ('vanilla', 'pds_freq')  # identity M; official PDS with the frequency mask (alpha 5)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--quick', action='store_true',
                 help='tiny smoke setting (16x16, net (8, 16), pds_freq only, N in 5, 50, 1 repetition)')
  p.add_argument('--steps', type=str, default='50,2000')
  p.add_argument('--methods', type=str, default=','.join(METHODS))
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--size', type=int, default=64)
  p.add_argument('--batch_size', type=int, default=8)
  p.add_argument('--features', type=str, default='32,64,128,256')
  p.add_argument('--num_convs', type=int, default=2)
  p.add_argument('--out_dir', type=str, default=None)
  p.add_argument('--worker', type=str, default=None, help='internal: "method,N" measured in this process')
  args = p.parse_args(argv)
  if args.quick:
    args.size, args.features, args.steps, args.repeats, args.methods = 16, '8,16', '5,50', 1, 'pds_freq'
  unknown = set(args.methods.split(',')) - set(METHODS)
  if unknown:
    p.error(f'--methods: unknown {sorted(unknown)}; choose from {METHODS}')
  return args


def _rss_mb() -> float:
  """Current resident set size of this process in MiB (Linux /proc)."""
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(args: argparse.Namespace) -> dict:
  """Lowers and compiles the sampler's scan once in this (fresh) process; cache disabled."""
  import jax
  from pds_jax import gaussian, preconditioning
  jax.config.update('jax_enable_compilation_cache', False)
  method, num_steps = args.worker.split(',')
  num_steps = int(num_steps)
  shape = (args.batch_size, args.size, args.size, 3)
  model = common.ConvScoreNet(features=tuple(int(f) for f in args.features.split(',')), num_convs=args.num_convs)
  sampler = common.ve_sampler(common.SIGMA_MAX_64, shape, num_steps)
  score_fn, _ = common.conv_score_fn(model, sampler.sde, shape)
  # Every worker computes the statistics, so all pay the same one-off JAX/XLA start-up before timing.
  freq_stat, _ = common.reference_statistics(gaussian.GaussianReference.power_law(shape[1:]))
  pre = preconditioning.Preconditioner()
  if method == 'pds_freq':
    pre = preconditioning.from_statistics(freq_stat, None, 5.)
  carry = jax.block_until_ready(sampler.initial_carry(jax.random.PRNGKey(0), pre))
  rss_before = _rss_mb()
  start = time.perf_counter()
  lowered = sampler.lower_scan(score_fn, pre, carry, num_steps)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  compiled_at = time.perf_counter()
  memory = compiled.memory_analysis()
  mib = lambda name: getattr(memory, name) / 2 ** 20 if memory is not None and hasattr(memory, name) else None
  return {'method': method, 'num_steps': num_steps, 'lower_s': lowered_at - start,
          'compile_s': compiled_at - lowered_at, 'rss_before_lower_mb': rss_before, 'peak_rss_mb': _peak_rss_mb(),
          'peak_rss_increase_mb': _peak_rss_mb() - rss_before, 'stablehlo_chars': len(lowered.as_text()),
          'xla_temp_mb': mib('temp_size_in_bytes'),
          'compilation_cache_enabled': bool(jax.config.jax_enable_compilation_cache)}


def _worker_command(args: argparse.Namespace, method: str, num_steps: int) -> List[str]:
  return [sys.executable, '-m', 'benchmarks.compile', '--worker', f'{method},{num_steps}', '--size', str(args.size),
          '--batch_size', str(args.batch_size), '--features', args.features, '--num_convs', str(args.num_convs)]


def run(args: argparse.Namespace) -> dict:
  env = dict(os.environ, JAX_ENABLE_COMPILATION_CACHE='false')
  env.pop('JAX_COMPILATION_CACHE_DIR', None)
  steps = [int(s) for s in args.steps.split(',')]
  methods = args.methods.split(',')
  measurements = []
  for rep in range(args.repeats):
    for num_steps in steps:
      for method in methods:
        out = subprocess.run(_worker_command(args, method, num_steps), cwd=common.REPO, env=env,
                             capture_output=True, text=True, check=False)
        if out.returncode != 0:
          raise RuntimeError(f'compile worker {method}, N={num_steps} failed:\n{out.stderr[-3000:]}')
        m = json.loads(out.stdout.strip().splitlines()[-1])
        measurements.append(dict(m, repetition=rep))
        print(f'rep {rep} {method:9s} N={num_steps:5d} lower {m["lower_s"]:.2f} s, compile {m["compile_s"]:.2f} s, '
              f'peak RSS {m["peak_rss_mb"]:.0f} MiB', flush=True)
  keys = ('lower_s', 'compile_s', 'rss_before_lower_mb', 'peak_rss_mb', 'peak_rss_increase_mb', 'stablehlo_chars',
          'xla_temp_mb')
  summary = []
  for method in methods:
    for num_steps in steps:
      ms = [m for m in measurements if m['method'] == method and m['num_steps'] == num_steps]
      summary.append({'method': method, 'num_steps': num_steps,
                      **{k: None if ms[0][k] is None else common.median([m[k] for m in ms]) for k in keys}})
  return {'benchmark': 'compile',
          'setting': {'shape': [args.batch_size, args.size, args.size, 3], 'steps': steps, 'repeats': args.repeats,
                      'net': {'class': 'benchmarks.common.ConvScoreNet', 'features': args.features,
                              'num_convs': args.num_convs},
                      'what': 'PCSampler.lower_scan(score_fn, M, carry, N) (the jitted scan of N steps) then .compile(), '
                              'one fresh subprocess per measurement, persistent compilation cache disabled',
                      'statistic': 'median over repetitions', 'quick': args.quick},
          'summary': summary, 'measurements': measurements, 'environment': common.environment()}


def plot(payload: dict, path) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  rows = payload['summary']
  labels = [f'{r["method"]}\nN={r["num_steps"]}' for r in rows]
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  x = range(len(rows))
  axes[0].bar(x, [r['lower_s'] for r in rows], label='lower')
  axes[0].bar(x, [r['compile_s'] for r in rows], bottom=[r['lower_s'] for r in rows], label='XLA compile')
  axes[0].set_ylabel('seconds (median)')
  axes[0].legend()
  axes[1].bar(x, [r['peak_rss_mb'] for r in rows], label='peak RSS')
  axes[1].bar(x, [r['rss_before_lower_mb'] for r in rows], label='RSS before lowering', alpha=0.7)
  axes[1].set_ylabel('MiB (median)')
  axes[1].legend(loc='lower right')
  for ax in axes:
    ax.set_xticks(list(x), labels, fontsize=8)
  steps = ' vs '.join(str(n) for n in payload['setting']['steps'])
  fig.suptitle(f'Compiling the sampler scan (compilation cache disabled): N = {steps}', fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def report(payload: dict) -> str:
  header = ['method', 'N', 'lower s', 'compile s', 'RSS before MiB', 'peak RSS MiB', 'peak - before MiB',
            'XLA temp MiB', 'StableHLO chars']
  rows = [[r['method'], r['num_steps'], r['lower_s'], r['compile_s'], r['rss_before_lower_mb'], r['peak_rss_mb'],
           r['peak_rss_increase_mb'], r['xla_temp_mb'], int(r['stablehlo_chars'])] for r in payload['summary']]
  return common.markdown_table(header, rows)


def main(argv: Optional[Sequence[str]] = None) -> Optional[dict]:
  args = parse_args(argv)
  if args.worker:
    print(json.dumps(measure(args)))
    return None
  paths = common.output_paths('compile', args.out_dir, args.quick)
  payload = run(args)
  return common.finish(paths, payload, plot, report)


if __name__ == '__main__':
  main()
