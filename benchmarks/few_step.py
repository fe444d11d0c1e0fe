"""The few-step defaults: σ schedule and lower_order_final of every σ-grid method at NFE 4–20.

On the exact Gaussian targets of `benchmarks.samplers` (64² natural spectrum, exact score, KL per
dimension of the samples' Gaussian fit; 256 samples, the same per-sample keys for every row), each
method runs at each NFE on each schedule (`sampling.schedule`: karras ρ 7, logsnr, time_uniform),
DPM-Solver++ also with the official `lower_order_final`. The defaults of `pds_jax.samplers.grid`
(`DEFAULT_SCHEDULES`) and `dpm_solver.LOWER_ORDER_FINAL` are read off these tables.

  python -m benchmarks.few_step --target gaussian64_ve
  python -m benchmarks.few_step --target gaussian64_vp
  python -m benchmarks.few_step --target gaussian64_ve --quick      # smoke setting
Writes results/few_step_<target>.json and prints one table per method (KL ×10³, rows = schedule).
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Dict, List, Optional, Sequence


from benchmarks import common, samplers

# method rows: name -> config.sampling fields; nodes(NFE) -> the num_steps giving that NFE (None: skip)
METHODS = {
    'euler': ({'method': 'euler'}, lambda nfe: nfe),
    'heun': ({'method': 'heun'}, lambda nfe: (nfe + 1) // 2 if nfe % 2 else None),
    'dpm++2m': (samplers.dpm_fields('dpm_solver++', 2), lambda nfe: nfe),
    'dpm++3m': (samplers.dpm_fields('dpm_solver++', 3), lambda nfe: nfe),
    'dpm_solver3': (samplers.dpm_fields('dpm_solver', 3), lambda nfe: (nfe - 1) // 3 + 1 if (nfe - 1) % 3 == 0 else None),
}
SCHEDULES = ('karras', 'logsnr', 'time_uniform')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = samplers.gaussian_sweep_parser(__doc__, '4,5,6,7,8,10,12,15,20')
  p.add_argument('--methods', default=','.join(METHODS))
  return samplers.parse_sweep(p, argv)


def _variants(name: str):
  """(label, extra fields) of one method: every schedule, and lower_order_final for DPM-Solver++."""
  for schedule in SCHEDULES:
    yield schedule, {'schedule': schedule}
    if name.startswith('dpm++'):
      yield schedule + '+lof', {'schedule': schedule, 'lower_order_final': True}


def run(args) -> dict:
  target = samplers.Target(args.target, argparse.Namespace(quick=args.quick, num_samples=args.num_samples,
                                                           seed=args.seed))
  floor = target.metrics(target.floor_images)
  results: Dict[str, Dict[str, List[dict]]] = {}
  for name in args.methods.split(','):
    fields, nodes_of = METHODS[name]
    for label, extra in _variants(name):
      for nfe in common.int_list(args.nfe):
        nodes = nodes_of(nfe)
        if nodes is None or nodes < 2:
          continue
        config = samplers._row_config(target.config, {**fields, **extra}, nodes, None)
        got, metrics = target.measure(config, f'{name:12s} {label:18s}', nfe)
        results.setdefault(name, {}).setdefault(label, []).append({'nfe': got, 'metrics': metrics})
  return {'target': args.target, 'num_samples': target.num_samples, 'floor': floor, 'results': results}


def report(payload: dict) -> str:
  lines = [f"{payload['target']}: KL per dimension ×10³ ({payload['num_samples']} samples; floor of as many exact "
           f"draws {payload['floor']['kl_per_dim'] * 1e3:.3g})"]
  for name, variants in payload['results'].items():
    nfes = sorted({int(e['nfe']) for entries in variants.values() for e in entries})
    rows = [[label] + [next((f"{e['metrics']['kl_per_dim'] * 1e3:.3g}" for e in entries if int(e['nfe']) == n), '')
                       for n in nfes] for label, entries in variants.items()]
    lines += ['', name, common.markdown_table(['schedule'] + [f'NFE {n}' for n in nfes], rows)]
  return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> dict:
  args = parse_args(argv)
  payload = run(args)
  out_dir = args.out_dir or os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f"few_step_{args.target}{'_quick' if args.quick else ''}.json")
  with open(path, 'w') as f:
    json.dump(payload, f, indent=1)
  print(report(payload))
  print('wrote', path)
  return payload


if __name__ == '__main__':
  main()
