"""The modes of `main.py`: sample, compare (vanilla vs PDS) and convert.

Like score_sde's `run_lib.py`, each mode is a function of (config, workdir, ...); `main.py` only
parses flags. Every input is validated before any compute starts, and every file is written
atomically (temp file + rename), so an interrupted run never leaves a half-written output.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Callable, Dict, Optional, Tuple

import jax
import ml_collections
import numpy as np

from pds_jax import gaussian, parallel as parallel_lib, preconditioning, sampling, sde_lib
from pds_jax.io_utils import atomic_write
from pds_jax.preconditioning import Preconditioner

GAUSSIAN_REFERENCE = 'gaussian_reference'
MODES = ('sample', 'compare', 'convert')


# ----------------------------------------------------------------------------- files


def write_json(path: str, obj) -> None:
  atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True).encode()))


def write_npz(path: str, **arrays) -> None:
  atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def image_grid(images: np.ndarray, nrow: Optional[int] = None, pad: int = 2) -> np.ndarray:
  """Tiles images (N, H, W, C) in [0, 1] into one uint8 (rows·(H+pad), cols·(W+pad), 3) image."""
  n, h, w, c = images.shape
  nrow = nrow or int(np.ceil(np.sqrt(n)))
  rows = int(np.ceil(n / nrow))
  grid = np.ones((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), np.float32)
  for i, img in enumerate(np.clip(images, 0, 1)):
    r, col = divmod(i, nrow)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = (
        img if c == 3 else np.repeat(img[..., :1], 3, axis=-1))
  return (grid * 255).round().astype(np.uint8)


def write_png(path: str, grid: np.ndarray) -> None:
  from PIL import Image
  atomic_write(path, lambda f: Image.fromarray(grid).save(f, format='PNG'))


def _output_folder(workdir: str, eval_folder: str) -> str:
  folder = os.path.join(workdir, eval_folder)
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise ValueError(f'cannot create the output folder {folder}: {e}') from e
  if not os.access(folder, os.W_OK):
    raise ValueError(f'the output folder {folder} is not writable.')
  return folder


# ----------------------------------------------------------------------------- setup


def get_data_scaler(config) -> Callable:
  """Data in [0, 1] -> model range: [-1, 1] when `data.centered`, else unchanged (score_sde)."""
  return (lambda x: x * 2. - 1.) if config.data.centered else (lambda x: x)


def get_data_inverse_scaler(config) -> Callable:
  """Model range -> [0, 1] (score_sde)."""
  return (lambda x: (x + 1.) / 2.) if config.data.centered else (lambda x: x)


def image_shape(config) -> Tuple[int, int, int]:
  return (config.data.image_size, config.data.image_size, config.data.num_channels)


def gaussian_reference(config) -> gaussian.GaussianReference:
  """The exact Gaussian data distribution of a `gaussian_reference` config."""
  return gaussian.GaussianReference.power_law(image_shape(config), mean=config.data.pixel_mean,
                                              pixel_std=config.data.pixel_std, exponent=config.data.spectrum_exponent)


def validate_sampling_config(config) -> None:
  """Checks the sampling fields before any compute starts; raises ValueError naming the field."""
  s = config.sampling
  if s.method.lower() != 'pc':
    raise ValueError(f"config.sampling.method = {s.method!r}: the sample mode runs the 'pc' sampler.")
  sampling.get_predictor(s.predictor.lower())
  sampling.get_corrector(s.corrector.lower())
  if s.pds_variant not in sampling.PDS_VARIANTS:
    raise ValueError(f'config.sampling.pds_variant = {s.pds_variant!r}; choose one of {sampling.PDS_VARIANTS}.')
  if not s.speed_up > 0 or int(config.model.num_scales / s.speed_up) < 1:
    raise ValueError(f'config.sampling.speed_up = {s.speed_up} must be > 0 and <= model.num_scales '
                     f'({config.model.num_scales}).')
  if not s.snr > 0:
    raise ValueError(f'config.sampling.snr = {s.snr} must be > 0.')
  if config.eval.parallel not in parallel_lib.PARALLEL_MODES:
    raise ValueError(f'config.eval.parallel = {config.eval.parallel!r}; choose one of {parallel_lib.PARALLEL_MODES}.')
  if config.eval.batch_size % jax.local_device_count():
    raise ValueError(f'config.eval.batch_size = {config.eval.batch_size} is not divisible by the '
                     f'{jax.local_device_count()} local devices.')
  if config.eval.batch_size < 1 or config.eval.num_samples < 1:
    raise ValueError(f'config.eval.batch_size ({config.eval.batch_size}) and config.eval.num_samples '
                     f'({config.eval.num_samples}) must be >= 1.')


def load_preconditioner(config) -> Preconditioner:
  """The PDS preconditioner of `config.sampling` (identity when no mask path is set)."""
  s = config.sampling
  return preconditioning.load(s.freq_mask_path, s.space_mask_path, s.alpha, shape=image_shape(config))


def get_score_fn(config, workdir: Optional[str], sde: sde_lib.SDE):
  """The score function of the config: exact for `gaussian_reference`, else the restored checkpoint.

  Returns (score_fn, description dict for the report).
  """
  if config.model.name == GAUSSIAN_REFERENCE:
    return gaussian_reference(config).score_fn(sde), {'model': GAUSSIAN_REFERENCE}
  from pds_jax import checkpoints
  from pds_jax.models import utils as mutils
  if not workdir:
    raise ValueError('--workdir must hold checkpoints/ (or be a checkpoint file) to sample from a model.')
  state = checkpoints.restore_checkpoint(workdir, config)
  model = mutils.get_model(config.model.name)(config=config)
  score_fn = mutils.get_score_fn(sde, model, state.params_ema, state.model_state, train=False,
                                 continuous=config.training.continuous, dtype=config.eval.dtype)
  return score_fn, {'model': config.model.name, 'checkpoint_step': int(state.step), 'dtype': config.eval.dtype}


@dataclasses.dataclass
class SamplingRun:
  """Everything `sample` and `compare` need, built and validated before any sampling starts."""
  config: ml_collections.ConfigDict
  sde: sde_lib.SDE
  eps: float
  score_fn: Callable
  model_info: Dict
  shape: Tuple[int, ...]

  @classmethod
  def build(cls, config, workdir: Optional[str]) -> 'SamplingRun':
    validate_sampling_config(config)
    sde, eps = sde_lib.get_sde(config)
    # The score function keeps the training SDE (N = num_scales): discrete models' labels depend on it.
    score_fn, info = get_score_fn(config, workdir, sde)
    shape = (config.eval.batch_size,) + image_shape(config)
    return cls(config, sde, eps, score_fn, info, shape)

  def sampler(self, preconditioner: Preconditioner) -> Callable:
    return sampling.get_sampling_fn(self.config, self.sde, self.shape, get_data_inverse_scaler(self.config),
                                    self.eps, preconditioner, **parallel_lib.sampler_devices(self.config.eval.parallel))

  def settings(self, preconditioner: Preconditioner) -> Dict:
    s = self.config.sampling
    sde, eps = sampling.pds_schedule(self.config, self.sde, self.eps)
    return {'sde': type(sde).__name__, 'num_steps': sde.N, 'eps': eps, 'predictor': s.predictor,
            'corrector': s.corrector, 'snr': s.snr, 'n_steps_each': s.n_steps_each, 'speed_up': s.speed_up,
            'alpha': s.alpha, 'freq_mask_path': s.freq_mask_path, 'space_mask_path': s.space_mask_path,
            'pds_variant': s.pds_variant, 'preconditioned': not preconditioner.is_identity,
            'batch_size': self.config.eval.batch_size, 'seed': self.config.seed, **self.model_info}


def draw(sampler: Callable, keys: jax.Array, score_fn, parallel: str = 'sharding') -> Tuple[np.ndarray, int, float]:
  """One batch from per-sample keys (B, 2): (samples as float32 numpy, nfe, wall seconds).

  A batch that does not fit in device memory is reported with a batch size to try.
  """
  start = time.perf_counter()
  try:
    samples, nfe = sampler(parallel_lib.place_keys(keys, parallel), score_fn, progress=True)
    samples = np.asarray(jax.block_until_ready(samples), np.float32)
  except jax.errors.JaxRuntimeError as e:
    if 'RESOURCE_EXHAUSTED' not in str(e) and 'Out of memory' not in str(e):
      raise
    per_device = len(keys) // jax.local_device_count()
    raise ValueError(f'a batch of {len(keys)} samples ({per_device} per device) does not fit in device memory; '
                     f'try --config.eval.batch_size={max(jax.local_device_count(), len(keys) // 2)}.') from e
  return samples, nfe, time.perf_counter() - start


def exact_metrics(config, accumulator: gaussian.MomentAccumulator) -> Optional[Dict[str, float]]:
  """The exact Gaussian metrics when the target is the Gaussian reference, else None."""
  if config.model.name != GAUSSIAN_REFERENCE:
    return None
  return accumulator.metrics(gaussian_reference(config))


# ----------------------------------------------------------------------------- modes


def _shard_path(folder: str, round_index: int, host: int) -> str:
  return os.path.join(folder, f'samples_{round_index}_{host}.npz')


def _finished_rounds(folder: str) -> Dict[int, str]:
  """Round index -> shard file, for the complete shards in `folder` (written atomically)."""
  done = {}
  for name in os.listdir(folder):
    parts = name[len('samples_'):-len('.npz')].split('_') if name.startswith('samples_') and name.endswith('.npz') else []
    if len(parts) == 2 and all(p.isdigit() for p in parts):
      done[int(parts[0])] = os.path.join(folder, name)
  return done


def _check_manifest(folder: str, manifest: Dict) -> None:
  """Writes the run's settings beside its shards, or checks that existing shards were made with the same."""
  path = os.path.join(folder, 'run.json')
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    if old != manifest:
      changed = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
      raise ValueError(f'{folder} holds samples of another run (settings differ in {changed}); '
                       'use another --eval_folder or remove the old shards.')
  elif jax.process_index() == 0:
    write_json(path, manifest)


def _wait_for_rounds(folder: str, num_rounds: int, timeout: float) -> Dict[int, str]:
  """Host 0 waits until every round's shard exists (other hosts write theirs)."""
  deadline = time.monotonic() + timeout
  while True:
    done = _finished_rounds(folder)
    missing = [r for r in range(num_rounds) if r not in done]
    if not missing:
      return done
    if time.monotonic() > deadline:
      raise ValueError(f'timed out after {timeout:.0f} s waiting for rounds {missing[:10]} in {folder}.')
    time.sleep(1.)


def sample(config: ml_collections.ConfigDict, workdir: str, eval_folder: str = 'eval') -> Optional[Dict]:
  """Draws `eval.num_samples` samples in rounds of `eval.batch_size`, resumably, on all devices and hosts.

  Round r holds samples r·B … r·B + B - 1, sample i drawn with the key fold_in(PRNGKey(seed), i);
  rounds go round-robin to the hosts, each writing workdir/<eval_folder>/samples_<r>_<host>.npz
  atomically (uint8 `samples` as score_sde writes them, float32 `samples_float`). A restarted run
  skips the rounds already on disk. Host 0 then writes grid.png and report.json, streaming over
  the shards (memory independent of num_samples). Returns the report on host 0, else None.
  """
  run = SamplingRun.build(config, workdir)
  preconditioner = load_preconditioner(config)
  folder = _output_folder(workdir, eval_folder)
  parallel = config.eval.parallel
  settings = run.settings(preconditioner)
  _check_manifest(folder, {**settings, 'num_samples': config.eval.num_samples})
  sampler = run.sampler(preconditioner)
  batch = config.eval.batch_size
  num_rounds = -(-config.eval.num_samples // batch)
  host = jax.process_index()
  done = _finished_rounds(folder)
  todo = [r for r in parallel_lib.host_rounds(num_rounds) if r not in done]
  logging.info('host %d: %d of its rounds to sample (%d rounds of %d in the job)', host, len(todo), num_rounds, batch)
  from tqdm.auto import tqdm
  times = []
  for r in tqdm(todo, desc=f'rounds (host {host})', unit='round'):
    samples, _, seconds = draw(sampler, sampling.sample_keys(config.seed, r * batch, batch), run.score_fn, parallel)
    write_npz(_shard_path(folder, r, host), samples=np.clip(samples * 255., 0, 255).astype(np.uint8),
              samples_float=samples)
    times.append(seconds)
  if host != 0:
    return None
  shards = _wait_for_rounds(folder, num_rounds, config.eval.wait_timeout)
  accumulator, preview, remaining = gaussian.MomentAccumulator(), [], config.eval.num_samples
  for r in range(num_rounds):
    with np.load(shards[r]) as f:
      samples = f['samples_float'][:remaining]
    remaining -= len(samples)
    accumulator.add(samples)
    preview.append(samples[:max(0, 64 - sum(len(p) for p in preview))])
  write_png(os.path.join(folder, 'grid.png'), image_grid(np.concatenate(preview)))
  report = {'settings': {**settings, 'parallel': parallel, 'devices_per_host': jax.local_device_count(),
                         'hosts': jax.process_count()},
            'num_samples': accumulator.count, 'num_rounds': num_rounds, 'nfe_per_sample': sampler.func.nfe,
            'wall_seconds_per_round_this_run_host0': times, 'first_round_includes_compile': bool(times),
            'metrics': exact_metrics(config, accumulator)}
  write_json(os.path.join(folder, 'report.json'), report)
  return report


def _masks_for_compare(config) -> Preconditioner:
  """The configured masks; for the Gaussian reference without mask files, the official statistics
  of 200 exact data draws (clipped to [0, 1] like images), as the official code uses 200 images."""
  s = config.sampling
  if s.freq_mask_path or s.space_mask_path:
    return load_preconditioner(config)
  if config.model.name != GAUSSIAN_REFERENCE:
    raise ValueError('compare needs --freq_mask_path and/or --space_mask_path for a trained model.')
  data = np.asarray(gaussian_reference(config).sample(jax.random.PRNGKey(config.seed + 1), 200))
  freq, _ = preconditioning.compute_statistics(np.clip(data, 0, 1))
  return preconditioning.from_statistics(freq, None, s.alpha, shape=image_shape(config))


def compare(config: ml_collections.ConfigDict, workdir: str, eval_folder: str = 'compare') -> Dict:
  """Vanilla vs PDS with the same seed and steps: a side-by-side grid, both metrics and wall times."""
  run = SamplingRun.build(config, workdir)
  preconditioned = _masks_for_compare(config)
  folder = _output_folder(workdir, eval_folder)
  keys = sampling.sample_keys(config.seed, 0, config.eval.batch_size)
  results, grids = {}, []
  for name, precond in (('vanilla', Preconditioner()), ('pds', preconditioned)):
    sampler = run.sampler(precond)
    draw(sampler, keys, run.score_fn)  # compile and warm up, so the wall time below is sampling only
    samples, nfe, seconds = draw(sampler, keys, run.score_fn)
    write_npz(os.path.join(folder, f'samples_{name}.npz'), samples=np.clip(samples * 255., 0, 255).astype(np.uint8),
              samples_float=samples)
    results[name] = {'settings': run.settings(precond), 'nfe_per_sample': nfe, 'wall_seconds': seconds,
                     'metrics': exact_metrics(config, gaussian.MomentAccumulator().add(samples))}
    grids.append(image_grid(samples[:36], nrow=6))
    print(f'{name:8s} steps={results[name]["settings"]["num_steps"]:5d} nfe={nfe:5d} '
          f'wall={seconds:7.2f}s ' + ' '.join(f'{k}={v:.4g}' for k, v in (results[name]['metrics'] or {}).items()))
  gap = np.full((grids[0].shape[0], 12, 3), 255, np.uint8)
  write_png(os.path.join(folder, 'vanilla_vs_pds.png'), np.concatenate([grids[0], gap, grids[1]], axis=1))
  if config.model.name == GAUSSIAN_REFERENCE:
    reference = gaussian_reference(config)
    floor = gaussian.metrics(reference.sample(jax.random.PRNGKey(config.seed + 2), run.shape[0]), reference)
    results['exact_samples_noise_floor'] = floor
    print('exact samples (noise floor of the metrics): ' + ' '.join(f'{k}={v:.4g}' for k, v in floor.items()))
  write_json(os.path.join(folder, 'report.json'), results)
  print(f'wrote {folder}/vanilla_vs_pds.png and report.json')
  return results


def convert(config: ml_collections.ConfigDict, workdir: str, pytorch_checkpoint: Optional[str]) -> str:
  """Converts a score_sde_pytorch `.pth` into workdir/checkpoints/checkpoint_<N> (legacy Flax layout)."""
  if not pytorch_checkpoint:
    raise ValueError('--mode convert needs --pytorch_checkpoint=<file.pth>.')
  if not os.path.isfile(pytorch_checkpoint):
    raise ValueError(f'{pytorch_checkpoint}: PyTorch checkpoint not found.')
  from pds_jax import checkpoints
  path = checkpoints.write_converted_checkpoint(pytorch_checkpoint, config, workdir)
  print(f'wrote {path}')
  return path
