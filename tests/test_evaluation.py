"""Tests for pds_jax.evaluation: the metrics driver, input validation, JSON and plot outputs."""
import json
import os

import ml_collections
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from pds_jax import evaluation
from pds_jax.metrics import inception


def _config(**eval_fields):
  config = ml_collections.ConfigDict()
  config.eval = ml_collections.ConfigDict({'batch_size': 8, **eval_fields})
  return config


def _images(n, size=32, seed=0):
  """uint8 images with a natural-image-like 1/|k|² power spectrum."""
  rng = np.random.default_rng(seed)
  k = np.fft.fftfreq(size) * size
  amp = 1. / np.maximum(np.hypot(k[:, None], k[None, :]), 1.)
  x = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, size, size, 3)), axes=(1, 2)) * amp[None, :, :, None],
                           axes=(1, 2)))
  return (np.clip(0.5 + 0.15 * x / x.std(), 0, 1) * 255).round().astype(np.uint8)


CONFIG = _config(kid_subsets=10, kid_subset_size=30)


@pytest.fixture(scope='module')
def reference():
  return _images(60, seed=0)


_SHAPES = hnp.array_shapes(min_dims=4, max_dims=4, min_side=2, max_side=5)


@settings(max_examples=30, deadline=None)
@given(x=hnp.arrays(np.uint8, _SHAPES))
def test_uint8_images_map_to_float32_over_255(x):
  got = evaluation.as_unit_images(x, 'samples')
  assert got.dtype == np.float32 and got.shape == x.shape
  np.testing.assert_array_equal(got, x.astype(np.float32) / 255.)


@settings(max_examples=30, deadline=None)
@given(x=hnp.arrays(st.sampled_from([np.float16, np.float32, np.float64]), _SHAPES,
                    elements=st.floats(0., 1., width=16)))
def test_unit_float_images_pass_through_as_float32(x):
  got = evaluation.as_unit_images(x, 'samples')
  assert got.dtype == np.float32 and got.shape == x.shape
  np.testing.assert_array_equal(got, x.astype(np.float32))


def test_settings_fall_back_to_the_defaults():
  assert evaluation.metric_settings(_config()) == evaluation.MetricSettings(None, 100, 1000, 0, 10, 50)
  assert evaluation.metric_settings(_config(kid_subset_size=7, metric_seed=3)).kid_subset_size == 7


def test_identical_sets_score_zero_and_degraded_sets_do_not(reference):
  m = evaluation.evaluate_samples(reference, reference, CONFIG)
  assert set(m) == {'num_samples', 'num_reference', 'image_shape', 'settings', 'swd', 'fd_features', 'kid'}
  assert m['swd'] == {'32': 0., '16': 0., 'avg': 0.}
  assert abs(m['fd_features']) < 1e-8
  same_law = evaluation.evaluate_samples(_images(60, seed=5), reference, CONFIG)
  noisy = np.clip(_images(60, seed=5) + np.random.default_rng(2).normal(0, 25, reference.shape), 0, 255)
  degraded = evaluation.evaluate_samples(noisy.astype(np.uint8), reference, CONFIG)
  # KID is unbiased: ~0 for another draw of the same law. (For the identical set it is −O(1/N):
  # independent subsets of one finite set share images, see test_feature_metrics.)
  assert abs(same_law['kid']['mean']) < 3 * same_law['kid']['std']
  assert abs(m['kid']['mean']) < 0.15 * degraded['kid']['mean']
  assert degraded['kid']['mean'] > 20 * same_law['kid']['std']
  assert degraded['fd_features'] > 3 * same_law['fd_features']


def test_uint8_float_and_precomputed_features_agree(reference):
  samples = _images(40, seed=3)
  want = evaluation.evaluate_samples(samples, reference, CONFIG)
  assert evaluation.evaluate_samples(samples.astype(np.float64) / 255., reference, CONFIG) == want
  cached = evaluation.image_features(reference, CONFIG, 'reference')
  assert evaluation.evaluate_samples(samples, cached, CONFIG) == want
  with pytest.raises(ValueError, match='metric_seed 0, config.eval.metric_seed is 1'):
    evaluation.evaluate_samples(samples, cached, _config(metric_seed=1, kid_subset_size=30))


@pytest.mark.parametrize('samples, match', [
    (np.zeros((40, 16, 16, 3), np.uint8), r'samples have image shape \(16, 16, 3\) but reference has \(32, 32, 3\)'),
    (np.full((40, 32, 32, 3), 1.5), r'samples: float images must lie in \[0, 1\]; got values in \[1.5, 1.5\]'),
    (np.full((40, 32, 32, 3), np.nan), r'samples: float images must lie in \[0, 1\]'),
    (np.zeros((40, 32, 32, 3), np.int32), r'samples: expected uint8 in \[0, 255\] or float in \[0, 1\]; got dtype int32'),
    (np.zeros((32, 32, 3), np.uint8), r'samples: expected images of shape \(N, H, W, C\); got shape \(32, 32, 3\)'),
    (np.zeros((1, 32, 32, 3), np.uint8), r'samples: the metrics need at least 2 images'),
    (np.zeros((40, 30, 30, 3), np.uint8), r'samples: the statistics features need square images'),
    (np.zeros((40, 8, 8, 3), np.uint8), r'samples: images of size 8 are smaller than the pyramid minimum 16'),
])
def test_invalid_samples_are_named(reference, samples, match):
  with pytest.raises(ValueError, match=match):
    evaluation.evaluate_samples(samples, reference, CONFIG)


def test_invalid_reference_and_too_few_images_for_kid_are_named(reference):
  with pytest.raises(ValueError, match=r'reference: float images must lie in \[0, 1\]'):
    evaluation.evaluate_samples(reference, reference.astype(np.float32), CONFIG)
  with pytest.raises(ValueError, match=r'config\.eval\.kid_subset_size = 1000 exceeds the number of images '
                                       r'\(samples 40, reference 60\)'):
    evaluation.evaluate_samples(reference[:40], reference, _config())


def test_write_metrics_is_json_and_leaves_no_temp_file(tmp_path, reference):
  m = evaluation.evaluate_samples(reference[:40], reference, CONFIG)
  m['extra'] = {'numpy': np.float32(0.5), 'int': np.int64(3)}
  path = tmp_path / 'eval' / 'metrics.json'
  evaluation.write_metrics(str(path), m)
  loaded = json.loads(path.read_text())
  assert loaded['swd'] == m['swd'] and loaded['kid'] == m['kid'] and loaded['extra'] == {'numpy': 0.5, 'int': 3}
  assert os.listdir(path.parent) == ['metrics.json']


def test_plot_metric_vs_steps(tmp_path):
  metrics = lambda v: {'swd': {'avg': v}, 'kid': {'mean': v / 10, 'std': v / 100}}
  runs = [('vanilla', [100, 10, 1000], [metrics(5.), metrics(20.), metrics(1.)]),
          ('PDS', [10, 100], [metrics(8.), metrics(2.)])]
  for name in ('swd.avg', 'kid', 'kid.mean'):
    path = tmp_path / f'{name}.png'
    evaluation.plot_metric_vs_steps(runs, name, str(path))
    with Image.open(path) as image:
      assert image.format == 'PNG' and image.size[0] > 100
  with pytest.raises(KeyError, match=r"metric 'swd\.best': no 'best' \(available here: \['avg'\]\)"):
    evaluation.plot_metric_vs_steps(runs, 'swd.best', str(tmp_path / 'x.png'))
  with pytest.raises(ValueError, match="run 'PDS': 2 steps but 1 metrics"):
    evaluation.plot_metric_vs_steps([('PDS', [1, 2], [metrics(1.)])], 'swd.avg', str(tmp_path / 'x.png'))


def test_inception_metrics_appear_when_weights_are_configured(tmp_path, reference):
  rng = np.random.default_rng(0)
  state_dict = {}
  for name, shape in inception.state_dict_shapes().items():
    fan_in = np.prod(shape[1:]) if name.endswith('conv.weight') or name == 'fc.weight' else 1
    scale = np.sqrt(2. / fan_in) if name.endswith('weight') and len(shape) > 1 else 0.1
    state_dict[name] = (rng.standard_normal(shape) * scale).astype(np.float32)
    if name.endswith('running_var') or name.endswith('bn.weight'):
      state_dict[name] = np.abs(state_dict[name]) + 0.5
  path = tmp_path / 'fid_inception.npz'
  np.savez(path, **state_dict)
  config = _config(kid_subsets=3, kid_subset_size=5, inception_path=str(path), is_splits=2)
  samples = reference[:6]
  m = evaluation.evaluate_samples(samples, samples, config)
  assert abs(m['fid']) < 1e-6 and m['is']['mean'] >= 1.
  assert set(m['kid_inception']) == {'mean', 'std'} and np.isfinite(m['kid_inception']['mean'])
  with pytest.raises(ValueError, match=r'config\.eval\.is_splits = 7 must lie in \[1, number of samples = 6\]'):
    evaluation.evaluate_samples(samples, samples, _config(kid_subset_size=5, inception_path=str(path), is_splits=7))
  with pytest.raises(inception.InceptionWeightsError, match='pt_inception-2015-12-05-6726825d.pth'):
    evaluation.evaluate_samples(samples, samples, _config(inception_path=str(tmp_path / 'absent.pth'),
                                                         kid_subset_size=5))
