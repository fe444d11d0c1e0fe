"""Searched time steps (`--mode tune_schedule`, `pds_jax.samplers.tune`) against the fixed schedules.

For each method and step count: the schedule is searched from the tuning seeds (the teacher's
x_T: per-sample keys of indices 2^30 + s of config.seed), then every schedule — karras (ρ 7),
logsnr, time_uniform and the tuned one — samples the same held-out x_T (indices 0 … n - 1 of
--seed, disjoint from the tuning seeds) and is scored with the target's metric:
  gaussian64_ve  the exact 64² Gaussian of benchmarks/samplers.py (VE, σ_max by Song & Ermon's rule):
                 KL per dimension of the samples' Gaussian fit (exact metric), FD beside it;
  shipped        the shipped model (configs/default_model.py, VE NCSN++ 32²) against 2000 training
                 patches as `benchmarks/samplers.py --target shipped` does: SWD (×10³), FD and KID on
                 fixed features.
Rows: dpm++2m (`--config.sampling.method=dpm_solver`, DPM-Solver++(2M), NFE = nodes), heun
(NFE = 2 · nodes - 1) and euler (NFE = nodes). The search's wall time is the tuned schedule's cost on this machine
(2 shared CPU cores; the load average is recorded).

  python -m benchmarks.tune_schedule --target gaussian64_ve
  python -m benchmarks.tune_schedule --target shipped --num_samples 64
  python -m benchmarks.tune_schedule --target shipped --rows dpm++2m --nodes 6,10 --num_samples 64   # one row
Each writes results/tune_schedule_<target>.json (with the schedules found) and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Optional, Sequence

from benchmarks import common

ROWS = {
    'dpm++2m': ({'method': 'dpm_solver', 'dpm_solver_variant': 'dpm_solver++', 'solver_order': 2}, '6,10'),
    'heun': ({'method': 'heun'}, '3,5'),  # NFE 5 and 9: the largest odd NFE within 6 and 10
    'euler': ({'method': 'euler'}, '6,10'),  # first order, NFE = nodes
}
SCHEDULES = ('karras', 'logsnr', 'time_uniform', 'tuned')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--target', choices=('gaussian64_ve', 'shipped'), default='gaussian64_ve')
  p.add_argument('--rows', default=','.join(ROWS))
  p.add_argument('--nodes', default=None, help='node counts for every row (default per row: dpm++2m 6,10; heun 3,5)')
  p.add_argument('--num_samples', type=int, default=None, help='held-out samples (default 256 Gaussian, 64 shipped)')
  p.add_argument('--seed', type=int, default=7, help='held-out seed (the tuning uses config.seed, indices 2^30 + s)')
  p.add_argument('--tune_num_samples', type=int, default=None,
                 help='teacher trajectories of the search (config.sampling.tune_num_samples; default its 8)')
  p.add_argument('--out_dir', default=None)
  p.add_argument('--quick', action='store_true', help='16² Gaussian, 16 samples, a small search (smoke setting)')
  return p.parse_args(argv)


def run(args, partial=lambda payload: None) -> dict:
  from benchmarks.samplers import Target, _row_config
  from pds_jax import sampling, sampling_run
  from pds_jax.samplers import tune
  target_args = argparse.Namespace(quick=args.quick, num_samples=args.num_samples or (64 if args.target == 'shipped'
                                                                                       else 256), seed=args.seed)
  target = Target(args.target, target_args)
  floor = target.metrics(target.floor_images)
  print(f'{args.target}: {target.num_samples} held-out samples; floor {floor}', flush=True)
  results = {}
  for row in [r for r in args.rows.split(',') if r]:
    fields, default_nodes = ROWS[row]
    for nodes in common.int_list(args.nodes or default_nodes):
      config = _row_config(target.config, fields, nodes, None)
      if args.tune_num_samples:
        config.sampling.tune_num_samples = args.tune_num_samples
      if args.quick:
        config.sampling.tune_fine_steps, config.sampling.tune_teacher_steps = 24, 96
        config.sampling.tune_num_samples = 4
      shape = (1,) + target.image_shape  # the search starts where the run does (its init: 'auto' = the q_T on VE)
      fn = sampling.get_sampling_fn(config, target.sde, shape, lambda x: x, target.eps,
                                    init=sampling_run.load_init(config, None, shape))
      start = time.time()
      spec = tune.search(config.sampling, fn.sampler, target.score_fn, target.eps, int(config.seed), progress=False)
      tune_seconds = time.time() - start
      entry = {'nodes': nodes, 'nfe': spec['nfe'], 'tune_seconds': tune_seconds, 'schedule': spec, 'metrics': {}}
      with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f'{spec["method"]}_{spec["nfe"]}.json')
        with open(path, 'w') as f:
          json.dump(spec, f)
        for schedule in SCHEDULES:
          config.sampling.schedule, config.sampling.schedule_path = schedule, path
          samples, nfe, seconds, settings = target.sample(config, None, None)
          entry['metrics'][schedule] = target.metrics(samples)
          print(f'{row:8s} nodes {nodes:3d} nfe {nfe:3d} {schedule:13s} ' + ' '.join(
              f'{k}={v:.4g}' for k, v in entry['metrics'][schedule].items()), flush=True)
      print(tune.summary(spec, f'(tuned in {tune_seconds:.0f} s)'), flush=True)
      results.setdefault(row, []).append(entry)
      partial({'target': args.target, 'num_samples': target.num_samples, 'held_out_seed': args.seed, 'floor': floor,
               'results': results, 'complete': False})
  return {'target': args.target, 'num_samples': target.num_samples, 'held_out_seed': args.seed, 'floor': floor,
          'results': results}


def report(payload: dict) -> str:
  metric = 'swd_avg' if payload['target'] == 'shipped' else 'kl_per_dim'
  second = 'fd_features' if payload['target'] == 'shipped' else 'frechet_distance'
  rows = []
  for row, entries in payload['results'].items():
    for e in entries:
      m = e['metrics']
      best = min(SCHEDULES[:3], key=lambda s: m[s][metric])
      rows.append([row, e['nfe']] + [f'{m[s][metric]:.4g} / {m[s][second]:.4g}' for s in SCHEDULES]
                  + [f'{m["tuned"][metric] / m[best][metric]:.3f} ({best})', f'{e["tune_seconds"]:.0f}'])
  return (f'{payload["target"]}, {payload["num_samples"]} held-out samples (seed {payload["held_out_seed"]}); '
          f'cells: {metric} / {second}\n' + common.markdown_table(
              ['row', 'NFE'] + list(SCHEDULES) + ['tuned / best fixed', 'search s'], rows))


def main(argv: Optional[Sequence[str]] = None) -> dict:
  args = parse_args(argv)
  common.use_compilation_cache()
  start = time.time()
  paths = common.output_paths(f'tune_schedule_{args.target}', args.out_dir, args.quick)
  head = {'benchmark': 'tune_schedule', 'setting': vars(args), 'environment': common.environment()}
  # each finished row is written at once (complete: false), so a long run on a shared machine keeps its results
  payload = {**head, **run(args, lambda partial: common.write_json(paths['json'], {**head, **partial}))}
  payload['total_seconds'] = time.time() - start
  common.write_json(paths['json'], payload)
  print(report(payload))
  print(f'\nwrote {paths["json"]}')
  return payload


if __name__ == '__main__':
  main()
