"""The data a run is measured against or conditioned on, from its config.

For `model.name = 'gaussian_reference'` the data law is an exact Gaussian (`pds_jax.gaussian`) whose
images are exact draws and whose metrics are exact; for a trained model the images come from
config.data (`pds_jax.datasets`). Every draw is seeded from config.seed, so runs are reproducible.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from pds_jax import datasets, gaussian

GAUSSIAN_REFERENCE = 'gaussian_reference'
GAUSSIAN_EVAL_SEED_OFFSET = 11  # the Gaussian reference's "eval split": exact draws from a stream of their own


def is_gaussian_reference(config) -> bool:
  """True when the config's model is the exact Gaussian reference (no checkpoint, exact score)."""
  return config.model.name == GAUSSIAN_REFERENCE


def image_shape(config) -> Tuple[int, int, int]:
  """(H, W, C) of config.data."""
  return (config.data.image_size, config.data.image_size, config.data.num_channels)


def gaussian_reference(config) -> gaussian.GaussianReference:
  """The exact Gaussian data distribution of a `gaussian_reference` config (data space, [0, 1] scale)."""
  return gaussian.GaussianReference.power_law(image_shape(config), mean=config.data.pixel_mean,
                                              pixel_std=config.data.pixel_std, exponent=config.data.spectrum_exponent)


def in_model_range(config, reference: gaussian.GaussianReference) -> gaussian.GaussianReference:
  """The Gaussian reference in the model's variable (`datasets.get_data_scaler`: x, or 2x - 1 if centered)."""
  scale, shift = (2., -1.) if config.data.centered else (1., 0.)
  return reference.affine(scale, shift)


def exact_metrics(config, accumulator: gaussian.MomentAccumulator) -> Optional[Dict[str, float]]:
  """The exact Gaussian metrics of the accumulated samples when the target is the Gaussian reference, else None."""
  if not is_gaussian_reference(config):
    return None
  return accumulator.metrics(gaussian_reference(config))


def gaussian_eval_images(config, indices: Sequence[int]) -> np.ndarray:
  """Images `indices` (N,) of the Gaussian reference's eval set as float32 (N, H, W, C): exact draws of
  the data law (data space, not clipped), image i from the key fold_in(PRNGKey(seed + 11), i)."""
  reference = gaussian_reference(config)
  base = jax.random.PRNGKey(config.seed + GAUSSIAN_EVAL_SEED_OFFSET)
  keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(indices, jnp.uint32))
  return np.asarray(jax.vmap(lambda key: reference.sample(key, 1)[0])(keys), np.float32)


class EvalImages:
  """The images a mode reads: image i of a job = image i % len of the source (float32 (N, H, W, C) in [0, 1]).

  The source is `input_dir` (png/jpg files, centre-cropped and resized like 'folder' data) when
  given, else the exact draws of the Gaussian reference, else config.data's `split` ('train' / 'eval').
  """

  def __init__(self, config, split: str = 'eval', input_dir: Optional[str] = None, empty_split_fix: str = ''):
    """`empty_split_fix`: what to tell the user when config.data's `split` holds no images."""
    self.config, self.gaussian = config, is_gaussian_reference(config) and not input_dir
    if input_dir:
      files = datasets.image_files(os.path.expanduser(input_dir), '--input_dir')
      self.source = datasets.FolderSource(files, config.data.image_size, input_dir)
      self.name = os.path.abspath(input_dir)
    elif self.gaussian:
      self.source = None
      self.name = f'{GAUSSIAN_REFERENCE} exact draws (seed {config.seed} + {GAUSSIAN_EVAL_SEED_OFFSET})'
    else:
      train, evaluation_split = datasets.get_sources(config)
      self.source = {'train': train, 'eval': evaluation_split}[split]
      self.name = os.path.normpath(self.source.name)
      if not len(self.source):
        other = len(train) if split == 'eval' else len(evaluation_split)
        why = (f' (index splits put image i in eval when i % {datasets.EVAL_EVERY} == {datasets.EVAL_EVERY - 1}, and '
               f'the data set has {other} images)' if split == 'eval' and evaluation_split is not train else '')
        raise ValueError(f'{self.name}: the {split} split holds no images{why}' + (f'; {empty_split_fix}' if
                                                                                  empty_split_fix else '.'))

  @property
  def count(self) -> Optional[int]:
    """The number of distinct images (None: unlimited exact draws)."""
    return None if self.source is None else len(self.source)

  def check(self, count: int) -> None:
    """Decodes the first `count` images of a folder of files; one error listing every unreadable file."""
    if not isinstance(self.source, datasets.FolderSource):
      return
    n, bad = min(count, len(self.source)), []
    for i in range(n):
      try:
        self.source.read(np.array([i]))
      except datasets.DatasetError as e:
        bad.append(str(e).rstrip('.'))
    if bad:
      raise datasets.DatasetError(f'{self.name}: {len(bad)} of the {n} images cannot be read: {"; ".join(bad)}.')

  def names(self, indices: np.ndarray) -> list:
    """A name for each image of `indices`: its file path relative to the folder, else source[index]."""
    indices = np.asarray(indices)
    if self.gaussian:
      return [f'exact draw {i}' for i in indices]
    if isinstance(self.source, datasets.FolderSource):
      root = os.path.commonpath([os.path.dirname(f) for f in self.source.files])
      return [os.path.relpath(self.source.files[i % len(self.source)], root) for i in indices]
    return [f'{self.name}[{i % len(self.source)}]' for i in indices]

  def read(self, indices: np.ndarray) -> np.ndarray:
    """Images `indices` (N,) as float32 (N, H, W, C)."""
    indices = np.asarray(indices)
    if self.gaussian:
      return gaussian_eval_images(self.config, indices)
    images = self.source.read(indices % len(self.source))[0]
    return datasets.to_channels(images, self.config.data.num_channels).astype(np.float32)


def reference_images(config, count: int, held_out: int = 0) -> Tuple[np.ndarray, np.ndarray]:
  """(`count` reference images, `held_out` other ones) in [0, 1], disjoint draws of one distribution:
  exact draws for the Gaussian reference, else one seeded permutation of eval.reference_split."""
  if is_gaussian_reference(config):
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


def sample_metrics(config, samples: np.ndarray, reference) -> Dict[str, float]:
  """Headline metrics of samples (N, H, W, C) in [0, 1]: the exact Gaussian metrics for the reference
  family, else SWD ×10³, the feature Fréchet distance and KID against `reference`
  (`evaluation.image_features` of the reference images)."""
  if is_gaussian_reference(config):
    return exact_metrics(config, gaussian.MomentAccumulator().add(samples))
  from pds_jax import evaluation
  metrics = evaluation.evaluate_samples(samples, reference, evaluation.with_kid_subset(config, len(samples)))
  return {'swd_avg': metrics['swd']['avg'], 'fd_features': metrics['fd_features'], 'kid': metrics['kid']['mean']}
