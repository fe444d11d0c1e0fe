"""UniPC and iPNDM at 4–20 NFE beside DPM-Solver++(2M/3M): the defaults of `sampling.method=unipc / ipndm`.

On the exact Gaussian targets of `benchmarks.samplers` (64² natural spectrum, exact score, KL per
dimension of the samples' Gaussian fit; 256 samples, the same per-sample keys for every row) each
row runs at each NFE with `num_steps` = NFE (every row here spends one evaluation per node, the last
one on the denoising step to σ = 0). Rows: `unipc<p>-<bh1|bh2>`, `ipndm<p>-<fixed|variable>`,
`dpm++2m`, `dpm++3m`, each on the schedules asked for (`default` = the method's own default,
`pds_jax.samplers.grid.default_schedule`). The defaults of unipc_variant, ipndm_variant and the
schedules are read off these tables.

  python -m benchmarks.fast_solvers --target gaussian64_ve
  python -m benchmarks.fast_solvers --target gaussian64_vp --rows unipc3-bh2,ipndm4-fixed --schedules default
  python -m benchmarks.fast_solvers --target gaussian64_ve --quick      # smoke setting (16², NFE 5 and 8)
Writes results/fast_solvers_<target>.json (after every row) and prints one KL table (×10³) per schedule.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Optional, Sequence

from benchmarks import common, samplers


def row_fields(row: str) -> dict:
  """config.sampling fields of a row name (unipc<p>-<variant>, ipndm<p>-<variant>, dpm++2m, dpm++3m)."""
  if row.startswith('dpm++'):
    return samplers.dpm_fields('dpm_solver++', int(row[5]))
  method, variant = row.split('-')
  if method.startswith('unipc'):
    return {'method': 'unipc', 'solver_order': int(method[5:]), 'unipc_variant': variant}
  if method.startswith('ipndm'):
    return {'method': 'ipndm', 'ipndm_order': int(method[5:]), 'ipndm_variant': variant}
  raise ValueError(f'--rows: unknown row {row!r}')


ROWS = ('dpm++2m', 'dpm++3m', 'unipc2-bh1', 'unipc2-bh2', 'unipc3-bh1', 'unipc3-bh2', 'ipndm4-fixed',
        'ipndm4-variable', 'ipndm3-fixed')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = samplers.gaussian_sweep_parser(__doc__, '4,5,6,8,10,15,20')
  p.add_argument('--rows', default=','.join(ROWS))
  p.add_argument('--schedules', default='default,karras,logsnr', help="'default' or karras / logsnr / time_uniform")
  return samplers.parse_sweep(p, argv)


def run(args, path: str) -> dict:
  target = samplers.Target(args.target, argparse.Namespace(quick=args.quick, num_samples=args.num_samples,
                                                           seed=args.seed))
  payload = {'target': args.target, 'num_samples': target.num_samples, 'sde': type(target.sde).__name__,
             'floor': target.metrics(target.floor_images), 'results': {}}
  for schedule in args.schedules.split(','):
    for row in args.rows.split(','):
      fields = dict(row_fields(row), schedule=None if schedule == 'default' else schedule)
      entries = []
      for nfe in common.int_list(args.nfe):
        config = samplers._row_config(target.config, fields, nfe, None)
        got, metrics = target.measure(config, f'{row:16s} {schedule:12s}', nfe)
        entries.append({'nfe': got, 'metrics': metrics})
      payload['results'].setdefault(schedule, {})[row] = entries
      with open(path, 'w') as f:
        json.dump(payload, f, indent=1)
  return payload


def report(payload: dict) -> str:
  lines = [f"{payload['target']}: KL per dimension ×10³ ({payload['num_samples']} samples; floor of as many exact "
           f"draws {payload['floor']['kl_per_dim'] * 1e3:.3g})"]
  for schedule, rows in payload['results'].items():
    nfes = sorted({int(e['nfe']) for entries in rows.values() for e in entries})
    table = [[row] + [next((f"{e['metrics']['kl_per_dim'] * 1e3:.3g}" for e in entries if int(e['nfe']) == n), '')
                      for n in nfes] for row, entries in rows.items()]
    lines += ['', f'schedule: {schedule}', common.markdown_table(['row'] + [f'NFE {n}' for n in nfes], table)]
  return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> dict:
  args = parse_args(argv)
  out_dir = args.out_dir or os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f"fast_solvers_{args.target}{'_quick' if args.quick else ''}.json")
  payload = run(args, path)
  print(report(payload))
  print('wrote', path)
  return payload


if __name__ == '__main__':
  main()
