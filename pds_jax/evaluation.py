"""Sample-quality metrics of generated images against reference images, for the `eval` mode.

`evaluate_samples(samples, reference, config)` returns
  swd           multi-scale sliced Wasserstein distance × 10³ per pyramid level and 'avg'
                (Karras et al. 2018; `metrics.swd`);
  fd_features   Fréchet distance and
  kid           KID {'mean', 'std'} (unbiased polynomial MMD², subsets) on the weight-free
                multi-scale statistics features (`metrics.features`), each feature z-scored with
                the reference's mean and standard deviation;
and, when config.eval.inception_path names the FID Inception weights:
  fid, kid_inception {'mean', 'std'} on the 2048-d pool3 features and
  is {'mean', 'std'}, the Inception Score of the samples (`metrics.inception`).
Identical sets give SWD = FD = 0 exactly; their KID is −O(1/N), not 0, because independent
subsets of one finite set share images (for two draws of one law it is 0 in expectation).
Feature extraction dominates: compute the reference's `image_features` once and pass them.
A reference's Inception side can come from a file instead (`image_features(..., fid_stats=...)`
with `pds_jax.fid_stats.load_fid_stats`, score_sde's `<dataset>_stats.npz`): FID then uses the
file's mu / sigma, KID-Inception its pool_3 (skipped when the file holds only mu / sigma).
The exact Gaussian metrics of `pds_jax.gaussian` stay where they are; merge their dictionary into
this one to plot them with `plot_metric_vs_steps`.

Config fields read (config.eval; the default applies when the field is absent):
  inception_path        None   FID Inception state dict (.pth or .npz); None skips FID/KID/IS
  kid_subsets           100    KID subset pairs
  kid_subset_size       1000   images per KID subset; both sets need at least this many
  metric_seed           0      seed of SWD positions/directions and KID subsets
  is_splits             10     Inception Score splits
  inception_batch_size  50     images per Inception forward pass
Images: (N, H, H, C) uint8 in [0, 255] or float in [0, 1], H ≥ 16, divisible by 4 and by the
pyramid's halvings (16, 32, 64, 128, 256 … all work).
"""
from __future__ import annotations

import io
import json
from typing import Dict, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import ml_collections
import numpy as np

from pds_jax.io_utils import atomic_write
from pds_jax.metrics import feature_metrics, features, inception, swd


class MetricSettings(NamedTuple):
  """The config.eval fields of the module docstring."""
  inception_path: Optional[str] = None
  kid_subsets: int = 100
  kid_subset_size: int = 1000
  metric_seed: int = 0
  is_splits: int = 10
  inception_batch_size: int = 50


def metric_settings(config) -> MetricSettings:
  """Reads the MetricSettings fields from config.eval, with the defaults for absent ones."""
  defaults = MetricSettings()
  return MetricSettings(**{f: config.eval.get(f, getattr(defaults, f)) for f in MetricSettings._fields})


class ImageFeatures(NamedTuple):
  """Everything the metrics need from one image set; compute a reference's once and reuse it."""
  shape: Tuple[int, int, int]
  count: int
  seed: int
  swd_descriptors: Dict[int, np.ndarray]
  statistics: np.ndarray
  inception_pool: Optional[np.ndarray]
  inception_logits: Optional[np.ndarray]
  # the FID Gaussian (mu (2048,), sigma (2048, 2048)) of a reference whose Inception features come
  # from a statistics file; None: fit to inception_pool
  inception_gaussian: Optional[Tuple[np.ndarray, np.ndarray]] = None


def as_unit_images(images, name: str) -> np.ndarray:
  """images (N, H, W, C) uint8 or float in [0, 1] -> float32 in [0, 1]; errors name the argument."""
  x = np.asarray(images)
  if x.ndim != 4:
    raise ValueError(f'{name}: expected images of shape (N, H, W, C); got shape {x.shape}.')
  if len(x) < 2:
    raise ValueError(f'{name}: the metrics need at least 2 images; got {len(x)}.')
  if x.dtype == np.uint8:
    return x.astype(np.float32) / 255.
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f'{name}: expected uint8 in [0, 255] or float in [0, 1]; got dtype {x.dtype}.')
  low, high = float(np.min(x)), float(np.max(x))
  if not (np.isfinite(low) and np.isfinite(high)) or low < -1e-6 or high > 1 + 1e-6:
    raise ValueError(f'{name}: float images must lie in [0, 1]; got values in [{low}, {high}] '
                     f'(apply the inverse data scaler and np.clip(x, 0, 1), or pass uint8).')
  return np.clip(x, 0., 1.).astype(np.float32)


def _validated_images(images, name: str) -> np.ndarray:
  """as_unit_images plus the size rules of the SWD pyramid and the statistics features."""
  x = as_unit_images(images, name)
  try:
    features.check_image_size(x.shape)
    swd.pyramid_resolutions(x.shape[1], swd.MIN_RESOLUTION)
  except ValueError as e:
    raise ValueError(f'{name}: {e}') from e
  return x


def _compute_features(x: np.ndarray, settings: MetricSettings) -> ImageFeatures:
  pool = logits = None
  if settings.inception_path:
    pool, logits = inception.inception_outputs(x, inception.load_inception(settings.inception_path),
                                               settings.inception_batch_size)
  return ImageFeatures(shape=tuple(x.shape[1:]), count=len(x), seed=settings.metric_seed,
                       swd_descriptors=swd.swd_descriptors(x, settings.metric_seed),
                       statistics=features.multiscale_statistics(x), inception_pool=pool, inception_logits=logits)


def with_kid_subset(config, *sizes: int):
  """A copy of `config` whose eval.kid_subset_size is capped by `sizes` (KID's subsets cannot exceed either set)."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.eval.kid_subset_size = min(config.eval.kid_subset_size, *sizes)
  return config


def image_features(images, config, name: str = 'images', fid_stats=None) -> ImageFeatures:
  """SWD descriptors, statistics features and (when configured) Inception outputs of an image set.

  fid_stats: precomputed Inception statistics of these images' distribution (an object with
  `pool_3` (N, 2048) or None, `mu`, `sigma`: `pds_jax.fid_stats.FidStats`); the Inception network
  then does not run on `images`, which still give the weight-free features.
  """
  settings = metric_settings(config)
  x = _validated_images(images, name)
  if fid_stats is None:
    return _compute_features(x, settings)
  return _compute_features(x, settings._replace(inception_path=None))._replace(
      inception_pool=fid_stats.pool_3, inception_gaussian=(fid_stats.mu, fid_stats.sigma))


def _check_features(x: ImageFeatures, settings: MetricSettings, name: str) -> None:
  if x.seed != settings.metric_seed:
    raise ValueError(f'{name}: features computed with metric_seed {x.seed}, '
                     f'config.eval.metric_seed is {settings.metric_seed}.')
  needs_pool = name == 'samples' or x.inception_gaussian is None  # the samples' pool also gives their IS
  if settings.inception_path and x.inception_pool is None and needs_pool:
    raise ValueError(f'{name}: features computed without Inception outputs, but config.eval.inception_path '
                     f'is set; recompute them with image_features(images, config).')


def _check_pair(samples, reference, settings: MetricSettings) -> None:
  """Checks on validated images or features, before any feature is computed."""
  (n_ours, shape_ours), (n_ref, shape_ref) = ((len(x), tuple(x.shape[1:])) if isinstance(x, np.ndarray)
                                              else (x.count, x.shape) for x in (samples, reference))
  if shape_ours != shape_ref:
    raise ValueError(f'samples have image shape {shape_ours} but reference has {shape_ref}.')
  if settings.kid_subset_size > min(n_ours, n_ref):
    raise ValueError(f'config.eval.kid_subset_size = {settings.kid_subset_size} exceeds the number of images '
                     f'(samples {n_ours}, reference {n_ref}); lower it or pass more images.')
  if settings.inception_path and not 1 <= settings.is_splits <= n_ours:
    raise ValueError(f'config.eval.is_splits = {settings.is_splits} must lie in [1, number of samples = {n_ours}].')


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
  return feature_metrics.frechet_distance(*feature_metrics.gaussian_fit(a, 'samples'),
                                          *feature_metrics.gaussian_fit(b, 'reference'))


def _kid(a: np.ndarray, b: np.ndarray, settings: MetricSettings) -> Dict[str, float]:
  mean, std = feature_metrics.polynomial_mmd_averages(a, b, settings.kid_subsets, settings.kid_subset_size,
                                                      settings.metric_seed)
  return {'mean': mean, 'std': std}


def evaluate_samples(samples: Union[np.ndarray, ImageFeatures], reference: Union[np.ndarray, ImageFeatures],
                     config) -> Dict:
  """All metrics of the module docstring, as a JSON-ready dictionary.

  samples, reference: images (N, H, W, C) uint8 or float in [0, 1], or their `image_features`.
  """
  settings = metric_settings(config)
  if settings.inception_path:
    inception.load_inception(settings.inception_path)  # missing or mismatching weights fail first
  inputs = {}
  for name, x in (('samples', samples), ('reference', reference)):
    if isinstance(x, ImageFeatures):
      _check_features(x, settings, name)
      inputs[name] = x
    else:
      inputs[name] = _validated_images(x, name)
  _check_pair(inputs['samples'], inputs['reference'], settings)
  ours, ref = (x if isinstance(x, ImageFeatures) else _compute_features(x, settings) for x in inputs.values())
  centre = ref.statistics.mean(axis=0)
  scale = ref.statistics.std(axis=0)
  scale = np.where(scale > 0, scale, 1.)
  z_ours, z_ref = (ours.statistics - centre) / scale, (ref.statistics - centre) / scale
  metrics = {'num_samples': ours.count, 'num_reference': ref.count, 'image_shape': list(ours.shape),
             'settings': settings._asdict(),
             'swd': swd.sliced_wasserstein_distance(ours.swd_descriptors, ref.swd_descriptors, settings.metric_seed),
             'fd_features': _frechet(z_ours, z_ref),
             'kid': _kid(z_ours, z_ref, settings)}
  if settings.inception_path:
    is_mean, is_std = feature_metrics.inception_score(ours.inception_logits, settings.is_splits)
    ref_gaussian = (ref.inception_gaussian if ref.inception_gaussian is not None
                    else feature_metrics.gaussian_fit(ref.inception_pool, 'reference'))
    metrics['fid'] = feature_metrics.frechet_distance_to_features(ours.inception_pool, *ref_gaussian, name='samples')
    if ref.inception_pool is not None:  # a statistics file of mu / sigma only has no features for KID
      metrics['kid_inception'] = _kid(ours.inception_pool, ref.inception_pool, settings)
    metrics['is'] = {'mean': is_mean, 'std': is_std}
  return metrics


def write_metrics(path: str, metrics: Mapping) -> None:
  """Writes the metrics dictionary as indented, key-sorted JSON, atomically."""
  text = json.dumps(metrics, indent=2, sort_keys=True, default=lambda v: v.item() if hasattr(v, 'item') else str(v))
  atomic_write(path, lambda f: f.write(text.encode()))


def metric_value(metrics: Mapping, metric_name: str):
  """The entry at a dotted path, e.g. 'swd.avg', 'kid.mean', 'fid'."""
  node = metrics
  for key in metric_name.split('.'):
    if not isinstance(node, Mapping) or key not in node:
      options = sorted(node) if isinstance(node, Mapping) else []
      raise KeyError(f'metric {metric_name!r}: no {key!r} (available here: {options}).')
    node = node[key]
  return node


def plot_metric_vs_steps(runs: Sequence[Tuple[str, Sequence[float], Sequence[Mapping]]], metric_name: str,
                         path: str, log_x: bool = True, xlabel: str = 'sampling steps',
                         reference_lines: Optional[Mapping[str, float]] = None, title: Optional[str] = None,
                         log_y: bool = False, point_labels: Optional[Sequence[Sequence[str]]] = None) -> None:
  """One line per run (label, steps, one metrics dict per step) of `metric_name` against steps, as a PNG.

  A {'mean', 'std'} entry (KID, IS) is drawn as mean ± std error bars; `reference_lines` (label ->
  value, e.g. the metric of real images) as dashed horizontal lines; `point_labels` (per run, one
  text per point, e.g. the sample folder) are written beside the points. Written atomically with
  matplotlib's Agg canvas (no display, no global pyplot state).
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=import-outside-toplevel
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

  fig = Figure(figsize=(5, 3.5), dpi=120)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  if point_labels is not None and len(point_labels) != len(runs):
    raise ValueError(f'{len(point_labels)} lists of point labels for {len(runs)} runs.')
  for j, (label, steps, run_metrics) in enumerate(runs):
    if len(steps) != len(run_metrics):
      raise ValueError(f'run {label!r}: {len(steps)} steps but {len(run_metrics)} metrics dictionaries.')
    values = [metric_value(m, metric_name) for m in run_metrics]
    order = np.argsort(steps)
    x = np.asarray(steps, np.float64)[order]
    if all(isinstance(v, Mapping) for v in values):
      y = np.array([values[i]['mean'] for i in order])
      std = np.array([values[i]['std'] for i in order])
      ax.errorbar(x, y, yerr=std, marker='o', capsize=3, label=label)
    else:
      y = np.array([float(values[i]) for i in order])
      ax.plot(x, y, marker='o', label=label)
    if point_labels is not None:
      if len(point_labels[j]) != len(steps):
        raise ValueError(f'run {label!r}: {len(steps)} points but {len(point_labels[j])} point labels.')
      for xi, yi, i in zip(x, y, order):
        ax.annotate(point_labels[j][i], (xi, yi), textcoords='offset points', xytext=(4, 4), fontsize=6)
  for i, (label, value) in enumerate((reference_lines or {}).items()):
    ax.axhline(float(value), color='0.4', linestyle=('--', ':', '-.')[i % 3], linewidth=1, label=label)
  if log_x:
    ax.set_xscale('log')
    ticks = sorted({float(x) for _, steps, _ in runs for x in steps})
    if len(ticks) <= 12:  # label the measured x values themselves, as plain numbers
      from matplotlib.ticker import NullFormatter  # pylint: disable=import-outside-toplevel
      ax.set_xticks(ticks, [f'{x:g}' for x in ticks])
      ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.08)
  if log_y:
    ax.set_yscale('log')
  if title:
    ax.set_title(title, fontsize=9)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(metric_name)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png')
  atomic_write(path, lambda f: f.write(buffer.getvalue()))
