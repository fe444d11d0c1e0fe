"""A sampling run built from a config: checks, the score function, the PDS preconditioner, the sampler.

`SamplingRun.build(config, workdir)` validates config.sampling and config.eval and restores the
model (or takes the Gaussian reference's exact score) before any sampling starts; `draw` samples one
batch from per-sample keys. The modes `sample` and `compare` of run_lib, the benchmarks and the
notebook use these, so they all sample the same way.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, Dict, Optional, Tuple

import jax
import ml_collections
import numpy as np

from pds_jax import datasets, parallel as parallel_lib, preconditioning, sampling, sde_lib
from pds_jax.samplers import methods
from pds_jax.preconditioning import Preconditioner
from pds_jax.references import (GAUSSIAN_REFERENCE, gaussian_reference, image_shape, in_model_range,
                                is_gaussian_reference)


def validate_eval_batch(config) -> None:
  """Checks config.eval's device layout, batch size and number of samples; raises ValueError naming the field."""
  if config.eval.parallel not in parallel_lib.PARALLEL_MODES:
    raise ValueError(f'config.eval.parallel = {config.eval.parallel!r}; choose one of {parallel_lib.PARALLEL_MODES}.')
  if config.eval.batch_size % jax.local_device_count():
    raise ValueError(f'config.eval.batch_size = {config.eval.batch_size} is not divisible by the '
                     f'{jax.local_device_count()} local devices.')
  if config.eval.batch_size < 1 or config.eval.num_samples < 1:
    raise ValueError(f'config.eval.batch_size ({config.eval.batch_size}) and config.eval.num_samples '
                     f'({config.eval.num_samples}) must be >= 1.')


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


def _masks(freq: Optional[np.ndarray], space: Optional[np.ndarray], shape, names) -> sampling.Masks:
  """masks(α) -> Preconditioner of PDS statistics, checked now (before any compute) with α = 5."""
  preconditioning.from_statistics(freq, space, preconditioning.ALPHA_FEW_STEPS, shape, names=names)
  return functools.partial(_masks_at, freq, space, shape, names)


def _masks_at(freq, space, shape, names, alpha: float) -> Preconditioner:
  return preconditioning.from_statistics(freq, space, alpha, shape, names=names)


def load_preconditioner(config) -> sampling.Masks:
  """The PDS masks of `config.sampling` as masks(α) -> Preconditioner (α(N) is applied once the method's
  N is known, `sampling.apply_masks`); None when no mask path is set (no PDS)."""
  s = config.sampling
  if not (s.freq_mask_path or s.space_mask_path):
    return None
  shape = image_shape(config)
  stats = [preconditioning.read_statistic(p, shape) if p else None for p in (s.freq_mask_path, s.space_mask_path)]
  return _masks(stats[0], stats[1], shape, (str(s.freq_mask_path), str(s.space_mask_path)))


def compare_preconditioner(config) -> sampling.Masks:
  """The PDS masks of `--mode compare`: the configured ones; for the Gaussian reference without mask
  files, the official statistics of 200 exact data draws (clipped to [0, 1] like images), as the
  official code uses 200 images."""
  s = config.sampling
  if s.freq_mask_path or s.space_mask_path:
    return load_preconditioner(config)
  if not is_gaussian_reference(config):
    raise ValueError('compare needs --freq_mask_path and/or --space_mask_path for a trained model.')
  data = np.asarray(gaussian_reference(config).sample(jax.random.PRNGKey(config.seed + 1), 200))
  freq, _ = preconditioning.compute_statistics(np.clip(data, 0, 1))
  return _masks(freq, None, image_shape(config), ('freq', 'space'))


def load_init(config, workdir: Optional[str], shape) -> sampling.Init:
  """(q_T, σ_T) of config.sampling.init from `store.init_folder(config, workdir)`, or None for the prior.

  init 'auto': the spectral Gaussian q_T when the folder holds one (`get_sampling_fn` uses it for
  the ODE-like solvers on VE models, `Solver.fitted_start`), else None.
  """
  kind = methods.resolve(config.sampling).init
  if kind == methods.PRIOR:
    return None
  from pds_jax.init_aware import store  # reads the fitted q_T files (and their flows)
  folder = store.init_folder(config, workdir or '.')
  if kind == methods.AUTO:
    if store.stored_kind(folder) != methods.INIT_AWARE_DEFAULT:
      return None
    kind = methods.INIT_AWARE_DEFAULT
  return store.load_init(folder, kind, tuple(shape[1:]))


def get_score_fn(config, workdir: Optional[str], sde: sde_lib.SDE) -> Tuple[Callable, Dict]:
  """The score function of the config: exact for `gaussian_reference`, else the restored checkpoint
  (config.eval.checkpoint_path, else workdir/checkpoints).

  Returns (score_fn(x (B, H, W, C), t (B,)), description dict for the report).
  """
  if is_gaussian_reference(config):  # the exact score of the data law in the model's range
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
  """Everything a sampling mode needs, built and validated before any sampling starts."""
  config: ml_collections.ConfigDict
  sde: sde_lib.SDE
  eps: float
  score_fn: Callable
  model_info: Dict
  shape: Tuple[int, ...]
  workdir: Optional[str]
  init: sampling.Init = None

  @classmethod
  def build(cls, config, workdir: Optional[str], score: Optional[Tuple[Callable, Dict]] = None) -> 'SamplingRun':
    """Validates config.sampling / config.eval, builds the SDE and the score function, loads q_T.

    The run's shape is (eval.batch_size, H, W, C). A fitted init (sampling.init) is read from
    `store.init_folder(config, workdir)` here, the one place sampling reads the workdir.

    score: (score_fn, model info) of an earlier run of the same model and SDE, to skip restoring it again.
    """
    validate_sampling_config(config)
    sde, eps = sde_lib.get_sde(config)
    shape = (config.eval.batch_size,) + image_shape(config)
    init = load_init(config, workdir, shape)
    # The score function keeps the training SDE (N = num_scales): discrete models' labels depend on it.
    score_fn, info = score or get_score_fn(config, workdir, sde)
    return cls(config, sde, eps, score_fn, info, shape, workdir, init)

  def sampler(self, masks: sampling.Masks = None) -> sampling.SamplingFn:
    """The configured method (`sampling.get_sampling_fn`) with PDS masks (`load_preconditioner`; None:
    no PDS); any invalid setting fails here, before compute."""
    return sampling.get_sampling_fn(self.config, self.sde, self.shape, datasets.get_data_inverse_scaler(self.config),
                                    self.eps, masks, init=self.init,
                                    **parallel_lib.sampler_devices(self.config.eval.parallel))

  def settings(self, sampler: sampling.SamplingFn) -> Dict:
    """The run's settings for run.json / report.json: the method's, the PDS masks', the model's."""
    s = self.config.sampling
    return {**sampler.settings, 'freq_mask_path': s.freq_mask_path,
            'space_mask_path': s.space_mask_path, 'batch_size': self.config.eval.batch_size,
            'seed': self.config.seed, **self.model_info}


def draw(sampler: Callable, keys: jax.Array, score_fn, parallel: str = 'sharding') -> Tuple[np.ndarray, float, float]:
  """One batch from per-sample keys (B, 2): (samples (B, H, W, C) as float32 numpy, nfe, wall seconds).

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
