"""Compile time and peak memory of the sampler for N = 50 vs N = 2000 steps.

The N steps are one `lax.scan`, so the compiled program, its compile time and its memory should
not grow with N: the solver's per-step arrays (the time grid, the SDE's discrete σ's) are jit
arguments (`Solver.tables`), and the step index is a counter in the carry, so N enters the program
as the scan's trip count (and a few scalars) only. Each (net, method, N, repetition) runs in a fresh
subprocess with the persistent compilation cache disabled; it lowers and compiles
`Sampler.lower_scan` (the jitted scan of all N steps) and reports the lowering and compile wall
times, the process RSS before lowering and its peak during lowering + compiling (the kernel's
high-water mark, reset just before lowering), XLA's memory analysis of the compiled program and the
size of the lowered StableHLO text.

Nets (`--net`):
  conv     the conv score net of `benchmarks.overhead` on the 64² VE PC sampler (default);
  ncsnpp   NCSN++ of the configs of `benchmarks.model_step` (`--sizes` 32, 64, 256; reduced nf as
           there; zero weights of init_model's shapes), reverse_diffusion + langevin with the
           config's snr and sampling eps; the PDS mask is the frequency mask of random
           statistics as in model_step (alpha 5).
`--baseline REF` also measures the code of git commit REF (its files unpacked by `git archive` into a
temp folder, this file copied in), e.g. the commit before a change, interleaved with this checkout,
for a before / after table.

  python -m benchmarks.compile                          # conv net -> results/compile.json
  python -m benchmarks.compile --net ncsnpp             # NCSN++ -> results/compile_ncsnpp.json
  python -m benchmarks.compile --baseline fefe880       # with the code of fefe880 side by side
  python -m benchmarks.compile --quick                  # smoke setting (< 1 min)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import List, Optional, Sequence

from benchmarks import common

METHODS = ('vanilla', 'pds_freq')  # identity M; official PDS with the frequency mask (alpha 5)
NETS = ('conv', 'ncsnpp')
THIS, BASELINE = 'this', 'baseline'


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--quick', action='store_true',
                 help='tiny smoke setting (conv: 16x16, net (8, 16); ncsnpp: model_step\'s quick NCSN++; '
                      'pds_freq only, N in 5, 50, 1 repetition)')
  p.add_argument('--net', type=str, default='conv', choices=NETS)
  p.add_argument('--steps', type=str, default='50,2000')
  p.add_argument('--methods', type=str, default=','.join(METHODS))
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--size', type=int, default=64, help='conv net: image size')
  p.add_argument('--sizes', type=str, default='32,64', help='ncsnpp: image sizes (settings of model_step)')
  p.add_argument('--batch_size', type=int, default=8, help='conv net: batch size')
  p.add_argument('--features', type=str, default='32,64,128,256')
  p.add_argument('--num_convs', type=int, default=2)
  p.add_argument('--baseline', type=str, default=None,
                 help='a git ref whose code is measured too, interleaved with this checkout (before / after)')
  p.add_argument('--out_dir', type=str, default=None)
  p.add_argument('--replot', action='store_true', help='redraw the PNG and tables from the results JSON')
  p.add_argument('--worker', type=str, default=None, help='internal: "method,N[,size]" measured in this process')
  args = p.parse_args(argv)
  if args.quick:
    args.size, args.features, args.steps, args.repeats, args.methods = 16, '8,16', '5,50', 1, 'pds_freq'
    args.sizes = '16'
  unknown = set(args.methods.split(',')) - set(METHODS)
  if unknown:
    p.error(f'--methods: unknown {sorted(unknown)}; choose from {METHODS}')
  if args.net == 'ncsnpp' and not args.quick and not args.worker:
    from benchmarks import model_step
    bad = set(common.int_list(args.sizes)) - set(model_step.SETTINGS)
    if bad:
      p.error(f'--sizes: no model_step setting for {sorted(bad)}; choose from {sorted(model_step.SETTINGS)}')
  return args


def _rss_mb() -> float:
  """Current resident set size of this process in MiB (Linux /proc)."""
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20


def _peak_rss_mb() -> float:
  """The RSS high-water mark in MiB (since `_reset_peak_rss`, where the kernel allows the reset)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _reset_peak_rss() -> bool:
  """Resets the RSS high-water mark to the current RSS (Linux clear_refs 5); False where not allowed."""
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False


def _conv_setting(args: argparse.Namespace, num_steps: int):
  """(sampler, score_fn, frequency statistic) of the conv net on the 64² VE PC sampler."""
  from pds_jax import gaussian
  shape = (args.batch_size, args.size, args.size, 3)
  model = common.ConvScoreNet(features=tuple(int(f) for f in args.features.split(',')), num_convs=args.num_convs)
  sampler = common.ve_sampler(common.SIGMA_MAX_64, shape, num_steps)
  score_fn, _ = common.conv_score_fn(model, sampler.sde, shape)
  freq_stat, _ = common.reference_statistics(gaussian.GaussianReference.power_law(shape[1:]))
  return sampler, score_fn, freq_stat


def _ncsnpp_setting(args: argparse.Namespace, num_steps: int, size: int):
  """(sampler, score_fn, frequency statistic) as `benchmarks.model_step.time_pc_step` builds them."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from benchmarks import model_step
  from pds_jax import sampling, sde_lib
  from pds_jax.models import utils as mutils
  setting = model_step.QUICK if args.quick else model_step.SETTINGS[size]
  config, _ = model_step.get_config(setting, False, args.quick)
  sde, sampling_eps = sde_lib.get_sde(config)
  # The weights' values do not matter to the compiler: zeros of the shapes `init_model` would give
  # (eval_shape traces the init without compiling it, which would take longer than the measurement).
  model = mutils.get_model(config.model.name)(config=config)
  shapes = jax.eval_shape(lambda rng: mutils.init_model(rng, config)[1:], jax.random.PRNGKey(0))
  states, params = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  shape = (setting.batch_size, setting.size, setting.size, config.data.num_channels)
  score_fn = mutils.get_score_fn(sde, model, params, states, train=False, continuous=True)
  sampler = sampling.PCSampler(sde.with_num_scales(num_steps), shape, config.sampling.predictor,
                               config.sampling.corrector, snr=config.sampling.snr,
                               n_steps=config.sampling.n_steps_each, eps=sampling_eps)
  freq_stat = np.random.default_rng(0).uniform(0.1, 1., shape[1:]).astype(np.float32)
  return sampler, score_fn, freq_stat


def measure(args: argparse.Namespace) -> dict:
  """Lowers and compiles the sampler's scan once in this (fresh) process; cache disabled."""
  import jax
  from pds_jax import preconditioning
  jax.config.update('jax_enable_compilation_cache', False)
  fields = args.worker.split(',')
  method, num_steps = fields[0], int(fields[1])
  size = int(fields[2]) if len(fields) > 2 else args.size
  # Every worker builds the net and the statistics, so all pay the same one-off start-up before timing.
  if args.net == 'conv':
    sampler, score_fn, freq_stat = _conv_setting(args, num_steps)
  else:
    sampler, score_fn, freq_stat = _ncsnpp_setting(args, num_steps, size)
  pre = preconditioning.Preconditioner()
  if method == 'pds_freq':
    pre = preconditioning.from_statistics(freq_stat, None, 5.)
  carry = jax.block_until_ready(sampler.initial_carry(jax.random.PRNGKey(0), pre))
  peak_before = _peak_rss_mb()  # the process's peak so far (model init, start-up)
  reset = _reset_peak_rss()
  rss_before = _rss_mb()
  start = time.perf_counter()
  lowered = sampler.lower_scan(score_fn, pre, carry, num_steps)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  compiled_at = time.perf_counter()
  peak = _peak_rss_mb()
  memory = compiled.memory_analysis()
  mib = lambda name: getattr(memory, name) / 2 ** 20 if memory is not None and hasattr(memory, name) else None
  return {'net': args.net, 'size': size if args.net == 'ncsnpp' else args.size, 'method': method,
          'num_steps': num_steps, 'shape': list(sampler.shape), 'lower_s': lowered_at - start,
          'compile_s': compiled_at - lowered_at, 'rss_before_lower_mb': rss_before, 'peak_rss_mb': peak,
          'peak_rss_increase_mb': peak - rss_before, 'peak_rss_reset': reset,
          'peak_rss_before_lower_mb': peak_before, 'stablehlo_chars': len(lowered.as_text()),
          'xla_temp_mb': mib('temp_size_in_bytes'),
          'compilation_cache_enabled': bool(jax.config.jax_enable_compilation_cache)}


def _worker_command(args: argparse.Namespace, method: str, num_steps: int, size: int) -> List[str]:
  cmd = [sys.executable, '-m', 'benchmarks.compile', '--worker', f'{method},{num_steps},{size}', '--net', args.net,
         '--size', str(args.size), '--batch_size', str(args.batch_size), '--features', args.features,
         '--num_convs', str(args.num_convs)]
  return cmd + (['--quick'] if args.quick else [])


def _git(*argv: str, cwd=None) -> str:
  return subprocess.run(['git', *argv], cwd=cwd or common.REPO, capture_output=True, text=True,
                        check=True).stdout.strip()


def _baseline_tree(ref: str) -> str:
  """The files of commit `ref` (git archive, no worktree) in a temp folder, with this benchmark file copied in."""
  tree = tempfile.mkdtemp(prefix='compile_baseline_')
  archive = subprocess.run(['git', 'archive', '--format=tar', ref], cwd=common.REPO, capture_output=True, check=True)
  subprocess.run(['tar', '-x', '-C', tree], input=archive.stdout, check=True)
  shutil.copy(__file__, os.path.join(tree, 'benchmarks', 'compile.py'))
  return tree


def _describe(ref: str = 'HEAD') -> dict:
  try:
    return {'ref': ref, 'commit': _git('rev-parse', ref), 'dirty': bool(_git('status', '--porcelain'))
            if ref == 'HEAD' else False}
  except (subprocess.CalledProcessError, OSError):
    return {'ref': ref, 'commit': None, 'dirty': None}


def run(args: argparse.Namespace) -> dict:
  env = dict(os.environ, JAX_ENABLE_COMPILATION_CACHE='false')
  env.pop('JAX_COMPILATION_CACHE_DIR', None)
  steps = [int(s) for s in args.steps.split(',')]
  methods = args.methods.split(',')
  sizes = common.int_list(args.sizes) if args.net == 'ncsnpp' else [args.size]
  trees = {THIS: str(common.REPO)}
  code = {THIS: _describe()}
  load_before = list(os.getloadavg())
  start_time = time.perf_counter()
  if args.baseline:
    trees[BASELINE] = _baseline_tree(args.baseline)
    code[BASELINE] = _describe(args.baseline)
  measurements = []
  try:
    for rep in range(args.repeats):
      for size in sizes:
        for num_steps in steps:
          for method in methods:
            # Alternate which checkout goes first, so a drift in the machine's load hits both alike.
            for name in (list(trees) if rep % 2 == 0 else list(trees)[::-1]):
              out = subprocess.run(_worker_command(args, method, num_steps, size), cwd=trees[name], env=env,
                                   capture_output=True, text=True, check=False)
              if out.returncode != 0:
                raise RuntimeError(f'compile worker ({name}) {method}, N={num_steps}, size {size} failed:\n'
                                   f'{out.stderr[-3000:]}')
              m = json.loads(out.stdout.strip().splitlines()[-1])
              measurements.append(dict(m, code=name, repetition=rep, load_average_1min=os.getloadavg()[0]))
              print(f'rep {rep} {name:8s} {args.net} {size:3d}² {method:9s} N={num_steps:5d} lower {m["lower_s"]:.2f} s, '
                    f'compile {m["compile_s"]:.2f} s, peak RSS {m["peak_rss_mb"]:.0f} MiB '
                    f'(+{m["peak_rss_increase_mb"]:.0f}), StableHLO {m["stablehlo_chars"]} chars', flush=True)
  finally:
    if args.baseline:
      shutil.rmtree(trees[BASELINE], ignore_errors=True)
  keys = ('lower_s', 'compile_s', 'rss_before_lower_mb', 'peak_rss_mb', 'peak_rss_increase_mb', 'stablehlo_chars',
          'xla_temp_mb')
  summary = []
  for name in trees:
    for size in sizes:
      for method in methods:
        for num_steps in steps:
          ms = [m for m in measurements if (m['code'], m['size'], m['method'], m['num_steps']) ==
                (name, size, method, num_steps)]
          summary.append({'code': name, 'net': args.net, 'size': size, 'shape': ms[0]['shape'], 'method': method,
                          'num_steps': num_steps,
                          **{k: None if ms[0][k] is None else common.median([m[k] for m in ms]) for k in keys}})
  ratios = []
  if len(steps) > 1:  # largest N over smallest N, per repetition, then the median
    lo, hi = steps[0], steps[-1]
    for name in trees:
      for size in sizes:
        for method in methods:
          per_rep = {}
          for m in measurements:
            if (m['code'], m['size'], m['method']) == (name, size, method) and m['num_steps'] in (lo, hi):
              per_rep.setdefault(m['repetition'], {})[m['num_steps']] = m
          pairs = [(r[hi], r[lo]) for r in per_rep.values() if lo in r and hi in r]
          ratios.append({'code': name, 'net': args.net, 'size': size, 'method': method, 'steps': [lo, hi],
                         **{f'{k}_ratio': common.median([a[k] / b[k] for a, b in pairs])
                            for k in ('compile_s', 'lower_s', 'peak_rss_mb', 'peak_rss_increase_mb',
                                      'stablehlo_chars')}})
  if args.net == 'conv':
    net = {'class': 'benchmarks.common.ConvScoreNet', 'features': args.features, 'num_convs': args.num_convs,
           'shape': [args.batch_size, args.size, args.size, 3], 'sampler': 'benchmarks.common.ve_sampler'}
  else:
    net = {'class': 'NCSN++ (benchmarks.model_step settings, reduced nf)', 'sizes': sizes,
           'sampler': 'PCSampler(sde.with_num_scales(N), config predictor / corrector / snr / n_steps_each, '
                      'sampling eps of get_sde), score fn get_score_fn(continuous=True, float32)'}
  return {'benchmark': 'compile_ncsnpp' if args.net == 'ncsnpp' else 'compile',
          'setting': {'net': net, 'steps': steps, 'methods': methods, 'repeats': args.repeats,
                      'code': code,
                      'what': 'Sampler.lower_scan(score_fn, M, carry, N) (the jitted scan of N steps) then .compile(), '
                              'one fresh subprocess per measurement, persistent compilation cache disabled; peak RSS '
                              'is the high-water mark of lowering + compiling (reset before lowering)',
                      'statistic': 'median over repetitions; ratios N_max / N_min within a repetition, then the '
                                   'median', 'quick': args.quick},
          'summary': summary, 'ratios': ratios, 'measurements': measurements,
          'environment': dict(common.environment(), load_average_before=load_before),
          'total_wall_s': time.perf_counter() - start_time}


def _label(row: dict, multi_code: bool, multi_size: bool) -> str:
  parts = ([row.get('code', THIS)] if multi_code else []) + ([f'{row.get("size")}²'] if multi_size else [])
  return ' '.join(parts + [row['method']])


def plot(payload: dict, path) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  import numpy as np
  rows = payload['summary']
  steps = payload['setting']['steps']
  multi_code = len({r.get('code', THIS) for r in rows}) > 1
  multi_size = len({r.get('size') for r in rows}) > 1
  groups = []  # one group per (code, size, method), one bar per N
  for r in rows:
    label = _label(r, multi_code, multi_size)
    if label not in groups:
      groups.append(label)
  by = {(_label(r, multi_code, multi_size), r['num_steps']): r for r in rows}
  fig, axes = plt.subplots(1, 3, figsize=(min(20, max(13, 0.8 * len(groups) * 3)), 4.6))
  x = np.arange(len(groups))
  width = 0.8 / len(steps)
  for j, n in enumerate(steps):
    xs = x + (j - (len(steps) - 1) / 2) * width
    lower = [by[g, n]['lower_s'] for g in groups]
    comp = [by[g, n]['compile_s'] for g in groups]
    axes[0].bar(xs, lower, width, color=f'C{2 * j}', label=f'N={n} lower')
    axes[0].bar(xs, comp, width, bottom=lower, color=f'C{2 * j + 1}', label=f'N={n} XLA compile')
    axes[1].bar(xs, [by[g, n]['peak_rss_mb'] for g in groups], width, color=f'C{2 * j + 1}',
                label=f'N={n} peak (lower + compile)')
    axes[1].bar(xs, [by[g, n]['rss_before_lower_mb'] for g in groups], width, color='0.6', alpha=0.7,
                label='RSS before lowering' if j == 0 else None)
  axes[0].set_ylabel('seconds (median)')
  axes[1].set_ylabel('MiB (median)')
  ratios = payload.get('ratios') or []
  if ratios:
    lo, hi = ratios[0]['steps']
    rat = {_label(r, multi_code, multi_size): r for r in ratios}
    keys = [('compile_s_ratio', 'compile s'), ('peak_rss_mb_ratio', 'peak RSS'),
            ('stablehlo_chars_ratio', 'StableHLO chars')]
    w = 0.8 / len(keys)
    for j, (key, name) in enumerate(keys):
      axes[2].bar(x + (j - 1) * w, [rat[g][key] for g in groups], w, label=name)
    axes[2].axhline(1., color='k', lw=0.8)
    axes[2].axhline(1.2, color='r', ls='--', lw=0.8, label='1.2 (the bound)')
    axes[2].set_ylim(0.8, max(1.3, max(rat[g][k] for g in groups for k, _ in keys) + 0.05))
    axes[2].set_ylabel(f'N = {hi} / N = {lo} (median of per-repetition ratios)')
  for ax in axes:
    ax.set_xticks(list(x), groups, fontsize=7, rotation=30, ha='right')
    ax.legend(fontsize=7, loc='lower right')
  net = payload['setting']['net']['class'] if isinstance(payload['setting']['net'], dict) else payload['setting']['net']
  fig.suptitle(f'Compiling the sampler scan ({net}; compilation cache disabled): N = '
               f'{" vs ".join(str(n) for n in steps)}', fontsize=10)
  common.save_figure(fig, path)


def report(payload: dict) -> str:
  header = ['code', 'size', 'method', 'N', 'lower s', 'compile s', 'RSS before MiB', 'peak RSS MiB',
            'peak - before MiB', 'XLA temp MiB', 'StableHLO chars']
  rows = [[r.get('code', THIS), r.get('size'), r['method'], r['num_steps'], r['lower_s'], r['compile_s'],
           r['rss_before_lower_mb'], r['peak_rss_mb'], r['peak_rss_increase_mb'], r['xla_temp_mb'],
           int(r['stablehlo_chars'])] for r in payload['summary']]
  tables = [common.markdown_table(header, rows)]
  if payload.get('ratios'):
    lo, hi = payload['ratios'][0]['steps']
    tables += ['', f'N = {hi} / N = {lo} (median of per-repetition ratios):', common.markdown_table(
        ['code', 'size', 'method', 'compile s', 'lower s', 'peak RSS', 'peak - before', 'StableHLO chars'],
        [[r['code'], r['size'], r['method'], r['compile_s_ratio'], r['lower_s_ratio'], r['peak_rss_mb_ratio'],
          r['peak_rss_increase_mb_ratio'], r['stablehlo_chars_ratio']] for r in payload['ratios']])]
  return '\n'.join(tables)


def main(argv: Optional[Sequence[str]] = None) -> Optional[dict]:
  args = parse_args(argv)
  if args.worker:
    print(json.dumps(measure(args)))
    return None
  paths = common.output_paths('compile_ncsnpp' if args.net == 'ncsnpp' else 'compile', args.out_dir, args.quick)
  if args.replot:
    return common.finish(paths, json.loads(paths['json'].read_text()), plot, report, write=False)
  payload = run(args)
  return common.finish(paths, payload, plot, report)


if __name__ == '__main__':
  main()
