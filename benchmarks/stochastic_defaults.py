"""How the defaults of the stochastic samplers were chosen: a sweep of their settings on the shipped model.

For each setting of edm_stochastic (s_churn, s_tmin, s_tmax, s_noise), restart (restart_tmin, restart_tmax,
restart_k, restart_steps) and dpm_solver++_sde (solver_order, eta) at a few NFE, the shipped model
(configs/default_model.py, from the prior) is sampled from the same per-sample keys and scored as
`benchmarks.samplers --target shipped` scores it (SWD ×10³, FD, KID against 2000 patches), with the
fraction of noise samples: high-pass energy (Fourier radius > size / 4) above 5 × the largest of the
2000 reference patches'. Writes results/stochastic_defaults.json.

  python -m benchmarks.stochastic_defaults --num_samples 64 --sweep edm_stochastic
  python -m benchmarks.stochastic_defaults --num_samples 200 --sweep dpm_sde
  for s in 9 1 2 3 4; do python -m benchmarks.stochastic_defaults --num_samples 200 --sweep langevin --seed $s \
    --out benchmarks/results/few_step_pc.json; done
  for s in 9 1 2; do python -m benchmarks.stochastic_defaults --num_samples 200 --sweep langevin_variants --seed $s \
    --out benchmarks/results/few_step_pc_variants.json; done
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from benchmarks import samplers as bench
from pds_jax import sampling

_SDE = {'method': 'dpm_solver', 'dpm_solver_variant': 'dpm_solver++_sde'}
SWEEPS = {  # what results/stochastic_defaults.json holds (64 samples, seed 9); PC-200 is its samplers.py row
    'edm_stochastic': [({'method': 'edm_stochastic', 's_churn': c, 's_tmin': 0.05, 's_tmax': 50., 's_noise': sn}, n)
                       for c, sn, n in ((0., 1., 11), (40., 1.003, 11), (80., 1.003, 11), (40., 1.003, 18))],
    'restart': [({'method': 'restart', 'restart_tmin': tmin, 'restart_tmax': tmax, 'restart_k': 2, 'restart_steps': 3},
                 11) for tmin, tmax in ((0.03, 0.3), (0.5, 5.))],
    'dpm_sde': [({'method': 'dpm_solver', 'dpm_solver_variant': 'dpm_solver++_sde', 'solver_order': o, 'eta': eta}, 20)
                for o, eta in ((2, 1.), (2, 0.5), (3, 1.))],
    # the few-step PC (results/few_step_pc.json, 200 samples, seeds 9, 1, 2, 3, 4): DPM-Solver++(2M) SDE on Karras nodes
    # with score_sde's Langevin corrector at the nodes σ <= 10, against PC-200 from the same keys
    'langevin': [({**_SDE, 'schedule': 'karras', 'langevin_steps': 1, 'langevin_sigma_max': 10.}, n)
                 for n in (16, 20, 22)] + [({'method': 'pc'}, 200)],
    # how its settings were chosen (results/few_step_pc_variants.json, seeds 9, 1, 2): where the corrector runs,
    # snr, two steps per node, the grid, the predictor
    'langevin_variants': [({**_SDE, 'schedule': grid, 'langevin_steps': k, 'langevin_sigma_max': top, 'snr': snr}, n)
                          for grid, n, top, k, snr in (('karras', 20, None, 1, .16), ('karras', 20, 20., 1, .16),
                                                       ('karras', 20, 5., 1, .16), ('karras', 20, 10., 1, .22),
                                                       ('karras', 24, 5., 1, .16), ('karras', 16, 10., 2, .16),
                                                       ('karras', 26, 2., 1, .16), ('logsnr', 20, 10., 1, .16),
                                                       ('karras', 22, 20., 1, .16), ('karras', 20, 10., 0, .16))]
                         + [({'method': 'ancestral', 'schedule': 'karras', 'langevin_steps': 1,
                              'langevin_sigma_max': 10.}, 20)],
}


def high_pass_energy(images: np.ndarray) -> np.ndarray:
  """(B,) mean |FFT|² of each image (B, H, W, C) minus its mean over Fourier radii > H / 4."""
  size = images.shape[1]
  f = np.fft.fftfreq(size) * size
  radius = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
  power = np.abs(np.fft.fft2(images - images.mean(axis=(1, 2), keepdims=True), axes=(1, 2))) ** 2
  return power[:, radius > size / 4].mean(axis=(1, 2))


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--num_samples', type=int, default=64)
  p.add_argument('--seed', type=int, default=9)
  p.add_argument('--sweep', default='edm_stochastic', help=f'comma-separated of {sorted(SWEEPS)}, or a JSON list '
                 'of [fields, num_steps]')
  p.add_argument('--out', default=os.path.join(os.path.dirname(__file__), 'results', 'stochastic_defaults.json'))
  args = p.parse_args()
  target = bench.Target('shipped', bench.parse_args(['--target', 'shipped', '--num_samples', str(args.num_samples),
                                                     '--seed', str(args.seed)]))
  threshold = 5. * high_pass_energy(np.clip(target.floor_images, 0., 1.)).max()
  jobs = json.loads(args.sweep) if args.sweep.startswith('[') else [j for s in args.sweep.split(',') for j in SWEEPS[s]]
  results = json.load(open(args.out)) if os.path.exists(args.out) else []
  for fields, steps in jobs:
    config = bench._row_config(target.config, fields, steps, None)
    start = time.time()
    try:
      samples, nfe, _, _ = target.sample(config, None, None)
      metrics = target.metrics(samples)
      noise = float(np.mean(high_pass_energy(np.clip(samples, 0., 1.)) > threshold))
    except sampling.NonFiniteSampleError as e:
      print(fields, steps, e, flush=True)
      continue
    entry = {'fields': fields, 'num_steps': steps, 'nfe': nfe, 'num_samples': args.num_samples, 'seed': args.seed,
             'metrics': metrics, 'noise_fraction': noise, 'seconds': time.time() - start}
    results.append(entry)
    print(json.dumps(entry), flush=True)
    with open(args.out, 'w') as f:
      json.dump(results, f, indent=1)


if __name__ == '__main__':
  main()
