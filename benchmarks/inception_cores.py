"""The FID Inception features on one CPU device against one device per core (issue 23).

`pds_jax.metrics.inception.inception_outputs` splits each batch over the local devices; `--mode eval` and
`--mode fid_stats` start JAX with one host CPU device per core (`pds_jax.parallel.use_cpu_cores`). Each
setting runs in its own process (the device count is fixed when JAX starts), interleaved over `--rounds`:
random Inception weights (the timing does not depend on them), `--num_images` 32² images, batches of
`--batch_size`; ms per image after a warm-up call (compilation), medians over `--repeats`.

  python -m benchmarks.inception_cores                 # results/inception_cores.json
  python -m benchmarks.inception_cores --quick         # 4 images, batch 2, 1 repeat
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Optional, Sequence

from benchmarks import common

CHILD = '''
import json, sys, time
import jax, jax.numpy as jnp, numpy as np
from pds_jax.metrics import inception
num_images, batch_size, repeats = {num_images}, {batch_size}, {repeats}
images = np.random.default_rng(0).uniform(0, 1, (num_images, 32, 32, 3)).astype(np.float32)
variables = inception.FIDInceptionV3().init(jax.random.PRNGKey(0), jnp.zeros((1, 299, 299, 3)))
inception.inception_outputs(images[:batch_size], variables, batch_size)  # compile
times = []
for _ in range(repeats):
  start = time.perf_counter()
  inception.inception_outputs(images, variables, batch_size)
  times.append((time.perf_counter() - start) * 1e3 / num_images)
print(json.dumps({{'devices': jax.local_device_count(), 'ms_per_image': times}}))
'''


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--num_images', type=int, default=32)
  p.add_argument('--batch_size', type=int, default=16)
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--rounds', type=int, default=2)
  p.add_argument('--quick', action='store_true', help='4 images, batch 2, 1 repeat, 1 round')
  p.add_argument('--out_dir', default=None)
  p.add_argument('--replot', action='store_true', help='redo the table and plot from the results JSON')
  args = p.parse_args(argv)
  if args.quick:
    args.num_images, args.batch_size, args.repeats, args.rounds = 4, 2, 1, 1
  return args


def run(args) -> dict:
  script = CHILD.format(num_images=args.num_images, batch_size=args.batch_size, repeats=args.repeats)
  cores = len(os.sched_getaffinity(0))
  runs = {'one_device': [], 'one_per_core': []}
  for r in range(args.rounds):
    for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
      count = 1 if name == 'one_device' else cores
      env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=f'--xla_force_host_platform_device_count={count}')
      start = time.perf_counter()
      proc = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True, check=True,
                            cwd=common.REPO)
      result = json.loads(proc.stdout.strip().splitlines()[-1])
      print(f'round {r} {name}: {result} ({time.perf_counter() - start:.0f} s)', flush=True)
      runs[name].append(result)
  medians = {name: common.median([t for result in results for t in result['ms_per_image']])
             for name, results in runs.items()}
  return {'cores': cores, 'runs': runs, 'ms_per_image_median': medians,
          'speed_up': medians['one_device'] / medians['one_per_core'],
          'machine': f'CPU only: {cores} cores; 1-min load average {os.getloadavg()[0]:.1f} after the run'}


def summarise(payload: dict) -> dict:
  return {'speed_up': payload['speed_up']}


def plot(payload: dict, path) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(4.5, 3))
  names = list(payload['ms_per_image_median'])
  ax.bar(names, [payload['ms_per_image_median'][n] for n in names], color=['grey', 'tab:blue'])
  ax.set_ylabel('ms per image (median)')
  ax.set_title(f'FID Inception, batch {payload["setting"]["batch_size"]}: {payload["speed_up"]:.2f}x', fontsize=9)
  common.save_figure(fig, path, note=payload['machine'])


def report(payload: dict) -> str:
  rows = [[name, payload['ms_per_image_median'][name]] for name in payload['ms_per_image_median']]
  return (common.markdown_table(['setting', 'ms per image'], rows)
          + f'\nspeed-up of one device per core: {payload["speed_up"]:.2f}x ({payload["machine"]})')


def main(argv: Optional[Sequence[str]] = None) -> dict:
  args = parse_args(argv)
  return common.main('inception_cores', args, run, summarise, plot, report)


if __name__ == '__main__':
  main()
