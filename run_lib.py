"""The modes of `main.py`: train, sample, compare (vanilla vs PDS), convert, stats, fid_stats, eval,
fit_init, likelihood (bits/dim), inpaint and colorize (controllable generation).

Like score_sde's `run_lib.py`, each mode is a function of (config, workdir, ...); `main.py` only
parses flags. Every input is validated before any compute starts, and every file is written
atomically (temp file + rename), so an interrupted run never leaves a half-written output.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pds_jax import datasets, gaussian, parallel as parallel_lib, preconditioning, sampling, sde_lib
from pds_jax.figures import image_grid, titled_grid, titled_panels  # noqa: F401  (public: the notebook's grids)
from pds_jax.io_utils import atomic_write
from pds_jax.preconditioning import Preconditioner

GAUSSIAN_REFERENCE = 'gaussian_reference'
MODES = ('train', 'sample', 'compare', 'convert', 'stats', 'fid_stats', 'eval', 'fit_init', 'likelihood', 'inpaint',
         'colorize')
SIGMA_T_RULES = ('principal', 'dip')


# ----------------------------------------------------------------------------- files


def write_json(path: str, obj) -> None:
  atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True).encode()))


def write_npz(path: str, **arrays) -> None:
  atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


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


def image_shape(config) -> Tuple[int, int, int]:
  return (config.data.image_size, config.data.image_size, config.data.num_channels)


def gaussian_reference(config) -> gaussian.GaussianReference:
  """The exact Gaussian data distribution of a `gaussian_reference` config."""
  return gaussian.GaussianReference.power_law(image_shape(config), mean=config.data.pixel_mean,
                                              pixel_std=config.data.pixel_std, exponent=config.data.spectrum_exponent)


def in_model_range(config, reference: gaussian.GaussianReference) -> gaussian.GaussianReference:
  """The Gaussian reference in the model's variable (`datasets.get_data_scaler`: x, or 2x - 1 if centered)."""
  scale, shift = (2., -1.) if config.data.centered else (1., 0.)
  return reference.affine(scale, shift)


def validate_sampling_config(config) -> None:
  """Checks the sampling fields before any compute starts; raises ValueError naming the field.

  The method's own fields are checked when `sampling.get_sampling_fn` builds it (also before compute).
  """
  s = config.sampling
  sampling.get_predictor(s.predictor.lower())
  sampling.get_corrector(s.corrector.lower())
  if s.pds_variant not in sampling.PDS_VARIANTS:
    raise ValueError(f'config.sampling.pds_variant = {s.pds_variant!r}; choose one of {sampling.PDS_VARIANTS}.')
  if not s.speed_up > 0 or int(config.model.num_scales / s.speed_up) < 1:
    raise ValueError(f'config.sampling.speed_up = {s.speed_up} must be > 0 and <= model.num_scales '
                     f'({config.model.num_scales}).')
  if not s.snr > 0:
    raise ValueError(f'config.sampling.snr = {s.snr} must be > 0.')
  validate_eval_batch(config)


def validate_eval_batch(config) -> None:
  """Checks config.eval's device layout, batch size and number of samples; raises ValueError."""
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
  return preconditioning.load(s.freq_mask_path, s.space_mask_path, sampling.resolve_alpha(config),
                             shape=image_shape(config))


def get_score_fn(config, workdir: Optional[str], sde: sde_lib.SDE):
  """The score function of the config: exact for `gaussian_reference`, else the restored checkpoint.

  Returns (score_fn, description dict for the report).
  """
  if config.model.name == GAUSSIAN_REFERENCE:  # the exact score of the data law in the model's range
    return in_model_range(config, gaussian_reference(config)).score_fn(sde), {'model': GAUSSIAN_REFERENCE}
  from pds_jax import checkpoints
  from pds_jax.models import utils as mutils
  source = config.eval.checkpoint_path or workdir
  if not source:
    raise ValueError('--workdir must hold checkpoints/ (or set config.eval.checkpoint_path) to sample from a model.')
  state = checkpoints.restore_checkpoint(source, config)
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

  workdir: Optional[str]

  @classmethod
  def build(cls, config, workdir: Optional[str]) -> 'SamplingRun':
    validate_sampling_config(config)
    sde, eps = sde_lib.get_sde(config)
    # The score function keeps the training SDE (N = num_scales): discrete models' labels depend on it.
    score_fn, info = get_score_fn(config, workdir, sde)
    shape = (config.eval.batch_size,) + image_shape(config)
    return cls(config, sde, eps, score_fn, info, shape, workdir)

  def sampler(self, preconditioner: Preconditioner) -> sampling.SamplingFn:
    """The configured method (`sampling.get_sampling_fn`); any invalid setting fails here, before compute."""
    return sampling.get_sampling_fn(self.config, self.sde, self.shape, datasets.get_data_inverse_scaler(self.config),
                                    self.eps, preconditioner, workdir=self.workdir,
                                    **parallel_lib.sampler_devices(self.config.eval.parallel))

  def settings(self, sampler: sampling.SamplingFn) -> Dict:
    """The run's settings for run.json / report.json: the method's, the PDS masks', the model's."""
    s = self.config.sampling
    return {**sampler.settings, 'alpha': sampling.resolve_alpha(self.config), 'alpha_rule': s.alpha is None,
            'freq_mask_path': s.freq_mask_path,
            'space_mask_path': s.space_mask_path, 'batch_size': self.config.eval.batch_size,
            'seed': self.config.seed, **self.model_info}


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


def _shard_path(folder: str, round_index: int, host: int, prefix: str = 'samples') -> str:
  return os.path.join(folder, f'{prefix}_{round_index}_{host}.npz')


def _finished_rounds(folder: str, prefix: str = 'samples') -> Dict[int, str]:
  """Round index -> shard file `<prefix>_<round>_<host>.npz`, for the complete shards in `folder` (written atomically)."""
  done, head = {}, prefix + '_'
  for name in os.listdir(folder):
    parts = name[len(head):-len('.npz')].split('_') if name.startswith(head) and name.endswith('.npz') else []
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


def _wait_for_rounds(folder: str, num_rounds: int, timeout: float, prefix: str = 'samples') -> Dict[int, str]:
  """Host 0 waits until every round's shard exists (other hosts write theirs)."""
  deadline = time.monotonic() + timeout
  while True:
    done = _finished_rounds(folder, prefix)
    missing = [r for r in range(num_rounds) if r not in done]
    if not missing:
      return done
    if time.monotonic() > deadline:
      raise ValueError(f'timed out after {timeout:.0f} s waiting for rounds {missing[:10]} in {folder}.')
    time.sleep(1.)


def _as_count(nfe: float):
  """An NFE as an int when it is one (fixed-step methods), else the float mean (the adaptive ODE)."""
  return int(round(nfe)) if abs(nfe - round(nfe)) < 1e-9 else nfe


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
  sampler = run.sampler(preconditioner)
  settings = run.settings(sampler)
  _check_manifest(folder, {**settings, 'num_samples': config.eval.num_samples})
  batch = config.eval.batch_size
  num_rounds = -(-config.eval.num_samples // batch)
  host = jax.process_index()
  done = _finished_rounds(folder)
  todo = [r for r in parallel_lib.host_rounds(num_rounds) if r not in done]
  logging.info('host %d: %d of its rounds to sample (%d rounds of %d in the job)', host, len(todo), num_rounds, batch)
  from tqdm.auto import tqdm
  times = []
  for r in tqdm(todo, desc=f'rounds (host {host})', unit='round'):
    samples, nfe, seconds = draw(sampler, sampling.sample_keys(config.seed, r * batch, batch), run.score_fn, parallel)
    write_npz(_shard_path(folder, r, host), samples=np.clip(samples * 255., 0, 255).astype(np.uint8),
              samples_float=samples, nfe=np.float64(nfe))
    times.append(seconds)
  if host != 0:
    return None
  shards = _wait_for_rounds(folder, num_rounds, config.eval.wait_timeout)
  accumulator, preview, remaining, nfe_total = gaussian.MomentAccumulator(), [], config.eval.num_samples, 0.
  for r in range(num_rounds):
    with np.load(shards[r]) as f:
      samples = f['samples_float'][:remaining]
      nfe_total += float(f['nfe']) * len(samples)  # the adaptive ODE's NFE differs per round
    remaining -= len(samples)
    accumulator.add(samples)
    preview.append(samples[:max(0, 64 - sum(len(p) for p in preview))])
  nfe_mean = _as_count(nfe_total / accumulator.count)
  write_png(os.path.join(folder, 'grid.png'), titled_panels(
      [(_sample_caption(settings, nfe_mean, accumulator.count), image_grid(np.concatenate(preview)))], min_width=480))
  report = {'settings': {**settings, 'parallel': parallel, 'devices_per_host': jax.local_device_count(),
                         'hosts': jax.process_count()},
            'num_samples': accumulator.count, 'num_rounds': num_rounds,
            'nfe_per_sample': nfe_mean,
            'wall_seconds_per_round_this_run_host0': times, 'first_round_includes_compile': bool(times),
            'metrics': exact_metrics(config, accumulator)}
  write_json(os.path.join(folder, 'report.json'), report)
  return report


def _pds_label(settings: Dict) -> str:
  """'PDS alpha <α> (<variant>)' or 'no PDS', for figure titles (ASCII: the bundled font has no Greek)."""
  return f'PDS alpha {settings["alpha"]:g} ({settings["pds_variant"]})' if settings['preconditioned'] else 'no PDS'


def _sample_caption(settings: Dict, nfe: float, count: int) -> str:
  """grid.png's title lines (ASCII: the bundled font has no Greek): method, steps, NFE, init, PDS."""
  pds = _pds_label(settings)
  init = settings['init'] + (f' at sigma_T {settings["sigma_t"]:.3g}' if settings.get('sigma_t') is not None else '')
  return (f'{settings["method"]} · {settings["num_steps"]} steps · NFE {nfe:g} · {pds}\n'
          f'init {init} · {settings["sde"]} · seed {settings["seed"]} · {min(count, 64)} of {count} samples')


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
  return preconditioning.from_statistics(freq, None, sampling.resolve_alpha(config), shape=image_shape(config))


def _vanilla_config(config):
  """The config of compare's vanilla run: sampling.vanilla_speed_up in place of speed_up when set."""
  if config.sampling.vanilla_speed_up is None:
    return config
  config = ml_collections.ConfigDict(config.to_dict())
  config.sampling.speed_up = config.sampling.vanilla_speed_up
  return config


def _sample_metrics(config, samples: np.ndarray, reference) -> Dict[str, float]:
  """Exact Gaussian metrics for the reference family; else SWD, KID and FD on fixed features."""
  if config.model.name == GAUSSIAN_REFERENCE:
    return exact_metrics(config, gaussian.MomentAccumulator().add(samples))
  from pds_jax import evaluation
  metric_config = ml_collections.ConfigDict(config.to_dict())
  metric_config.eval.kid_subset_size = min(config.eval.kid_subset_size, len(samples))
  metrics = evaluation.evaluate_samples(samples, reference, metric_config)
  return {'swd_avg': metrics['swd']['avg'], 'fd_features': metrics['fd_features'], 'kid': metrics['kid']['mean']}


def _metric_line(metrics: Dict[str, float]) -> str:
  """The headline metric of a compare run: SWD ×10³ for images, the Fréchet distance for the Gaussian reference."""
  name = 'swd_avg' if 'swd_avg' in metrics else 'frechet_distance'
  return f'{name} {metrics[name]:.4g}'


def _panel_title(name: str, result: Dict) -> str:
  """Three lines naming a compare run: sampler (and PDS α), steps / NFE / wall time, headline metric."""
  s = result['settings']
  head = f'PDS (alpha {s["alpha"]:g}, {s.get("pds_variant", "official")})' if name == 'pds' else 'vanilla'
  return (f'{head}\n{s["num_steps"]} steps · NFE {result["nfe_per_sample"]:g} · '
          f'{result["wall_seconds_incl_compile"]:.1f} s\n{_metric_line(result["metrics"])}')


def compare(config: ml_collections.ConfigDict, workdir: str, eval_folder: str = 'compare') -> Dict:
  """Vanilla vs PDS from the same seeds: a side-by-side grid, both metrics and both wall times
  (each including its compilation, which costs about the same for any number of steps).

  The vanilla run uses sampling.vanilla_speed_up (None: the same steps as PDS), the PDS run
  sampling.speed_up, so `vanilla_speed_up = 1, speed_up = k` sets N steps against N / k.
  For a trained model the metrics are computed against eval.num_reference dataset images.
  """
  runs = {'vanilla': SamplingRun.build(_vanilla_config(config), workdir)}
  runs['pds'] = SamplingRun.build(config, workdir) if config.sampling.vanilla_speed_up is not None else runs['vanilla']
  preconditioned = _masks_for_compare(config)
  samplers = {'vanilla': runs['vanilla'].sampler(Preconditioner()), 'pds': runs['pds'].sampler(preconditioned)}
  folder = _output_folder(workdir, eval_folder)
  reference, held_out = None, None
  if config.model.name != GAUSSIAN_REFERENCE:
    from pds_jax import evaluation
    metric_config = ml_collections.ConfigDict(config.to_dict())
    metric_config.eval.kid_subset_size = min(config.eval.kid_subset_size, config.eval.batch_size)
    images, held_out = reference_images(config, config.eval.num_reference, config.eval.batch_size)
    reference = evaluation.image_features(images, metric_config, 'reference')
  keys = sampling.sample_keys(config.seed, 0, config.eval.batch_size)
  results, grids = {}, []
  for name, run in runs.items():
    samples, nfe, seconds = draw(samplers[name], keys, run.score_fn)
    write_npz(os.path.join(folder, f'samples_{name}.npz'), samples=np.clip(samples * 255., 0, 255).astype(np.uint8),
              samples_float=samples)
    results[name] = {'settings': run.settings(samplers[name]), 'nfe_per_sample': nfe,
                     'wall_seconds_incl_compile': seconds,
                     'metrics': _sample_metrics(config, np.clip(samples, 0., 1.), reference)}
    grids.append((_panel_title(name, results[name]), image_grid(samples[:36], nrow=6)))
    print(f'{name:8s} steps={results[name]["settings"]["num_steps"]:5d} nfe={nfe:5g} '
          f'wall={seconds:7.2f}s ' + ' '.join(f'{k}={v:.4g}' for k, v in results[name]['metrics'].items()))
  if config.model.name == GAUSSIAN_REFERENCE:
    reference_model = gaussian_reference(config)
    held_out = np.asarray(reference_model.sample(jax.random.PRNGKey(config.seed + 2), config.eval.batch_size))
    floor = gaussian.metrics(held_out, reference_model)
  else:  # the same metrics of as many data images that are not in the reference set
    floor = _sample_metrics(config, held_out, reference)
  results['noise_floor'] = floor
  grids.append((f'data (not in the reference set)\n{_metric_line(floor)}', image_grid(held_out[:36], nrow=6)))
  write_png(os.path.join(folder, 'vanilla_vs_pds.png'), titled_panels(
      grids, title=f'{config.sampling.method} sampler, vanilla vs PDS from the same seeds '
                   f'({config.eval.batch_size} samples each; 36 shown)'))
  print('data images (noise floor of the metrics): ' + ' '.join(f'{k}={v:.4g}' for k, v in floor.items()))
  write_json(os.path.join(folder, 'report.json'), results)
  print(f'wrote {folder}/vanilla_vs_pds.png and report.json')
  return results


# ----------------------------------------------------------------------------- likelihood, inpainting, colorization

GAUSSIAN_EVAL_SEED_OFFSET = 11  # the Gaussian reference's "eval split": exact draws from a stream of their own
BUILTIN_MASKS = ('center_square', 'left_half', 'random_50')
DEQUANTIZATIONS = ('uniform', 'none')


def gaussian_eval_images(config, indices: Sequence[int]) -> np.ndarray:
  """Images `indices` of the Gaussian reference's eval set: exact draws of the data law (data space,
  not clipped), image i from the key fold_in(PRNGKey(seed + 11), i)."""
  reference = gaussian_reference(config)
  base = jax.random.PRNGKey(config.seed + GAUSSIAN_EVAL_SEED_OFFSET)
  keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(indices, jnp.uint32))
  return np.asarray(jax.vmap(lambda key: reference.sample(key, 1)[0])(keys), np.float32)


class _Images:
  """The images a mode reads: image i of a job = image i % len of the source (float32 in [0, 1])."""

  def __init__(self, config, split: str = 'eval', input_dir: Optional[str] = None):
    self.config, self.gaussian = config, config.model.name == GAUSSIAN_REFERENCE and not input_dir
    if input_dir:
      files = datasets.image_files(os.path.expanduser(input_dir), '--input_dir')
      self.source = datasets.FolderSource(files, config.data.image_size, input_dir)
      self.name = os.path.abspath(input_dir)
    elif self.gaussian:
      self.source, self.name = None, f'{GAUSSIAN_REFERENCE} exact draws (seed {config.seed} + {GAUSSIAN_EVAL_SEED_OFFSET})'
    else:
      train, evaluation_split = datasets.get_sources(config)
      self.source = {'train': train, 'eval': evaluation_split}[split]
      self.name = self.source.name
      if not len(self.source):
        raise ValueError(f'{self.name}: the {split} split holds no images.')

  @property
  def count(self) -> Optional[int]:
    """The number of distinct images (None: unlimited exact draws)."""
    return None if self.source is None else len(self.source)

  def read(self, indices: np.ndarray) -> np.ndarray:
    indices = np.asarray(indices)
    if self.gaussian:
      return gaussian_eval_images(self.config, indices)
    images = self.source.read(indices % len(self.source))[0]
    return datasets.to_channels(images, self.config.data.num_channels).astype(np.float32)


def _round_indices(r: int, batch: int, total: int) -> Tuple[np.ndarray, int]:
  """Global image indices of round r, padded to the batch with the last image, and how many are real."""
  idx = np.arange(r * batch, (r + 1) * batch)
  return np.minimum(idx, total - 1), int(min(batch, total - r * batch))


def likelihood(config: ml_collections.ConfigDict, workdir: str, eval_folder: str = 'likelihood') -> Optional[Dict]:
  """score_sde's `eval.enable_bpd`: bits/dim of eval.num_samples images, resumably, on all devices and hosts.

  Images come from the split eval.bpd_dataset ('test' = the eval split, or 'train') of config.data
  (repeated when num_samples exceeds it), or, for the Gaussian reference, exact draws of its data
  law. 8-bit images are uniformly dequantized (config.likelihood.dequantization). Image i uses the
  key fold_in(PRNGKey(seed), i), split into its Hutchinson noise and its dequantization noise.
  Round r writes workdir/<eval_folder>/bpd_<r>_<host>.npz (per-image `bpd`, `image_index`, the
  round's mean `nfe`; for the Gaussian reference also `bpd_exact`, the exact −log2 p(x)/D + offset
  of the data law, and `bpd_exact_eps`, that of its marginal at eps, which the ODE integrates from).
  Host 0 then writes report.json: `bpd` (mean), `bpd_std`, `bpd_sem`, `nfe`, the settings, and for
  the Gaussian reference `bpd_exact` and the error of the mean.
  """
  from pds_jax import likelihood as likelihood_lib
  validate_eval_batch(config)
  lk = config.likelihood
  dequantization = lk.dequantization or ('none' if config.model.name == GAUSSIAN_REFERENCE else 'uniform')
  if dequantization not in DEQUANTIZATIONS:
    raise ValueError(f'config.likelihood.dequantization = {dequantization!r}; choose one of {DEQUANTIZATIONS}.')
  if config.eval.bpd_dataset.lower() not in ('test', 'train'):
    raise ValueError(f"config.eval.bpd_dataset = {config.eval.bpd_dataset!r}; choose 'test' (the eval split) or 'train'.")
  split = 'eval' if config.eval.bpd_dataset.lower() == 'test' else 'train'
  sde, _ = sde_lib.get_sde(config)
  parallel = config.eval.parallel
  fn = likelihood_lib.get_likelihood_fn(sde, datasets.get_data_inverse_scaler(config), lk.hutchinson_type, lk.rtol,
                                        lk.atol, lk.method, lk.eps, lk.max_steps,
                                        **parallel_lib.sampler_devices(parallel))
  images = _Images(config, split)
  score_fn, info = get_score_fn(config, workdir, sde)
  folder = _output_folder(workdir, eval_folder)
  settings = {'mode': 'likelihood', 'sde': type(sde).__name__, 'hutchinson_type': lk.hutchinson_type,
              'rtol': lk.rtol, 'atol': lk.atol, 'method': lk.method, 'eps': lk.eps, 'max_steps': lk.max_steps,
              'dequantization': dequantization, 'offset': fn.offset, 'images': images.name, 'split': split,
              'batch_size': config.eval.batch_size, 'seed': config.seed, **info}
  _check_manifest(folder, {**settings, 'num_samples': config.eval.num_samples})
  scaler = datasets.get_data_scaler(config)
  exact = None
  if config.model.name == GAUSSIAN_REFERENCE:
    reference = gaussian_reference(config)
    exact = (reference, in_model_range(config, reference))
  batch, total = config.eval.batch_size, config.eval.num_samples
  num_rounds, host = -(-total // batch), jax.process_index()
  done = _finished_rounds(folder, 'bpd')
  todo = [r for r in parallel_lib.host_rounds(num_rounds) if r not in done]
  from tqdm.auto import tqdm
  bar, seen = tqdm(todo, desc=f'bits/dim (host {host})', unit='round'), []
  for r in bar:
    indices, real = _round_indices(r, batch, total)
    x = images.read(indices)
    hutchinson_keys, dequantization_keys = likelihood_lib.image_keys(sampling.sample_keys(config.seed, r * batch, batch))
    if dequantization == 'uniform':
      x = np.asarray(likelihood_lib.uniform_dequantize(jnp.asarray(x), dequantization_keys))
    bpd, _, nfe = fn(parallel_lib.place_keys(hutchinson_keys, parallel), score_fn, scaler(x))
    shard = {'bpd': np.asarray(bpd, np.float64)[:real], 'image_index': np.arange(r * batch, r * batch + real),
             'nfe': np.float64(nfe)}
    if exact is not None:
      dim = np.log(2.) * np.prod(x.shape[1:])
      shard['bpd_exact'] = (-exact[0].log_prob(x[:real]) / dim + likelihood_lib.BITS_OFFSET_8BIT)
      shard['bpd_exact_eps'] = -exact[1].log_prob(scaler(x[:real]), sde, lk.eps) / dim + fn.offset
    write_npz(_shard_path(folder, r, host, 'bpd'), **shard)
    seen.extend(shard['bpd'])
    bar.set_postfix(bpd=f'{np.mean(seen):.4f}', nfe=f'{nfe:g}')
  if host != 0:
    return None
  shards = _wait_for_rounds(folder, num_rounds, config.eval.wait_timeout, 'bpd')
  values = {k: [] for k in ('bpd', 'bpd_exact', 'bpd_exact_eps')}
  nfe_total = 0.
  for r in range(num_rounds):
    with np.load(shards[r]) as f:
      for k in values:
        if k in f:
          values[k].append(f[k])
      nfe_total += float(f['nfe']) * len(f['bpd'])
  bpd = np.concatenate(values['bpd'])
  report = {'settings': {**settings, 'parallel': parallel, 'devices_per_host': jax.local_device_count(),
                         'hosts': jax.process_count()},
            'num_images': len(bpd), 'bpd': float(bpd.mean()), 'bpd_std': float(bpd.std()),
            'bpd_sem': float(bpd.std() / np.sqrt(len(bpd))), 'nfe': _as_count(nfe_total / len(bpd))}
  if exact is not None:
    bpd_exact, bpd_exact_eps = np.concatenate(values['bpd_exact']), np.concatenate(values['bpd_exact_eps'])
    report.update(bpd_exact=float(bpd_exact.mean()), bpd_exact_eps=float(bpd_exact_eps.mean()),
                  bpd_error=float(bpd.mean() - bpd_exact.mean()),
                  bpd_error_rms_per_image=float(np.sqrt(np.mean((bpd - bpd_exact) ** 2))))
  write_json(os.path.join(folder, 'report.json'), report)
  line = f'bits/dim {report["bpd"]:.4f} ± {report["bpd_sem"]:.4f} over {len(bpd)} images, {report["nfe"]:.4g} NFE'
  if exact is not None:
    line += f'; exact {report["bpd_exact"]:.4f} (error of the mean {report["bpd_error"]:+.4f})'
  print(line)
  print(f'wrote {folder}/report.json')
  return report


def builtin_mask(name: str, shape: Tuple[int, int, int], seed: int = 0) -> np.ndarray:
  """config.inpaint.mask: 'center_square', 'left_half' or 'random_50' as a float32 (H, W, C) 0/1 mask (1 = known)."""
  h, w, c = shape
  mask = np.ones((h, w), np.float32)
  if name == 'center_square':
    mask[h // 4:h // 4 + h // 2, w // 4:w // 4 + w // 2] = 0.
  elif name == 'left_half':
    mask[:, w // 2:] = 0.
  elif name == 'random_50':
    mask = (np.random.default_rng(seed).random((h, w)) < 0.5).astype(np.float32)
  else:
    raise ValueError(f'config.inpaint.mask = {name!r}; choose one of {BUILTIN_MASKS} or pass --mask_path.')
  return np.repeat(mask[..., None], c, axis=-1)


def load_mask(path: str, shape: Tuple[int, int, int]) -> np.ndarray:
  """An inpainting mask file as a float32 (H, W, C) 0/1 array (1 = known pixel).

  `.npy`: (H, W) or (H, W, C) of 0/1 (bool, integer or float). Image files (`.png`, …): gray or
  RGB, black = missing, white = known (0/255). H, W must be config.data.image_size.
  """
  h, w, c = shape
  if not os.path.isfile(path):
    raise ValueError(f'{path}: mask file not found.')
  if path.lower().endswith('.npy'):
    try:
      mask = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
      raise ValueError(f'{path}: not a readable .npy array ({e}).') from e
  else:
    from PIL import Image, UnidentifiedImageError
    try:
      with Image.open(path) as im:
        mask = np.asarray(im.convert('L') if im.mode in ('1', 'L', 'P', 'LA', 'I', 'I;16') else im.convert('RGB'))
    except (UnidentifiedImageError, OSError, ValueError) as e:
      raise ValueError(f'{path}: not a readable image ({e}).') from e
    if mask.dtype == np.uint8 and np.all((mask == 0) | (mask == 255)):
      mask = mask // 255
  if mask.ndim == 3 and mask.shape[2] == 1:
    mask = mask[..., 0]
  if mask.ndim not in (2, 3) or mask.shape[:2] != (h, w) or (mask.ndim == 3 and mask.shape[2] != c):
    raise ValueError(f'{path}: mask of shape {mask.shape}; expected (H, W) = {(h, w)} or (H, W, C) = {(h, w, c)} '
                     '(config.data.image_size and num_channels).')
  if mask.dtype.kind not in 'biuf' or not np.all((mask == 0) | (mask == 1)):
    values = np.unique(mask)[:6] if mask.dtype.kind in 'biuf' else mask.dtype
    raise ValueError(f'{path}: mask values must be 0 (missing) or 1 (known) (or 0 / 255 in an 8-bit image); '
                     f'found {values}.')
  mask = mask.astype(np.float32)
  return np.repeat(mask[..., None], c, axis=-1) if mask.ndim == 2 else mask


def _controllable(config, workdir: str, mode: str, input_dir: Optional[str], mask_path: Optional[str],
                  eval_folder: str) -> Optional[Dict]:
  """inpaint / colorize: see `inpaint`."""
  from pds_jax import controllable_generation as cg
  validate_sampling_config(config)
  s = config.sampling
  if s.method.lower() != 'pc':
    raise ValueError(f"--mode {mode} runs score_sde's PC sampler; config.sampling.method = {s.method!r} "
                     "(set --config.sampling.method=pc).")
  shape = image_shape(config)
  if s.num_steps is not None:
    raise ValueError(f'--mode {mode} sets its steps with --speed_up k (N = num_scales / k, as PDS does); '
                     f'config.sampling.num_steps = {s.num_steps} would be ignored: unset it.')
  known_init = (config.inpaint if mode == 'inpaint' else config.colorize).known_init
  if mode == 'inpaint':
    mask = load_mask(mask_path, shape) if mask_path else builtin_mask(config.inpaint.mask, shape, config.inpaint.mask_seed)
    if mask.min() == 1:
      raise ValueError(f'the mask ({mask_path or config.inpaint.mask}) marks every pixel known: nothing to inpaint.')
    mask_name = mask_path or config.inpaint.mask
  else:
    if mask_path:
      raise ValueError('--mode colorize observes the gray level of every pixel; it takes no --mask_path.')
    if shape[2] != 3:
      raise ValueError(f'--mode colorize needs RGB images; config.data.num_channels = {shape[2]}.')
    mask = np.broadcast_to(np.array([1., 0., 0.], np.float32), shape)  # the gray channel of the colour basis
    mask_name = 'gray channel'
  images = _Images(config, 'eval', input_dir)
  total = config.eval.num_samples if images.count is None else min(config.eval.num_samples, images.count)
  devices = jax.local_device_count()
  batch = min(config.eval.batch_size, -(-total // devices) * devices)
  preconditioner = load_preconditioner(config)
  sde, eps = sde_lib.get_sde(config)
  make = cg.get_pc_inpainter if mode == 'inpaint' else cg.get_pc_colorizer
  conditional = make(sde, s.predictor.lower(), s.corrector.lower(), datasets.get_data_inverse_scaler(config), s.snr,
                     s.n_steps_each, s.probability_flow, config.training.continuous, s.noise_removal, eps,
                     preconditioner=preconditioner, pds_variant=s.pds_variant, speed_up=s.speed_up,
                     known_init=known_init, **parallel_lib.sampler_devices(config.eval.parallel))
  score_fn, info = get_score_fn(config, workdir, sde)
  folder = _output_folder(workdir, eval_folder)
  settings = {'mode': mode, 'sde': type(sde).__name__, 'predictor': s.predictor, 'corrector': s.corrector,
              'snr': s.snr, 'n_steps_each': s.n_steps_each, 'num_steps': conditional.solver.num_steps,
              'eps': conditional.solver.eps, 'speed_up': s.speed_up, 'denoise': s.noise_removal,
              'pds_variant': s.pds_variant, 'preconditioned': not preconditioner.is_identity,
              'alpha': sampling.resolve_alpha(config), 'freq_mask_path': s.freq_mask_path,
              'space_mask_path': s.space_mask_path, 'known_init': known_init, 'mask': mask_name,
              'mask_sha1': hashlib.sha1(np.ascontiguousarray(mask)).hexdigest(), 'known_fraction': float(mask.mean()),
              'images': images.name, 'batch_size': batch, 'seed': config.seed, **info}
  _check_manifest(folder, {**settings, 'num_samples': total})
  scaler, parallel = datasets.get_data_scaler(config), config.eval.parallel
  num_rounds, host = -(-total // batch), jax.process_index()
  done = _finished_rounds(folder)
  todo = [r for r in parallel_lib.host_rounds(num_rounds) if r not in done]
  from tqdm.auto import tqdm
  for r in tqdm(todo, desc=f'{mode} rounds (host {host})', unit='round'):
    indices, real = _round_indices(r, batch, total)
    x = images.read(indices)
    keys = parallel_lib.place_keys(sampling.sample_keys(config.seed, r * batch, batch), parallel)
    if mode == 'inpaint':
      out, nfe = conditional(keys, score_fn, scaler(x), mask, num_chunks=s.num_chunks, progress=True)
      extra = {'mask': mask}
    else:
      gray = np.asarray(cg.to_grayscale(x))
      out, nfe = conditional(keys, score_fn, scaler(gray), num_chunks=s.num_chunks, progress=True)
      extra = {'gray': gray[:real], 'mask': mask}
    out = np.asarray(out, np.float32)[:real]
    write_npz(_shard_path(folder, r, host), samples=np.clip(out * 255., 0, 255).astype(np.uint8), samples_float=out,
              observed=x[:real], nfe=np.float64(nfe), **extra)
  if host != 0:
    return None
  return _controllable_report(config, mode, folder, _wait_for_rounds(folder, num_rounds, config.eval.wait_timeout),
                              num_rounds, settings, exact=images.gaussian)


def _controllable_report(config, mode: str, folder: str, shards: Dict[int, str], num_rounds: int,
                         settings: Dict, exact: bool) -> Dict:
  """report.json and grid.png of an inpaint / colorize folder, streaming over its shards; `exact`: the
  images are exact draws of the Gaussian reference, so the exact conditional error is reported."""
  from pds_jax import controllable_generation as cg
  reference = gaussian_reference(config) if exact else None
  sums = {'count': 0, 'nfe': 0., 'known_abs_error': 0., 'unknown_sq_error': 0., 'unknown_count': 0.,
          'exact_sq_error': 0., 'exact_gap': 0.}
  preview, trace = [], None
  for r in range(num_rounds):
    with np.load(shards[r]) as f:
      out, x, mask = f['samples_float'], f['observed'], f['mask']
      n = len(out)
      observed_view = cg.to_grayscale(x) if mode == 'colorize' else x
      sums['nfe'] += float(f['nfe']) * n
    if mode == 'inpaint':
      known_error = np.abs((out - x) * mask).max()
      unknown = np.broadcast_to(mask == 0, out.shape)
    else:
      known_error = np.abs(out.mean(-1) - x.mean(-1)).max()
      unknown = np.ones(out.shape, bool)
    sums['known_abs_error'] = max(sums['known_abs_error'], float(known_error))
    sums['unknown_sq_error'] += float(np.sum(((out - x) * unknown) ** 2))
    sums['unknown_count'] += float(unknown.sum())
    sums['count'] += n
    if exact:
      if mode == 'inpaint':
        conditional = reference.condition_on_pixels(x, mask)
      else:
        conditional = gaussian.ColourGaussianReference.plain(reference).condition_on_channels(x, cg.COLOR_MATRIX, [0])
      trace = conditional.trace
      sums['exact_sq_error'] += float(np.sum(conditional.squared_errors(out)))
      sums['exact_gap'] += conditional.ignore_ratio() * trace * n
    if sum(len(p[0]) for p in preview) < 8:
      k = 8 - sum(len(p[0]) for p in preview)
      preview.append((out[:k], x[:k], np.asarray(observed_view)[:k], np.broadcast_to(mask, out.shape)[:k]))
  out, x, observed_view, mask = (np.concatenate(p) for p in zip(*preview))
  if mode == 'inpaint':
    columns = [('input', x * mask + 0.5 * (1. - mask)), ('mask', mask), ('result', out), ('original', x)]
  else:
    columns = [('grayscale', observed_view), ('result', out), ('original', x)]
  count = sums['count']
  caption = (f'{mode} · {settings["num_steps"]} steps · NFE {_as_count(sums["nfe"] / count):g} · {_pds_label(settings)}\n'
             f'known region at T: {settings["known_init"]} · mask: {settings["mask"]} · {len(out)} of {count} images')
  write_png(os.path.join(folder, 'grid.png'), titled_panels([(caption, titled_grid(columns))]))
  report = {'settings': {**settings, 'parallel': config.eval.parallel, 'devices_per_host': jax.local_device_count(),
                         'hosts': jax.process_count()},
            'num_images': count, 'nfe_per_sample': _as_count(sums['nfe'] / count),
            'known_max_abs_error': sums['known_abs_error'],
            'unknown_mse_vs_original': sums['unknown_sq_error'] / max(sums['unknown_count'], 1.)}
  if exact:
    report['exact_conditional'] = {
        'error_ratio': sums['exact_sq_error'] / count / trace,
        'ignore_observation_ratio': sums['exact_gap'] / count / trace,
        'trace_conditional_covariance': trace,
        'what': 'mean_i |x_U,i - mu_c,i|^2 / tr(Sigma_c) over the unknown coordinates (1 for exact conditional '
                'draws); ignore_observation_ratio: the same for exact draws that ignore the observation'}
  write_json(os.path.join(folder, 'report.json'), report)
  line = f'{mode}: {count} images, {report["nfe_per_sample"]} NFE, known pixels max |error| {sums["known_abs_error"]:.2g}'
  if exact:
    line += (f', exact conditional error ratio {report["exact_conditional"]["error_ratio"]:.4f} (1 = exact; '
             f'ignoring the observation: {report["exact_conditional"]["ignore_observation_ratio"]:.3f})')
  print(line)
  print(f'wrote {folder}/grid.png and report.json')
  return report


def inpaint(config: ml_collections.ConfigDict, workdir: str, input_dir: Optional[str] = None,
            mask_path: Optional[str] = None, eval_folder: str = 'inpaint') -> Optional[Dict]:
  """score_sde's inpainting (`controllable_generation.get_pc_inpainter`) with PDS, resumably, on all devices.

  Images: the png/jpg files of `input_dir` (recursively, centre-cropped and resized like 'folder'
  data), else config.data's eval split, else (Gaussian reference) exact draws of its data law; the
  first eval.num_samples of them. Mask: `mask_path` (.npy or an image, (H, W) or (H, W, C), 1 =
  known) or config.inpaint.mask. The sampler is config.sampling's PC method with the PDS masks
  when set (identity otherwise), speed_up and pds_variant; config.inpaint.known_init chooses the
  known region at T. Round r writes workdir/<eval_folder>/samples_<r>_<host>.npz (`samples` uint8,
  `samples_float`, `observed`: the input images in [0, 1], `mask`, `nfe`); host 0 writes grid.png
  (columns input | mask | result | original) and report.json (NFE, settings, the known pixels'
  largest error, the unknown pixels' MSE to the originals and, for the Gaussian reference, the
  exact conditional error ratio).
  """
  return _controllable(config, workdir, 'inpaint', input_dir, mask_path, eval_folder)


def colorize(config: ml_collections.ConfigDict, workdir: str, input_dir: Optional[str] = None,
             eval_folder: str = 'colorize', mask_path: Optional[str] = None) -> Optional[Dict]:
  """score_sde's colorization (`get_pc_colorizer`) with PDS: like `inpaint`, observing each image's gray level.

  The shards also hold `gray` (the gray-scale input, R = G = B); grid.png has the columns
  grayscale | result | original; report.json's exact ratio is over the two colour channels of
  score_sde's orthonormal colour basis. A mask is refused.
  """
  return _controllable(config, workdir, 'colorize', input_dir, mask_path, eval_folder)


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


def stats(config: ml_collections.ConfigDict, workdir: str, eval_folder: str = 'stats') -> Dict:
  """PDS mask statistics of config.data's dataset (official `.npy` format) and their pictures.

  Streams over config.stats.split (all images, or a seeded subset of config.stats.num_images) and
  writes workdir/<eval_folder>/freq_<dataset>_<size>.npy, space_<...>.npy and two PNGs; pass the
  .npy files to --freq_mask_path / --space_mask_path.
  """
  from pds_jax import mask_stats
  if config.model.name == GAUSSIAN_REFERENCE:
    raise ValueError('--mode stats reads images of config.data.dataset; the Gaussian reference has no image files '
                     '(its compare mode computes its statistics from exact draws).')
  folder = _output_folder(workdir, eval_folder)
  summary = mask_stats.write_mask_statistics(config, folder, num_images=config.stats.num_images,
                                             split=config.stats.split)
  print(f'{summary["num_images"]} images -> {summary["freq_path"]}, {summary["space_path"]} '
        f'(mask condition number {summary["condition_number"]:.3g} at alpha {summary["alpha"]})')
  return summary


def fid_stats(config: ml_collections.ConfigDict, workdir: str, eval_folder: str = 'fid_stats') -> Dict:
  """FID Inception statistics of config.data in score_sde's format (`pds_jax.fid_stats`).

  Streams over eval.reference_split (all images, or eval.fid_stats_num_images drawn with config.seed)
  and writes workdir/<eval_folder>/<dataset>_stats.npz (pool_3, mu, sigma), score_sde's name for the
  dataset; pass it to --mode eval as --config.eval.fid_stats_path.
  """
  from pds_jax import fid_stats as fid_stats_lib
  if config.model.name == GAUSSIAN_REFERENCE:
    raise ValueError('--mode fid_stats reads images of config.data.dataset; the Gaussian reference has no image '
                     'files (its eval mode draws exact reference images).')
  variables = fid_stats_lib.inception_variables(config)  # missing or mismatching weights fail before any compute
  datasets.count_images(config, config.eval.reference_split)  # so does a missing or empty dataset
  folder = _output_folder(workdir, eval_folder)
  path = os.path.join(folder, fid_stats_lib.stats_filename(config))
  result = fid_stats_lib.compute_fid_stats(config, variables=variables)
  fid_stats_lib.write_fid_stats(path, result)
  print(f'{result.num_images} images of the {config.eval.reference_split} split -> {path} '
        f'(pool_3 {result.pool_3.shape}, mu, sigma)')
  return {'path': path, 'num_images': result.num_images}


def _load_sample_folder(folder: str) -> Tuple[np.ndarray, Dict]:
  """The uint8 samples (N, H, W, C) of a `sample` / `compare` output folder and its settings."""
  report_path = os.path.join(folder, 'report.json')
  if not os.path.isfile(report_path):
    raise ValueError(f'{folder}: no report.json; pass folders written by --mode sample.')
  with open(report_path) as f:
    report = json.load(f)
  shards = sorted(_finished_rounds(folder).items())
  if not shards:
    raise ValueError(f'{folder}: no samples_<round>_<host>.npz files.')
  samples = []
  for _, path in shards:
    with np.load(path) as f:
      samples.append(f['samples'])
  return np.concatenate(samples)[:report['num_samples']], report


def reference_images(config, count: int, held_out: int = 0) -> Tuple[np.ndarray, np.ndarray]:
  """(`count` reference images, `held_out` other ones) in [0, 1], disjoint draws of one distribution:
  exact draws for the Gaussian reference, else one seeded permutation of eval.reference_split."""
  if config.model.name == GAUSSIAN_REFERENCE:
    draws = np.clip(np.asarray(gaussian_reference(config).sample(jax.random.PRNGKey(config.seed + 3),
                                                                 count + held_out)), 0., 1.)
    return draws[:count], draws[count:]
  train, evaluation_split = datasets.get_sources(config)
  sources = {'train': [train], 'eval': [evaluation_split],
             'all': [train] if evaluation_split is train else [train, evaluation_split]}[config.eval.reference_split]
  sizes = np.cumsum([0] + [len(s) for s in sources])
  order = np.random.default_rng(config.seed).permutation(sizes[-1])
  if count + held_out > len(order):
    count = len(order) - held_out
    if count < 1:
      raise ValueError(f'the {config.eval.reference_split} split has {len(order)} images; {held_out} held out '
                       'leave none for the reference.')

  def read(indices):
    parts = [s.read(np.sort(indices[(indices >= a) & (indices < b)]) - a)[0] for s, a, b in
             zip(sources, sizes[:-1], sizes[1:]) if np.any((indices >= a) & (indices < b))]
    return datasets.to_channels(np.concatenate(parts), config.data.num_channels)

  return read(order[:count]), (read(order[count:count + held_out]) if held_out else np.zeros((0,)))


def evaluate(config: ml_collections.ConfigDict, workdir: str, sample_folders: Optional[Sequence[str]] = None,
             eval_folder: str = 'eval') -> Dict:
  """Metrics of sampled images against the data (`pds_jax.evaluation`): SWD, KID / FD on fixed
  features, FID / KID / IS with Inception weights, and the exact metrics for the Gaussian reference.

  sample_folders: folders written by --mode sample (default: workdir/<eval_folder>). Writes
  workdir/<eval_folder>/metrics.json and, for several folders, one metric-vs-steps PNG per metric
  with a line for the vanilla runs and one for the PDS runs.
  With eval.fid_stats_path (a `<dataset>_stats.npz` of --mode fid_stats or score_sde) the reference's
  Inception statistics come from that file; the reference images still give SWD and the feature metrics.
  """
  from pds_jax import evaluation
  reference_stats = None
  if config.eval.get('fid_stats_path'):
    from pds_jax import fid_stats as fid_stats_lib
    if not config.eval.inception_path:
      raise ValueError(f'config.eval.fid_stats_path = {config.eval.fid_stats_path!r} holds reference Inception '
                       'statistics for FID, which also needs the samples\' Inception features: set '
                       'config.eval.inception_path too.')
    reference_stats = fid_stats_lib.load_fid_stats(config.eval.fid_stats_path)
  sample_folders = list(sample_folders or [os.path.join(workdir, eval_folder)])
  loaded = [_load_sample_folder(folder) for folder in sample_folders]  # every input checked first
  out = _output_folder(workdir, eval_folder)
  num_reference = min(config.eval.num_reference, max(len(s) for s, _ in loaded))
  metric_config = ml_collections.ConfigDict(config.to_dict())
  sizes = [config.eval.kid_subset_size, num_reference, min(len(s) for s, _ in loaded)]
  if reference_stats is not None and reference_stats.pool_3 is not None:
    sizes.append(len(reference_stats.pool_3))  # KID-Inception's reference subsets come from the file's pool_3
  metric_config.eval.kid_subset_size = min(sizes)
  reference = evaluation.image_features(reference_images(config, num_reference)[0], metric_config, 'reference',
                                        fid_stats=reference_stats)
  results = {}
  for folder, (samples, report) in zip(sample_folders, loaded):
    metrics = evaluation.evaluate_samples(samples, reference, metric_config)
    if report.get('metrics'):
      metrics['exact_gaussian'] = report['metrics']
    if reference_stats is not None:
      metrics['fid_stats'] = {'path': reference_stats.path, 'num_images': reference_stats.num_images}
    results[folder] = {'settings': report['settings'], 'nfe_per_sample': report['nfe_per_sample'], 'metrics': metrics}
    print(f'{folder}: steps={report["settings"]["num_steps"]} swd={metrics["swd"]["avg"]:.4g} '
          f'fd_features={metrics["fd_features"]:.4g} kid={metrics["kid"]["mean"]:.4g}'
          + (f' fid={metrics["fid"]:.6g}' if 'fid' in metrics else ''))
  evaluation.write_metrics(os.path.join(out, 'metrics.json'), results)
  if len(results) > 1:
    groups = {}
    for r in results.values():
      label = 'PDS' if r['settings']['preconditioned'] else 'vanilla'
      groups.setdefault(label, ([], []))
      groups[label][0].append(r['settings']['num_steps'])
      groups[label][1].append(r['metrics'])
    runs = [(label, steps, metrics) for label, (steps, metrics) in groups.items()]
    for name in ('swd.avg', 'fd_features', 'kid') + (('fid',) if config.eval.inception_path else ()):
      evaluation.plot_metric_vs_steps(runs, name, os.path.join(out, f'{name.replace(".", "_")}_vs_steps.png'))
  print(f'wrote {out}/metrics.json')
  return results


def _noised(x0: jax.Array, sigma_t: float, seed: int) -> jax.Array:
  return x0 + sigma_t * jax.random.normal(jax.random.PRNGKey(seed), x0.shape)


def fit_init(config: ml_collections.ConfigDict, workdir: str) -> Dict:
  """Fits q_T ≈ p_T = data * N(0, σ_T² I) for init-aware sampling (config.sampling.init) and saves it.

  Chooses σ_T unless config.init_aware.sigma_t is set — with init_aware.sigma_t_rule 'principal'
  (default; `sigma_t.select_sigma_t_principal`: the smallest σ at which the closed-form q_T matches
  held-out noised images along their leading principal directions) or 'dip' (the dip-test
  unimodality onset of Fassina et al., which on images returns its lower bound) — fits the flow
  (maximum likelihood on noised data) or the closed-form spectral Gaussian on a seeded subset of
  the training images (in the model's data range), and prints the validation NLL per dimension and
  the init error (sliced Wasserstein to held-out noised data), next to N(0, σ_T² I)'s. Writes
  <init folder>/init.json plus the init's file (see `init_aware.store`). sampling.init = 'prior'
  (the default) fits `store.FIT_DEFAULT`, the closed-form spectral Gaussian.
  """
  from pds_jax.init_aware import flow_training, inits, metrics as ia_metrics, sigma_t as st, store
  s, ia = config.sampling, config.init_aware
  kind = store.FIT_DEFAULT if s.init == store.PRIOR else s.init
  if kind not in store.INITS:
    raise ValueError(f'config.sampling.init = {s.init!r}; choose one of {(store.PRIOR,) + store.INITS}.')
  if not 0 < ia.val_fraction < 1:
    raise ValueError(f'config.init_aware.val_fraction = {ia.val_fraction} must lie in (0, 1).')
  if ia.sigma_t_rule not in SIGMA_T_RULES:
    raise ValueError(f'config.init_aware.sigma_t_rule = {ia.sigma_t_rule!r}; choose one of {SIGMA_T_RULES}.')
  shape = image_shape(config)
  if config.model.name == GAUSSIAN_REFERENCE:
    images = np.asarray(gaussian_reference(config).sample(jax.random.PRNGKey(config.seed + 4), ia.num_images))
  else:
    images = np.concatenate(list(datasets.iterate_images(config, 'train', ia.num_images, seed=config.seed)))
  images = np.asarray(datasets.get_data_scaler(config)(images), np.float32)
  num_val = max(1, int(round(ia.val_fraction * len(images))))
  if len(images) - num_val < 2:
    raise ValueError(f'fit_init needs at least 3 training images; the dataset gave {len(images)}.')
  train_x0, val_x0 = images[:-num_val], images[-num_val:]
  info = {'num_train': len(train_x0), 'num_val': num_val}
  if ia.sigma_t is None and ia.sigma_t_rule == 'principal':
    sigma_t, curve = st.select_sigma_t_principal(train_x0, config.seed + 5, num_directions=ia.num_principal_directions,
                                                 tolerance=ia.sigma_t_tolerance, bounds=tuple(ia.sigma_t_bounds))
    info['sigma_t_rule'] = {'rule': 'principal', 'tolerance': ia.sigma_t_tolerance, **curve}
    excess = curve['excess'][curve['sigma'].index(sigma_t)]
    print(f'sigma_T = {sigma_t:.4g}: from there on the spectral q_T is within {ia.sigma_t_tolerance} (W1 / std, '
          f'beyond the floor; {excess:+.4f} at sigma_T) of the noised images along their '
          f'{ia.num_principal_directions} leading principal directions')
  elif ia.sigma_t is None:
    sigma_t, onsets = st.select_sigma_t(train_x0, jax.random.PRNGKey(config.seed + 5), ia.num_directions,
                                        alpha=ia.dip_alpha / ia.num_directions, bounds=tuple(ia.sigma_t_bounds))
    info['sigma_t_onsets'] = {'num_directions': len(onsets), 'median': float(np.median(onsets)),
                              'max': float(np.max(onsets))}
    print(f'sigma_T = {sigma_t:.4g} (largest unimodality onset over {len(onsets)} random directions)')
  else:
    sigma_t = float(ia.sigma_t)
  sde, _ = sde_lib.get_sde(config)
  if isinstance(sde, sde_lib.VESDE) and not sde.sigma_min < sigma_t <= sde.sigma_max:
    raise ValueError(f'sigma_T = {sigma_t} must lie in (model.sigma_min, model.sigma_max] = '
                     f'({sde.sigma_min}, {sde.sigma_max}].')
  history = None
  if kind == 'spectral_gaussian':
    init = inits.SpectralGaussianInit.from_images(train_x0, sigma_t)
  elif kind == 'gaussian':
    init = inits.IsotropicGaussianInit.create(sigma_t, shape)
  elif kind == 'empirical':
    init = inits.EmpiricalInit.create(train_x0, sigma_t)
  else:
    hparams = dict(ia[ia.flow_type].to_dict()) if ia.flow_type in ia else {}
    if ia.flow_type == 'tarflow' and hparams.get('data_scale') is None:
      hparams['data_scale'] = 2. * sigma_t
    module = flow_training.build_flow(ia.flow_type, shape, sigma_t, **hparams)
    init, history = flow_training.fit_flow(module, train_x0, sigma_t, jax.random.PRNGKey(config.seed + 6),
                                           epochs=ia.epochs, batch_size=ia.batch_size, regime=ia.regime,
                                           optimizer=flow_training.default_optimizer(ia.flow_type, ia.lr),
                                           val_data=val_x0)
  val_noised = _noised(jnp.asarray(val_x0), sigma_t, config.seed + 7)
  dim = int(np.prod(shape))
  rng = jax.random.PRNGKey(config.seed + 8)
  for name, q in ((kind, init), ('gaussian_baseline', inits.IsotropicGaussianInit.create(sigma_t, shape))):
    nll = -float(jnp.mean(jax.jit(q.log_prob)(val_noised))) / dim
    draws = q.sample(rng, num_val).reshape(num_val, -1)
    sw = float(ia_metrics.sliced_wasserstein(draws, val_noised.reshape(num_val, -1), rng))
    info[name] = {'val_nll_per_dim': nll, 'sliced_wasserstein': sw}
    print(f'{name:20s} validation NLL {nll:.4f} nats/dim   sliced W2 to held-out noised data {sw:.4g}')
  folder = store.init_folder(config, workdir)
  path = store.save_init(folder, kind, init, sigma_t, shape, info, history)
  print(f'wrote {path}')
  return {'sigma_t': sigma_t, **info}


# ----------------------------------------------------------------------------- training


def _check_train_config(config) -> None:
  t = config.training
  for name in ('log_freq', 'eval_freq', 'snapshot_freq', 'snapshot_freq_for_preemption'):
    if getattr(t, name) % t.n_jitted_steps:
      raise ValueError(f'config.training.{name} = {getattr(t, name)} must be a multiple of '
                       f'config.training.n_jitted_steps = {t.n_jitted_steps} (score_sde runs that many steps per call).')
  if t.batch_size % jax.local_device_count():
    raise ValueError(f'config.training.batch_size = {t.batch_size} is not divisible by the '
                     f'{jax.local_device_count()} local devices.')


def _cycle(dataset, batch_size: int):
  """Endless batches of exactly `batch_size` images from repeated passes over a finite dataset."""
  buffer = np.zeros((0,))
  while True:
    for batch in dataset:
      buffer = batch['image'] if not buffer.size else np.concatenate([buffer, batch['image']])
      while len(buffer) >= batch_size:
        yield {'image': buffer[:batch_size]}
        buffer = buffer[batch_size:]


def _train_batches(iterator, scaler, n_jitted: int) -> np.ndarray:
  """(devices, n_jitted, B / devices, H, W, C) scaled images for one pmapped call."""
  images = np.stack([next(iterator)['image'] for _ in range(n_jitted)])
  n = jax.local_device_count()
  images = images.reshape((n_jitted, n, images.shape[1] // n) + images.shape[2:]).swapaxes(0, 1)
  return scaler(images)


def _unrolled(step_fn: Callable) -> Callable:
  """`(carry, batches (n, ...)) -> (carry, losses (n,))`: n steps traced one after another.

  score_sde runs them as a `lax.scan`; on XLA:CPU a convolution network inside that loop runs about
  40x slower than the same steps unrolled (measured: 12.4 vs 0.30 s per NCSN++ step), so the n
  steps of one call are unrolled instead (same result, compile time grows with n).
  """
  def steps(carry, batches):
    losses = []
    for batch in batches:
      carry, loss = step_fn(carry, batch)
      losses.append(loss)
    return carry, jnp.stack(losses)

  return steps


def _seeded(config, step: int):
  """A copy of `config` whose data seed depends on `step`, so a resumed run draws fresh batches."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.seed = int(np.random.SeedSequence([config.seed, step]).generate_state(1)[0] % (2 ** 31))
  return config


class _TrainLog:
  """JSON-lines log (workdir/train_log.jsonl) plus TensorBoard when `tensorboardX` is installed.

  On resume the lines past the restored step are dropped (they belong to steps that will rerun).
  """

  def __init__(self, workdir: str, initial_step: int):
    self.path = os.path.join(workdir, 'train_log.jsonl')
    kept = []
    if os.path.exists(self.path):
      with open(self.path) as f:
        kept = [line for line in f if line.strip() and json.loads(line).get('step', 0) <= initial_step]
    atomic_write(self.path, lambda f: f.write(''.join(kept).encode()))
    try:
      from tensorboardX import SummaryWriter
      self.writer = SummaryWriter(os.path.join(workdir, 'tensorboard'))
    except ImportError:
      self.writer = None

  def write(self, step: int, **scalars) -> None:
    with open(self.path, 'a') as f:
      f.write(json.dumps({'step': step, 'time': time.time(), **scalars}) + '\n')
    if self.writer is not None:
      for k, v in scalars.items():
        self.writer.add_scalar(k, v, step)


def train(config: ml_collections.ConfigDict, workdir: str) -> Dict:
  """score_sde's training loop: resumable, pmapped, legacy checkpoints (run_lib.train).

  workdir/checkpoints/checkpoint_<ceil(step / snapshot_freq)> (all kept) and
  workdir/checkpoints-meta/checkpoint_<step // snapshot_freq_for_preemption> (the last one) are
  written atomically in score_sde's layout; a restarted run resumes from the newer of the two.
  Also writes train_log.jsonl and, when `training.snapshot_sampling`, samples/iter_<step>/sample.png.
  Returns a summary dict (steps, last losses, steps/s).
  """
  import flax.jax_utils as flax_utils
  from tqdm.auto import tqdm

  from pds_jax import checkpoints, losses
  from pds_jax.models import utils as mutils

  _check_train_config(config)
  t = config.training
  os.makedirs(workdir, exist_ok=True)
  checkpoint_dir = os.path.join(workdir, 'checkpoints')
  meta_dir = os.path.join(workdir, 'checkpoints-meta')

  rng = jax.random.PRNGKey(config.seed)
  rng, init_rng = jax.random.split(rng)
  model, init_model_state, initial_params = mutils.init_model(init_rng, config)
  state = checkpoints.State(step=jnp.zeros((), jnp.int32), params=initial_params, params_ema=initial_params,
                            model_state=init_model_state, opt_state=losses.init_adam_state(initial_params),
                            lr=jnp.asarray(config.optim.lr, jnp.float32),
                            ema_rate=jnp.asarray(config.model.ema_rate, jnp.float32), rng=rng)
  restored = [checkpoints.restore_checkpoint(d, config) for d in (meta_dir, checkpoint_dir)
              if checkpoints.list_checkpoints(d)]
  if restored:
    latest = max(restored, key=lambda s: int(s.step))
    if latest.params is None or latest.opt_state is None:
      raise ValueError(f'the newest checkpoint in {workdir} (step {int(latest.step)}) is sampling-only; '
                       'resuming training needs one with the optimizer state.')
    state = latest.replace(lr=state.lr, ema_rate=state.ema_rate)
    logging.info('resuming training at step %d', int(state.step))
  initial_step = int(state.step)
  rng = state.rng

  train_ds, eval_ds = datasets.get_dataset(_seeded(config, initial_step),
                                           uniform_dequantization=config.data.uniform_dequantization)
  train_iter, eval_iter = iter(train_ds), _cycle(eval_ds, t.batch_size)
  scaler, inverse_scaler = datasets.get_data_scaler(config), datasets.get_data_inverse_scaler(config)

  sde, sampling_eps = sde_lib.get_sde(config)
  step_kwargs = dict(reduce_mean=t.reduce_mean, continuous=t.continuous, likelihood_weighting=t.likelihood_weighting)
  train_step = losses.get_step_fn(sde, model, train=True, optimize_fn=losses.optimization_manager(config),
                                  **step_kwargs)
  eval_step = losses.get_step_fn(sde, model, train=False, **step_kwargs)
  p_train_step = jax.pmap(_unrolled(train_step), axis_name='batch', donate_argnums=1)
  p_eval_step = jax.pmap(_unrolled(eval_step), axis_name='batch')
  if t.snapshot_sampling:
    sample_shape = (min(t.batch_size, 64),) + image_shape(config)
    sampling_fn = sampling.get_sampling_fn(config, sde, sample_shape, inverse_scaler, sampling_eps)

  pstate = flax_utils.replicate(state)
  rng = jax.random.fold_in(rng, jax.process_index())
  log = _TrainLog(workdir, initial_step)
  n_jitted = t.n_jitted_steps
  num_devices = jax.local_device_count()
  summary = {'initial_step': initial_step, 'final_step': initial_step}
  start, steps_done = time.perf_counter(), 0
  bar = tqdm(range(initial_step + n_jitted, t.n_iters + 1, n_jitted), desc='train', unit='call',
             initial=0, dynamic_ncols=True)

  def save(folder, number, keep):
    saved = flax_utils.unreplicate(pstate).replace(rng=rng)
    return checkpoints.save_checkpoint(folder, jax.device_get(saved), number, keep=keep)

  for step in bar:  # `step` counts the steps done after this call, as score_sde's loop variable
    batch = _train_batches(train_iter, scaler, n_jitted)
    rng, *step_rngs = jax.random.split(rng, num_devices + 1)
    (_, pstate), ploss = p_train_step((jnp.asarray(step_rngs), pstate), batch)
    steps_done += n_jitted
    if step % t.log_freq == 0:
      loss = float(np.mean(jax.device_get(ploss)))
      if not np.isfinite(loss):
        raise FloatingPointError(f'training loss is {loss} at step {step}; lower config.optim.lr or check the data.')
      rate = steps_done / (time.perf_counter() - start)
      bar.set_postfix(step=step, loss=f'{loss:.4g}', steps_per_s=f'{rate:.2f}')
      log.write(step, training_loss=loss, steps_per_second=rate)
      summary.update(final_step=step, training_loss=loss, steps_per_second=rate)
    if step % t.snapshot_freq_for_preemption == 0 and jax.process_index() == 0:
      save(meta_dir, step // t.snapshot_freq_for_preemption, keep=1)
    if step % t.eval_freq == 0:
      eval_batch = _train_batches(eval_iter, scaler, n_jitted)
      rng, *eval_rngs = jax.random.split(rng, num_devices + 1)
      _, peval = p_eval_step((jnp.asarray(eval_rngs), pstate), eval_batch)
      eval_loss = float(np.mean(jax.device_get(peval)))
      log.write(step, eval_loss=eval_loss)
      summary['eval_loss'] = eval_loss
    if step % t.snapshot_freq == 0 or step + n_jitted > t.n_iters:
      if jax.process_index() == 0:
        path = save(checkpoint_dir, -(-step // t.snapshot_freq), keep=None)  # the last one rounds up
        logging.info('step %d: wrote %s', step, path)
      if t.snapshot_sampling:
        params = flax_utils.unreplicate(pstate)
        score_fn = mutils.get_score_fn(sde, model, params.params_ema, params.model_state, train=False,
                                       continuous=t.continuous)
        rng, sample_rng = jax.random.split(rng)
        samples, _ = sampling_fn(sample_rng, score_fn, progress=False)
        folder = os.path.join(workdir, 'samples', f'iter_{step}')
        os.makedirs(folder, exist_ok=True)
        samples = np.clip(np.asarray(samples, np.float32), 0., 1.)
        write_png(os.path.join(folder, 'sample.png'), image_grid(samples))
        write_npz(os.path.join(folder, 'sample.npz'), sample=np.round(samples * 255.).astype(np.uint8))
  bar.close()
  summary.update(final_step=initial_step + steps_done, seconds=time.perf_counter() - start)
  write_json(os.path.join(workdir, 'train_summary.json'), summary)
  return summary
