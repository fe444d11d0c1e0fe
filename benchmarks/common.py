"""Shared pieces of the core benchmarks: settings, the VE PC sampler, a conv score net, output files.

The benchmarks are scripts, never tests: each writes `results/<name>.json` and `<name>.png` and
prints a markdown table. Run them from the repository root as `python -m benchmarks.<name>`.
"""
from __future__ import annotations

import functools
import json
import math
import os
import pathlib
import platform
import statistics
import textwrap
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pds_jax.io_utils import atomic_write
from pds_jax import gaussian, preconditioning, sampling, sde_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / 'benchmarks' / 'results'
NUM_SCALES = 2000  # PDS `speed_up` semantics: N = 2000 / k steps, eps = 1e-5 · k
SIGMA_MIN = 0.01
SNR = 0.16
SIGMA_MAX_64 = 48.7  # song_ermon_sigma_max of the 64x64x3 Gaussian reference, rounded; used for timings


def use_compilation_cache() -> str:
  """Points JAX's persistent compilation cache at $JAX_COMPILATION_CACHE_DIR (default <repo>/.jax_cache)."""
  cache_dir = os.environ.get('JAX_COMPILATION_CACHE_DIR', str(REPO / '.jax_cache'))
  jax.config.update('jax_compilation_cache_dir', cache_dir)
  return cache_dir


def environment() -> dict:
  """Where a measurement was taken: versions, cores and the load of the (shared) machine."""
  return {'jax': jax.__version__, 'backend': jax.default_backend(), 'platform': platform.platform(),
          'cpu_count': os.cpu_count(), 'load_average_1_5_15': list(os.getloadavg()),
          'time': time.strftime('%Y-%m-%d %H:%M:%S')}


# ----------------------------------------------------------------------------- sampling setting


def ve_eps(num_steps: int) -> float:
  """Sampling eps of PDS's speed_up k = NUM_SCALES / N for VE: 1e-5 · k."""
  return 1e-5 * NUM_SCALES / num_steps


def ve_sampler(sigma_max: float, shape: Tuple[int, int, int, int], num_steps: int,
               pds_variant: str = 'official') -> sampling.PCSampler:
  """reverse_diffusion + langevin (snr 0.16) on VESDE(0.01, sigma_max, N) with eps = 1e-5 · 2000 / N."""
  sde = sde_lib.VESDE(SIGMA_MIN, sigma_max, num_steps)
  return sampling.PCSampler(sde, shape, 'reverse_diffusion', 'langevin', snr=SNR, n_steps=1,
                            denoise=True, eps=ve_eps(num_steps), pds_variant=pds_variant)


def reference_statistics(reference: gaussian.GaussianReference, num_images: int = 200,
                         seed: int = 1) -> Tuple[np.ndarray, np.ndarray]:
  """Official PDS (freq, space) statistics (H, W, C) of exact draws clipped to [0, 1]."""
  images = np.clip(np.asarray(reference.sample(jax.random.PRNGKey(seed), num_images)), 0., 1.)
  return preconditioning.compute_statistics(images)


# ----------------------------------------------------------------------------- a conv score net


class ConvScoreNet(nn.Module):
  """A small U-Net-shaped score net: s(x, σ) = net(x / sqrt(1 + σ²), log σ) / σ, x (B, H, W, C).

  One level per entry of `features` (resolution halved between levels), `num_convs` 3x3 conv +
  GroupNorm + SiLU blocks per level on the way down and up, additive skips. The compute is spread
  over the resolutions as in NCSN++ (~38 MMAC per conv per image at every level by default).
  """
  features: Sequence[int] = (32, 64, 128, 256)
  num_convs: int = 2

  def _block(self, h: jax.Array, features: int) -> jax.Array:
    h = nn.Conv(features, (3, 3))(h)
    return nn.silu(nn.GroupNorm(num_groups=min(8, features))(h))

  @nn.compact
  def __call__(self, x: jax.Array, sigma: jax.Array) -> jax.Array:
    h = nn.Conv(self.features[0], (3, 3))(x / jnp.sqrt(1. + sigma ** 2)[:, None, None, None])
    h = h + nn.Dense(self.features[0])(jnp.log(sigma)[:, None])[:, None, None, :]
    skips = []
    for level, features in enumerate(self.features):
      if level > 0:
        h = nn.avg_pool(h, (2, 2), strides=(2, 2))
      for _ in range(self.num_convs):
        h = self._block(h, features)
      skips.append(h)
    for level in reversed(range(len(self.features))):
      if level < len(self.features) - 1:
        b, hh, ww, c = h.shape
        h = jax.image.resize(h, (b, 2 * hh, 2 * ww, c), 'nearest')
      h = self._block(h, self.features[level]) + skips[level]
      for _ in range(self.num_convs - 1):
        h = self._block(h, self.features[level])
    out = nn.Conv(x.shape[-1], (3, 3))(h)
    return out / sigma[:, None, None, None]


def _net_score(params, x, t, *, model: ConvScoreNet, sde: sde_lib.VESDE):
  """VE score of the net: the marginal std σ(t) is its noise label (score_sde's continuous VE)."""
  return model.apply(params, x, sde.marginal_prob(x, t)[1])


def conv_score_fn(model: ConvScoreNet, sde: sde_lib.VESDE, shape: Tuple[int, int, int, int],
                  seed: int = 0) -> Tuple[jax.tree_util.Partial, int]:
  """(score_fn, number of parameters) with random weights bound as jit arguments of a `Partial`."""
  x = jnp.zeros(shape, jnp.float32)
  params = model.init(jax.random.PRNGKey(seed), x, jnp.ones(shape[0]))
  num_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
  return jax.tree_util.Partial(functools.partial(_net_score, model=model, sde=sde), params), num_params


# ----------------------------------------------------------------------------- timing and output


def seconds(fn: Callable, *args, **kwargs) -> float:
  """Wall time of fn(*args, **kwargs) up to the readiness of its outputs."""
  start = time.perf_counter()
  jax.block_until_ready(fn(*args, **kwargs))
  return time.perf_counter() - start


def median(values: Sequence[float]) -> float:
  return float(statistics.median(values))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
  """A GitHub markdown table; floats are written with 4 significant digits."""
  fmt = lambda v: f'{v:.4g}' if isinstance(v, float) else ('—' if v is None else str(v))
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(fmt(v) for v in row) + ' |' for row in rows]
  return '\n'.join(lines)


def int_list(text: str) -> List[int]:
  """Sorted distinct integers of a comma-separated string ('10,20,50')."""
  return sorted({int(v) for v in text.split(',') if v.strip()})


def float_list(text: str) -> List[float]:
  """Sorted distinct floats of a comma-separated string ('1,3.5')."""
  return sorted({float(v) for v in text.split(',') if v.strip()})


def first_reach(nfe: Sequence[float], values: Sequence[float], target: float) -> Optional[float]:
  """The NFE at which a metric first gets to <= `target` along a grid of increasing NFE; None if never.

  The first grid point at or below the target, interpolated on the straight line in (log NFE,
  log metric) from the previous grid point; values are floored at 1e-12 (KID can be negative).
  """
  values = [max(v, 1e-12) for v in values]
  for j, value in enumerate(values):
    if value <= target:
      if j == 0:
        return float(nfe[0])
      (n0, v0), (n1, v1) = (nfe[j - 1], values[j - 1]), (nfe[j], value)
      slope = (math.log(n1) - math.log(n0)) / (math.log(v1) - math.log(v0))
      return math.exp(math.log(n0) + (math.log(target) - math.log(v0)) * slope)
  return None


def reach_summary(results: Dict[str, List[dict]], baseline: str, metric: str, tolerance: float = 1.05) -> dict:
  """NFE each method needs to match the baseline's best value of `metric` (within `tolerance` x).

  results: method -> entries {'nfe', 'metrics': {metric: value}} in increasing NFE. Returns
  {'target', 'baseline_best_nfe', 'baseline_best_value', method: {'nfe_to_reach',
  'at_most_grid_minimum', 'speed_up'}} with speed_up = baseline NFE to reach / the method's.
  """
  series = lambda entries: ([e['nfe'] for e in entries], [e['metrics'][metric] for e in entries])
  best = min(results[baseline], key=lambda e: e['metrics'][metric])
  target = tolerance * max(best['metrics'][metric], 1e-12)
  baseline_nfe = first_reach(*series(results[baseline]), target)
  summary = {'target': target, 'baseline_best_nfe': best['nfe'], 'baseline_best_value': best['metrics'][metric]}
  for method, entries in results.items():
    nfe = first_reach(*series(entries), target)
    summary[method] = {'nfe_to_reach': nfe, 'at_most_grid_minimum': nfe == entries[0]['nfe'],
                       'speed_up': baseline_nfe / nfe if nfe else None}
  return summary


def reach_cell(entry: dict) -> str:
  """A `reach_summary` method entry as a table cell: '<NFE> (<speed-up>x)', '<= ' at the grid minimum."""
  if entry['nfe_to_reach'] is None:
    return 'not reached'
  cell = ('<= ' if entry['at_most_grid_minimum'] else '') + f'{entry["nfe_to_reach"]:.1f}'
  return cell + ('' if entry['speed_up'] is None else f' ({entry["speed_up"]:.1f}x)')


def save_figure(fig, path, dpi: int = 120, note: Optional[str] = None) -> None:
  """Lays out, writes and closes a matplotlib figure; `note` (the machine's description) as a small wrapped title."""
  import matplotlib.pyplot as plt
  if note is not None:
    fig.suptitle(textwrap.fill(note, 150), fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=dpi)
  plt.close(fig)


def output_paths(name: str, out_dir: Optional[str], quick: bool) -> Dict[str, pathlib.Path]:
  """results/<name>.json and .png (<name>_quick.* for the smoke setting, never overwriting a full run)."""
  directory = pathlib.Path(out_dir) if out_dir else RESULTS_DIR
  directory.mkdir(parents=True, exist_ok=True)
  stem = f'{name}_quick' if quick else name
  return {'json': directory / f'{stem}.json', 'png': directory / f'{stem}.png'}


def write_json(path: pathlib.Path, payload: dict) -> None:
  atomic_write(str(path), lambda f: f.write((json.dumps(payload, indent=2) + '\n').encode()))


def main(name: str, args, run: Callable[[object], dict], summarise: Callable[[dict], dict], plot: Callable,
         report: Callable) -> dict:
  """A benchmark's run: compilation cache, `run(args)` (or, with `args.replot`, the results JSON
  re-read), `summarise`, then the JSON, the PNG and the printed tables (`finish`).

  The payload is {'benchmark', 'setting' (the args), 'environment', **run(args), 'summary',
  'total_seconds'}; `args` needs `quick`, `out_dir` and `replot`.
  """
  use_compilation_cache()
  paths = output_paths(name, args.out_dir, args.quick)
  if args.replot:
    payload = json.loads(paths['json'].read_text())
    payload['summary'] = summarise(payload)
    return finish(paths, payload, plot, report)
  start = time.time()
  payload = {'benchmark': name, 'setting': {**vars(args)}, 'environment': environment(), **run(args)}
  payload['summary'] = summarise(payload)
  payload['total_seconds'] = time.time() - start
  return finish(paths, payload, plot, report)


def finish(paths: Dict[str, pathlib.Path], payload: dict, plot: Callable, report: Callable,
           write: bool = True) -> dict:
  """Writes the JSON (unless already written) and the PNG, prints the tables, returns the payload."""
  if write:
    write_json(paths['json'], payload)
  plot(payload, paths['png'])
  print(report(payload))
  print(f'\nwrote {paths["json"]} and {paths["png"]}')
  return payload
