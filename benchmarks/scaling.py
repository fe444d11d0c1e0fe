"""Images/s vs number of devices (forced CPU devices) and the CLI's per-round bookkeeping cost.

1. Devices. For every d in --devices a fresh subprocess runs with
   XLA_FLAGS=--xla_force_host_platform_device_count=d (the device count is fixed when JAX starts)
   and samples one global batch with `sampling.PCSampler` in both parallel modes of the CLI:
   'sharding' (`PCSampler(..., mesh=parallel.batch_mesh())`: the per-device sampler under
   `jax.shard_map` in `jit`, per-sample keys `sampling.sample_keys`) and 'pmap'
   (`PCSampler(..., pmap=True)`), both as `parallel.sampler_devices(mode)` gives them to the CLI. The score is the
   exact score of the 32x32x3 power-law Gaussian reference on VESDE(0.01, 25, N); M is the official
   PDS frequency mask (alpha 5) of 200 clipped exact draws. After a warm-up call (compilation) the
   modes alternate over the repetitions. Every sample set is compared with d = 1 of the same mode.
   The compiled scan of each mode is inspected too: its all-gathers, all-reduces and FFTs per PC
   step and the batch each FFT transforms per device. (XLA's automatic SPMD partitioner does not
   partition FFTs along a sharded batch axis, jax-ml/jax#15680: plain jit with sharded keys gathered
   the global batch before every FFT, so each device transformed all of it; that is why the
   'sharding' mode runs the per-device program with shard_map, B / d per device like pmap.)
   Forced CPU devices are slices of the same host and share its cores (2 here), so this measures
   correctness and the cost of the device split, not real multi-device scaling.
2. Bookkeeping. The CLI's per-round work other than sampling (`shards.run_rounds`, the round loop
   of every mode that writes shards): keys (`sample_keys` + `place_keys`, timed in each worker at
   its device count), writing one shard (`shards.write_shard`: the uint8 + float32 arrays of one
   batch, fsynced), one whole round of `shards.run_rounds` around a round function that returns
   the batch at once (keys, run.json, shard, progress bar), and the resume scan
   `shards.finished_rounds` over a folder of --num_files shard files (`run_rounds` scans once at
   startup). Each cost is divided by the sampling time of one round (d = 1, sharding).

  JAX_COMPILATION_CACHE_DIR=.jax_cache python -m benchmarks.scaling            # full setting
  JAX_COMPILATION_CACHE_DIR=.jax_cache python -m benchmarks.scaling --quick    # smoke setting (< 1 min)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from benchmarks import common

MODES = ('sharding', 'pmap')  # pds_jax.parallel.PARALLEL_MODES (not imported: the parent sets XLA_FLAGS first)
FORCE_DEVICES = '--xla_force_host_platform_device_count'


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--quick', action='store_true', help='tiny smoke setting (d in 1, 2; N=5; batch 8; 2 repetitions)')
  p.add_argument('--devices', type=str, default='1,2,4,8', help='forced CPU device counts; must include 1')
  p.add_argument('--num_steps', type=int, default=50)
  p.add_argument('--batch_size', type=int, default=64, help='global batch of one round, split over the devices')
  p.add_argument('--size', type=int, default=32)
  p.add_argument('--sigma_max', type=float, default=25.)
  p.add_argument('--alpha', type=float, default=5.)
  p.add_argument('--repeats', type=int, default=7, help='timed sampler calls per mode after the warm-up')
  p.add_argument('--passes', type=int, default=2, help='passes over the device counts (up, then down), timings pooled')
  p.add_argument('--num_files', type=int, default=1000, help='shard files in the folder scanned for resuming')
  p.add_argument('--io_repeats', type=int, default=20, help='timed repetitions of each bookkeeping operation')
  p.add_argument('--rtol', type=float, default=1e-5,
                 help='samples agree when max |x_d - x_1| <= rtol * max |x_1| (float32 reduction order only)')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--scratch_dir', type=str, default=None, help='where shards are written (default: system temp)')
  p.add_argument('--out_dir', type=str, default=None)
  p.add_argument('--worker', type=int, default=None, help='internal: the forced device count of this process')
  p.add_argument('--samples_path', type=str, default=None, help='internal: where the worker saves its samples')
  args = p.parse_args(argv)
  if args.quick:
    args.devices, args.num_steps, args.batch_size, args.repeats, args.passes = '1,2', 5, 8, 2, 1
    args.num_files, args.io_repeats = 100, 5
  devices = [int(d) for d in args.devices.split(',')]
  if 1 not in devices:
    p.error('--devices must include 1 (the reference of the speed-up and of the sample agreement)')
  bad = [d for d in devices if d < 1 or args.batch_size % d]
  if bad:
    p.error(f'--batch_size={args.batch_size} is not divisible by the device counts {bad}')
  return args


# ----------------------------------------------------------------------------- worker: one device count


def measure(args: argparse.Namespace) -> dict:
  """Times both parallel modes in this process (its forced device count); saves the samples."""
  import jax
  from pds_jax import gaussian, parallel, preconditioning, sampling, sde_lib
  common.use_compilation_cache()
  d = jax.local_device_count()
  if d != args.worker:
    raise RuntimeError(f'expected {args.worker} forced CPU devices, JAX sees {d} ({jax.devices()}).')
  shape = (args.batch_size, args.size, args.size, 3)
  sde = sde_lib.VESDE(common.SIGMA_MIN, args.sigma_max, args.num_steps)
  reference = gaussian.GaussianReference.power_law(shape[1:])
  score_fn = reference.score_fn(sde)
  freq_stat, _ = common.reference_statistics(reference)
  pre = preconditioning.from_statistics(freq_stat, None, args.alpha)
  keys = sampling.sample_keys(args.seed, 0, args.batch_size)
  samplers = {mode: sampling.PCSampler(sde, shape, 'reverse_diffusion', 'langevin', snr=common.SNR, n_steps=1,
                                       denoise=True, eps=common.ve_eps(args.num_steps),
                                       **parallel.sampler_devices(mode))
              for mode in MODES}
  placed = {mode: parallel.place_keys(keys, mode) for mode in MODES}
  samples, warmup_s = {}, {}
  for mode in MODES:
    start = time.perf_counter()
    samples[mode] = np.asarray(samplers[mode](placed[mode], score_fn, pre)[0])
    warmup_s[mode] = time.perf_counter() - start
  device_sets = {mode: len(samplers[mode](placed[mode], score_fn, pre)[0].sharding.device_set) for mode in MODES}
  times: Dict[str, List[float]] = {mode: [] for mode in MODES}
  for rep in range(args.repeats):
    for mode in (MODES if rep % 2 == 0 else MODES[::-1]):
      times[mode].append(common.seconds(lambda: samplers[mode](placed[mode], score_fn, pre)[0]))
  np.savez(args.samples_path, **samples)
  ops = {mode: _compiled_ops(samplers[mode], placed[mode], score_fn, pre) for mode in MODES}
  # Per-round keys as run_lib.sample makes them: round r holds samples r·B … r·B + B - 1.
  place = lambda mode, r: parallel.place_keys(sampling.sample_keys(args.seed, r * args.batch_size, args.batch_size),
                                              mode)
  keys_ms = {}
  for mode in MODES:
    common.seconds(place, mode, 1)
    keys_ms[mode] = 1e3 * common.median([common.seconds(place, mode, r) for r in range(2, 2 + args.io_repeats)])
  return {'devices': d, 'device_kinds': sorted({dev.device_kind for dev in jax.devices()}),
          'platform': jax.default_backend(), 'output_device_count': device_sets, 'warmup_s': warmup_s,
          'seconds_all': times, 'keys_ms': keys_ms, 'compiled_scan_ops': ops}


def _compiled_ops(sampler, keys, score_fn, pre) -> dict:
  """Collectives and FFTs in the compiled scan (its loop body is one PC step) and the FFTs' batch per device."""
  carry = sampler.initial_carry(keys, pre)
  text = sampler.lower_scan(score_fn, pre, carry).compile().as_text()
  counts = {op: len(re.findall(rf'\b{op}\(', text)) for op in ('all-gather', 'all-reduce', 'fft')}
  fft_batch = sorted({int(dims.split(',')[0]) for dims in re.findall(r'= c64\[([0-9,]+)\]\S* fft\(', text)})
  return {**counts, 'fft_batch_per_device': fft_batch}


# ----------------------------------------------------------------------------- parent


def _worker_env(devices: int) -> Dict[str, str]:
  flags = [f for f in os.environ.get('XLA_FLAGS', '').split() if not f.startswith(FORCE_DEVICES)]
  return dict(os.environ, XLA_FLAGS=' '.join(flags + [f'{FORCE_DEVICES}={devices}']), JAX_PLATFORMS='cpu')


def _worker_command(args: argparse.Namespace, devices: int, samples_path: str) -> List[str]:
  return [sys.executable, '-m', 'benchmarks.scaling', '--worker', str(devices), '--samples_path', samples_path,
          '--num_steps', str(args.num_steps), '--batch_size', str(args.batch_size), '--size', str(args.size),
          '--sigma_max', str(args.sigma_max), '--alpha', str(args.alpha), '--repeats', str(args.repeats),
          '--io_repeats', str(args.io_repeats), '--seed', str(args.seed)]


def _run_workers(args: argparse.Namespace, scratch: str):
  """(per-device-count measurements, per-device-count samples {mode: array}).

  The device counts are run in --passes passes, ascending then descending, and the timings of
  all passes are pooled, so that a drift of the shared machine's load does not favour one count.
  """
  devices = sorted(int(x) for x in args.devices.split(','))
  measurements = {d: [] for d in devices}
  samples = {}
  for p in range(args.passes):
    for d in (devices if p % 2 == 0 else devices[::-1]):
      path = os.path.join(scratch, f'samples_d{d}.npz')
      load = os.getloadavg()[0]
      out = subprocess.run(_worker_command(args, d, path), cwd=common.REPO, env=_worker_env(d),
                           capture_output=True, text=True, check=False)
      if out.returncode != 0:
        raise RuntimeError(f'scaling worker with {d} forced devices failed:\n{out.stderr[-3000:]}')
      m = dict(json.loads(out.stdout.strip().splitlines()[-1]), load_average_1min_before=load)
      with np.load(path) as f:
        s = {mode: f[mode] for mode in MODES}
      if d in samples and any(not np.array_equal(s[mode], samples[d][mode]) for mode in MODES):
        raise RuntimeError(f'two runs with {d} devices gave different samples: sampling is not deterministic.')
      samples[d] = s
      measurements[d].append(m)
      print(f'pass {p}, d={d}: ' + ', '.join(f'{mode} {args.batch_size / common.median(m["seconds_all"][mode]):.1f} '
                                             'images/s' for mode in MODES) + f' (load {load:.1f})', flush=True)
  return {d: _pool(ms) for d, ms in measurements.items()}, samples


def _pool(passes: List[dict]) -> dict:
  """One device count's measurements over passes: timings concatenated, keys ms the median of the passes."""
  return {**passes[0], 'passes': passes,
          'seconds_all': {mode: [t for m in passes for t in m['seconds_all'][mode]] for mode in MODES},
          'keys_ms': {mode: common.median([m['keys_ms'][mode] for m in passes]) for mode in MODES}}


def _agreement(samples: Dict[int, Dict[str, np.ndarray]], rtol: float) -> dict:
  """max |x_d - x_1| per mode (same mode at d = 1) and pmap vs sharding at each d, relative to max |x_1|."""
  ref = samples[1]
  scale = float(np.abs(ref['sharding']).max())
  out = {'sample_scale_max_abs': scale, 'sample_std': float(ref['sharding'].std()), 'rtol': rtol, 'per_devices': {}}
  for d, s in samples.items():
    diffs = {mode: float(np.abs(s[mode] - ref[mode]).max()) for mode in MODES}
    diffs['pmap_vs_sharding'] = float(np.abs(s['pmap'] - s['sharding']).max())
    out['per_devices'][str(d)] = {f'{k}_max_abs_diff': v for k, v in diffs.items()}
    out['per_devices'][str(d)].update({f'{k}_relative': v / scale for k, v in diffs.items()})
  out['all_agree'] = all(v <= rtol for row in out['per_devices'].values()
                         for k, v in row.items() if k.endswith('_relative'))
  return out


def _bookkeeping(args: argparse.Namespace, samples: np.ndarray, scratch: str) -> dict:
  """ms of the CLI's shard write and resume scan, in this (parent) process."""
  from pds_jax import shards
  shard_dir = os.path.join(scratch, 'shards')
  os.makedirs(shard_dir)

  def write(r: int) -> None:  # as the CLI writes round r
    shards.write_shard(shards.shard_path(shard_dir, r, 0), samples)

  write_s = [common.seconds(write, r) for r in range(args.io_repeats + 1)][1:]
  shard_bytes = os.path.getsize(shards.shard_path(shard_dir, 0, 0))
  b = len(samples)
  finished = shards.run_rounds(os.path.join(scratch, 'rounds'), {'benchmark': 'scaling'}, (args.io_repeats + 1) * b, b,
                               lambda r: {'samples': samples}, seed=args.seed)
  round_s = finished.seconds[1:]  # the first round also compiles the key derivation
  scan_dir = os.path.join(scratch, 'scan')
  os.makedirs(scan_dir)
  for r in range(args.num_files):  # the scan reads names only; empty shards list as fast as full ones
    open(os.path.join(scan_dir, f'samples_{r}_0.npz'), 'wb').close()
  open(os.path.join(scan_dir, 'run.json'), 'wb').close()
  shards.finished_rounds(scan_dir)
  scan_s = [common.seconds(shards.finished_rounds, scan_dir) for _ in range(args.io_repeats)]
  if len(shards.finished_rounds(scan_dir)) != args.num_files:
    raise RuntimeError(f'shards.finished_rounds found {len(shards.finished_rounds(scan_dir))} of {args.num_files} shards.')
  return {'write_npz_ms': 1e3 * common.median(write_s), 'write_npz_ms_all': [1e3 * s for s in write_s],
          'run_rounds_ms': 1e3 * common.median(round_s), 'run_rounds_ms_all': [1e3 * s for s in round_s],
          'shard_bytes': shard_bytes, 'finished_rounds_scan_ms': 1e3 * common.median(scan_s),
          'num_files': args.num_files, 'scratch_dir': scratch}


def run(args: argparse.Namespace) -> dict:
  scratch = tempfile.mkdtemp(prefix='pds_scaling_', dir=args.scratch_dir)
  try:
    measurements, samples = _run_workers(args, scratch)
    book = _bookkeeping(args, samples[1]['sharding'], scratch)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  devices = sorted(measurements)
  per_mode = {}
  for mode in MODES:
    ips = {d: args.batch_size / common.median(measurements[d]['seconds_all'][mode]) for d in devices}
    per_mode[mode] = {str(d): {'images_per_s': ips[d], 'speedup_vs_1': ips[d] / ips[1],
                               'seconds_per_round_median': common.median(measurements[d]['seconds_all'][mode]),
                               'seconds_all': measurements[d]['seconds_all'][mode],
                               'warmup_s_first_pass': measurements[d]['warmup_s'][mode],
                               'load_average_1min_before_each_pass': [m['load_average_1min_before']
                                                                      for m in measurements[d]['passes']],
                               'output_device_count': measurements[d]['output_device_count'][mode],
                               'keys_ms': measurements[d]['keys_ms'][mode],
                               'compiled_scan_ops': measurements[d]['compiled_scan_ops'][mode]} for d in devices}
  round_ms = 1e3 * per_mode['sharding']['1']['seconds_per_round_median']
  per_shard = {'keys (sample_keys + place_keys, sharding, d=1)': per_mode['sharding']['1']['keys_ms'],
               f'keys (sample_keys + place_keys, sharding, d={devices[-1]})': per_mode['sharding'][str(devices[-1])]['keys_ms'],
               'write_shard (uint8 + float32 shard, fsynced)': book['write_npz_ms'],
               'run_rounds (keys, run.json, shard, progress of one round)': book['run_rounds_ms'],
               f'_finished_rounds scan ({args.num_files} files; once at startup)': book['finished_rounds_scan_ms']}
  book['per_shard'] = {k: {'ms': v, 'ratio_to_sampling_round': v / round_ms} for k, v in per_shard.items()}
  book['sampling_round_ms_d1_sharding'] = round_ms
  return {
      'benchmark': 'scaling',
      'setting': {'shape': [args.batch_size, args.size, args.size, 3], 'devices': devices,
                  'num_steps': args.num_steps, 'repeats': args.repeats, 'passes': args.passes,
                  'io_repeats': args.io_repeats,
                  'score': f'exact score of GaussianReference.power_law(({args.size}, {args.size}, 3))',
                  'sampler': f'PCSampler reverse_diffusion + langevin, snr {common.SNR}, VESDE({common.SIGMA_MIN}, '
                             f'{args.sigma_max:g}, {args.num_steps}), eps {common.ve_eps(args.num_steps):g}, '
                             'per-sample keys sample_keys(seed, 0, B)',
                  'masks': f'official frequency statistic of 200 clipped exact draws, alpha {args.alpha:g}',
                  'modes': {'sharding': 'PCSampler(..., mesh=parallel.batch_mesh()): shard_map of the per-device sampler under jit',
                            'pmap': 'PCSampler(..., pmap=True), batch split evenly over the devices'},
                  'devices_are': 'forced CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=d), one '
                                 'subprocess per d, all sharing the same host cores: this measures correctness and '
                                 'the overhead of splitting the batch, not real multi-device scaling',
                  'timing': 'wall time of sampler(keys, score_fn, M) up to ready samples after one warm-up call, '
                            'modes alternated per repetition, device counts run in passes (ascending, then '
                            'descending) with the timings of all passes pooled; images/s = batch / median',
                  'quick': args.quick},
      'per_mode': per_mode, 'agreement': _agreement(samples, args.rtol), 'bookkeeping': book,
      'worker_devices': {str(d): {'platform': measurements[d]['platform'], 'device_kinds': measurements[d]['device_kinds']}
                         for d in devices},
      'environment': common.environment()}


def plot(payload: dict, path) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  devices = payload['setting']['devices']
  for i, (mode, rows) in enumerate(payload['per_mode'].items()):
    b = payload['setting']['shape'][0]
    ips = [rows[str(d)]['images_per_s'] for d in devices]
    lo = [ips[j] - b / max(rows[str(d)]['seconds_all']) for j, d in enumerate(devices)]
    hi = [b / min(rows[str(d)]['seconds_all']) - ips[j] for j, d in enumerate(devices)]
    axes[0].errorbar(devices, ips, yerr=[lo, hi], marker='o', capsize=3, color=f'C{i}', label=mode)
  axes[0].set_xscale('log', base=2)
  axes[0].set_xticks(devices, [str(d) for d in devices])
  axes[0].set_ylim(bottom=0)
  axes[0].set_xlabel('forced CPU devices (sharing the same cores)')
  axes[0].set_ylabel('images/s (median; bars: min-max)')
  axes[0].legend()
  s = payload['setting']
  axes[0].set_title(f'batch {s["shape"][0]}, {s["shape"][1]}x{s["shape"][2]}x3, N={s["num_steps"]}, exact Gaussian '
                    f'score, PDS freq mask; {payload["environment"]["cpu_count"]} cores', fontsize=8)
  book = payload['bookkeeping']
  names = list(book['per_shard'])
  axes[1].barh(range(len(names)), [book['per_shard'][n]['ms'] for n in names], color='C2')
  axes[1].axvline(book['sampling_round_ms_d1_sharding'], color='k', ls='--', label='sampling one round (d=1)')
  axes[1].set_xscale('log')
  axes[1].set_yticks(range(len(names)), [n.split(' (')[0] + '\n(' + n.split(' (', 1)[1] for n in names], fontsize=7)
  axes[1].set_xlabel('ms per shard (median)')
  axes[1].legend(fontsize=8)
  axes[1].set_title('CLI bookkeeping per round vs sampling', fontsize=8)
  common.save_figure(fig, path)


def _ops_cell(ops: dict) -> str:
  return f'{"/".join(str(b) for b in ops["fft_batch_per_device"])}, {ops["all-gather"]}'


def report(payload: dict) -> str:
  devices = payload['setting']['devices']
  agree = payload['agreement']['per_devices']
  rows = [[d] + [payload['per_mode'][m][str(d)][k] for m in MODES for k in ('images_per_s', 'speedup_vs_1')]
          + [agree[str(d)]['sharding_relative'], agree[str(d)]['pmap_relative'], agree[str(d)]['pmap_vs_sharding_relative']]
          + [_ops_cell(payload['per_mode'][m][str(d)]['compiled_scan_ops']) for m in MODES]
          for d in devices]
  header = ['devices', 'sharding images/s', 'sharding speed-up', 'pmap images/s', 'pmap speed-up',
            'sharding max abs Δ vs d=1 (rel.)', 'pmap max abs Δ vs d=1 (rel.)', 'pmap vs sharding (rel.)',
            'sharding: FFT batch/device, all-gathers/step', 'pmap: FFT batch/device, all-gathers/step']
  book = payload['bookkeeping']
  book_rows = [[name, v['ms'], v['ratio_to_sampling_round']] for name, v in book['per_shard'].items()]
  book_rows.append([f'sampling one round (batch {payload["setting"]["shape"][0]}, d=1, sharding)',
                    book['sampling_round_ms_d1_sharding'], 1.])
  verdict = 'agree' if payload['agreement']['all_agree'] else 'DISAGREE'
  ops = [payload['per_mode']['sharding'][str(d)]['compiled_scan_ops'] for d in devices if d > 1]
  replicated = [o for o in ops if max(o['fft_batch_per_device']) == payload['setting']['shape'][0]]
  fft_note = ('sharding mode: every FFT transforms the global batch on every device after an all-gather '
              '(XLA does not partition FFTs along the batch axis)' if replicated else '')
  return '\n'.join([
      'Forced CPU devices share the same cores: correctness and overhead, not real scaling.', '',
      common.markdown_table(header, rows), '', fft_note,
      f'samples {verdict} with d=1 (relative = max abs Δ / max |x_1|, tolerance {payload["agreement"]["rtol"]:g}; '
      f'max |x_1| = {payload["agreement"]["sample_scale_max_abs"]:.4g})', '',
      common.markdown_table(['per-round work besides sampling', 'ms per shard (median)', 'ratio to sampling round'],
                            book_rows), '',
      f'shard file {book["shard_bytes"] / 2 ** 10:.0f} KiB'])


def main(argv: Optional[Sequence[str]] = None) -> Optional[dict]:
  args = parse_args(argv)
  if args.worker:
    print(json.dumps(measure(args)))
    return None
  paths = common.output_paths('scaling', args.out_dir, args.quick)
  payload = run(args)
  common.finish(paths, payload, plot, report)
  if not payload['agreement']['all_agree']:
    sys.exit('samples on several devices disagree with d=1 beyond --rtol; see "agreement" in the JSON.')
  return payload


if __name__ == '__main__':
  main()
