"""`--mode fid_stats`: a dataset's FID Inception statistics in score_sde's `<dataset>_stats.npz` format.

File (np.savez, no pickles), as score_sde's assets/stats/*_stats.npz plus pytorch-fid's keys:
  pool_3  float32 (N, 2048)     the pool3 features of every image (score_sde's eval reads only this
                                key and fits mu / sigma itself; it also feeds KID)
  mu      float64 (2048,)       their mean
  sigma   float64 (2048, 2048)  their unbiased covariance (np.cov, ddof 1), as pytorch-fid's --save-stats
`load_fid_stats` reads such a file, score_sde's own (pool_3 only: mu / sigma are fitted on loading)
or pytorch-fid's (mu / sigma only: FID works, KID-Inception is skipped); `--mode eval` takes it
through config.eval.fid_stats_path instead of running the Inception network on reference images.
The features come from this project's Flax port of pytorch-fid's FID Inception; score_sde's files
came from TF-GAN's graph of the same network, so features agree closely but not bit for bit.

Names (score_sde's `evaluation.load_dataset_stats`): CIFAR10 -> cifar10_stats.npz, CELEBA ->
celeba_stats.npz, LSUN -> lsun_<category>_<image_size>_stats.npz; any other dataset
<tag>_<image_size>_stats.npz with `mask_stats.dataset_tag` (e.g. folder_my_images_32_stats.npz).

Images: config.eval.reference_split ('train', 'eval', 'all'), all of them (score_sde's CIFAR-10 file
holds all 50,000 training images) or config.eval.fid_stats_num_images of them drawn with config.seed:
the same images --mode eval draws as its reference when eval.num_reference equals that number.
One pass, no flips, no dequantization, each image handled as eval handles its reference images.

Memory: the images stream in batches of config.eval.inception_batch_size (one batch and its 299²
resize at a time); mu / sigma accumulate as a running mean and scatter matrix (float64, 32 MiB).
pool_3 itself is kept whole because the file stores it: 8 KiB per image (CIFAR-10's 50,000: 410 MB;
the file is as large). Loading a pool_3-only file fits mu / sigma in chunks, without a float64 copy.
"""
from __future__ import annotations

import os
import zipfile
from typing import NamedTuple, Optional

import numpy as np

from pds_jax import datasets
from pds_jax.io_utils import atomic_write
from pds_jax.metrics import inception

DIM = inception.POOL_FEATURES
_FIT_CHUNK = 4096  # rows per float64 chunk when fitting mu / sigma to a stored pool_3


class FidStatsError(ValueError):
  """A missing, unreadable or mismatching statistics file; the message names the file."""


class FidStats(NamedTuple):
  """Inception statistics of a reference set; pool_3 is None for a mu / sigma-only file."""
  mu: np.ndarray
  sigma: np.ndarray
  pool_3: Optional[np.ndarray]
  num_images: Optional[int]
  path: Optional[str] = None


class RunningMoments:
  """Mean and unbiased covariance of feature rows added batch by batch, in float64.

  Each batch is centred on its own mean and merged with Chan, Golub & LeVeque's pairwise update,
    scatter += C_b + δ δᵀ · n n_b / (n + n_b),   mean += δ · n_b / (n + n_b),   δ = mean_b − mean,
  so no (N, D) float64 array and no cancellation of a raw second moment.
  """

  def __init__(self, dim: int):
    self.count = 0
    self.mean = np.zeros(dim)
    self.scatter = np.zeros((dim, dim))

  def add(self, rows) -> 'RunningMoments':
    rows = np.asarray(rows, np.float64)
    m = len(rows)
    if m == 0:
      return self
    batch_mean = rows.mean(axis=0)
    centred = rows - batch_mean
    delta = batch_mean - self.mean
    total = self.count + m
    self.scatter += centred.T @ centred + np.outer(delta, delta) * (self.count * m / total)
    self.mean += delta * (m / total)
    self.count = total
    return self

  def covariance(self) -> np.ndarray:
    if self.count < 2:
      raise ValueError(f'a covariance needs at least 2 feature vectors; got {self.count}.')
    sigma = self.scatter / (self.count - 1)
    return (sigma + sigma.T) / 2


def stats_filename(config) -> str:
  """score_sde's name of config.data's statistics file (module docstring)."""
  from pds_jax import mask_stats  # pylint: disable=import-outside-toplevel
  data = config.data
  if data.dataset == 'CIFAR10':
    return 'cifar10_stats.npz'
  if data.dataset == 'CELEBA':
    return 'celeba_stats.npz'
  return f'{mask_stats.dataset_tag(config)}_{data.image_size}_stats.npz'


def inception_variables(config):
  """The FID Inception's Flax variables from config.eval.inception_path; a clear error when unset or absent."""
  path = config.eval.get('inception_path')
  if not path:
    raise inception.InceptionWeightsError(f'--mode fid_stats runs the FID Inception network and needs '
                                          f'config.eval.inception_path. {inception.weights_help()}.')
  return inception.load_inception(path)


def _pool_features(batch: np.ndarray, variables, batch_size: int) -> np.ndarray:
  """pool3 (b, 2048) of b <= batch_size images; a short batch is zero-padded so one shape is compiled."""
  count = len(batch)
  if count < batch_size:
    batch = np.concatenate([batch, np.zeros((batch_size - count,) + batch.shape[1:], batch.dtype)])
  return inception.inception_outputs(batch, variables, batch_size)[0][:count]


def compute_fid_stats(config, progress: bool = True, variables=None) -> FidStats:
  """pool_3, mu and sigma of config.data's images (module docstring), streaming with a tqdm bar.

  Reads config.eval.{inception_path, inception_batch_size, reference_split, fid_stats_num_images},
  config.seed and config.data.
  """
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
  variables = inception_variables(config) if variables is None else variables
  batch_size = int(config.eval.get('inception_batch_size', 50))
  if batch_size < 1:
    raise ValueError(f'config.eval.inception_batch_size = {batch_size} must be >= 1.')
  split = config.eval.get('reference_split', 'train')
  total = datasets.count_images(config, split)
  wanted = config.eval.get('fid_stats_num_images')
  n = total if wanted is None else min(int(wanted), total)
  if n < 2:
    raise ValueError(f'FID statistics need at least 2 images; config.data.dataset {config.data.dataset!r} split '
                     f'{split!r} gives {n} (total {total}, config.eval.fid_stats_num_images {wanted}).')
  batches = datasets.iterate_images(config, split, num_images=n, batch_size=batch_size,
                                    seed=None if n == total else config.seed)
  pool_3 = np.empty((n, DIM), np.float32)
  moments = RunningMoments(DIM)
  start = 0
  with tqdm(total=n, unit='img', desc='FID statistics (Inception pool_3)', disable=not progress) as bar:
    for batch in batches:
      x = np.clip(np.asarray(batch, np.float32), 0., 1.)  # as evaluation.as_unit_images treats eval's reference
      features = _pool_features(x, variables, batch_size)
      pool_3[start:start + len(x)] = features
      moments.add(features)
      start += len(x)
      bar.update(len(x))
  if start != n:
    raise RuntimeError(f'the dataset gave {start} images, expected {n}.')
  return FidStats(mu=moments.mean, sigma=moments.covariance(), pool_3=pool_3, num_images=n)


def write_fid_stats(path: str, stats: FidStats) -> None:
  """Writes pool_3 (when present), mu and sigma to `path` atomically (uncompressed np.savez)."""
  arrays = {'mu': np.asarray(stats.mu, np.float64), 'sigma': np.asarray(stats.sigma, np.float64)}
  if stats.pool_3 is not None:
    arrays['pool_3'] = np.asarray(stats.pool_3, np.float32)
  atomic_write(path, lambda f: np.savez(f, **arrays))


def fit_moments(pool_3: np.ndarray) -> RunningMoments:
  """RunningMoments of stored features, in float64 chunks of _FIT_CHUNK rows."""
  moments = RunningMoments(pool_3.shape[1])
  for start in range(0, len(pool_3), _FIT_CHUNK):
    moments.add(pool_3[start:start + _FIT_CHUNK])
  return moments


def _array(data, key: str, path: str) -> np.ndarray:
  try:
    value = data[key]
  except ValueError as e:  # an object array needs allow_pickle, which is never given
    raise FidStatsError(f'{path}: {key} is not a plain numeric array ({e}).') from e
  if not np.issubdtype(value.dtype, np.number) or np.issubdtype(value.dtype, np.complexfloating):
    raise FidStatsError(f'{path}: {key} has dtype {value.dtype}, expected floats.')
  if not np.all(np.isfinite(value)):
    raise FidStatsError(f'{path}: {key} holds NaN or Inf.')
  return value


def load_fid_stats(path: str) -> FidStats:
  """Reads a statistics file (module docstring); every problem is a FidStatsError naming the file."""
  if not path or not os.path.isfile(path):
    raise FidStatsError(f'{path}: FID statistics file not found (config.eval.fid_stats_path); make one with '
                        f'--mode fid_stats, or use score_sde\'s assets/stats/<dataset>_stats.npz.')
  try:
    data = np.load(path)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise FidStatsError(f'{path}: not a readable .npz file ({e}).') from e
  if not isinstance(data, np.lib.npyio.NpzFile):
    raise FidStatsError(f'{path}: a single .npy array, not an .npz holding pool_3 or mu / sigma.')
  with data:
    keys = list(data.files)
    if 'pool_3' not in keys and 'mu' not in keys:
      raise FidStatsError(f'{path}: holds neither pool_3 (score_sde\'s stats files) nor mu / sigma '
                          f'(pytorch-fid\'s); its keys are {keys}.')
    if 'mu' in keys and 'sigma' not in keys:
      raise FidStatsError(f'{path}: holds mu but no sigma; its keys are {keys}.')
    pool_3 = None
    if 'pool_3' in keys:
      pool_3 = _array(data, 'pool_3', path)
      if pool_3.ndim != 2 or pool_3.shape[1] != DIM:
        raise FidStatsError(f'{path}: pool_3 has shape {pool_3.shape}, but the FID Inception\'s pool3 features '
                            f'are (N, {DIM}): a feature dimension mismatch (another network or layer?).')
      if len(pool_3) < 2:
        raise FidStatsError(f'{path}: pool_3 holds {len(pool_3)} feature vectors; FID needs at least 2.')
    if 'mu' in keys:
      mu, sigma = _array(data, 'mu', path), _array(data, 'sigma', path)
      if mu.shape != (DIM,) or sigma.shape != (DIM, DIM):
        raise FidStatsError(f'{path}: mu has shape {mu.shape} and sigma {sigma.shape}, but the FID Inception\'s '
                            f'pool3 statistics are ({DIM},) and ({DIM}, {DIM}): a feature dimension mismatch.')
      mu, sigma = mu.astype(np.float64), sigma.astype(np.float64)
    else:
      moments = fit_moments(pool_3)
      mu, sigma = moments.mean, moments.covariance()
  return FidStats(mu=mu, sigma=sigma, pool_3=pool_3, num_images=None if pool_3 is None else len(pool_3), path=path)

