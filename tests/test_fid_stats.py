"""Tests for pds_jax.fid_stats: score_sde's <dataset>_stats.npz files, written and read (random Inception weights)."""
import ml_collections
import numpy as np
import pytest

from pds_jax import evaluation, fid_stats
from pds_jax.metrics import inception

D = inception.POOL_FEATURES


def write_random_inception_weights(path) -> str:
  """An .npz of the FID Inception state dict with random, well-scaled weights (as test_evaluation)."""
  rng = np.random.default_rng(0)
  state_dict = {}
  for name, shape in inception.state_dict_shapes().items():
    fan_in = np.prod(shape[1:]) if name.endswith('conv.weight') or name == 'fc.weight' else 1
    scale = np.sqrt(2. / fan_in) if name.endswith('weight') and len(shape) > 1 else 0.1
    state_dict[name] = rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)
    if name.endswith('running_var') or name.endswith('bn.weight'):
      state_dict[name] = np.abs(state_dict[name]) + 0.5
  np.savez(path, **state_dict)
  return str(path)


def tiny_images(n, size=16, seed=0):
  """uint8 images: smooth random colour fields, distinct per seed."""
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(0, 1, (n, 4, 4, 3))
  x = np.repeat(np.repeat(coarse, size // 4, axis=1), size // 4, axis=2)
  return (x * 255).round().astype(np.uint8)


def _data_config(**data):
  config = ml_collections.ConfigDict({'seed': 0, 'data': {'dataset': 'npy', 'image_size': 32, 'num_channels': 3,
                                                          'path': None, 'category': None, **data}})
  return config


@pytest.mark.parametrize('data, name', [
    ({'dataset': 'CIFAR10'}, 'cifar10_stats.npz'),
    ({'dataset': 'CELEBA', 'image_size': 64}, 'celeba_stats.npz'),
    ({'dataset': 'LSUN', 'category': 'church_outdoor', 'image_size': 256}, 'lsun_church_outdoor_256_stats.npz'),
    ({'dataset': 'folder', 'path': '/data/my_images/'}, 'folder_my_images_32_stats.npz'),
    ({'dataset': 'FFHQ', 'image_size': 256}, 'ffhq_256_stats.npz'),
])
def test_file_names_follow_score_sde(data, name):
  assert fid_stats.stats_filename(_data_config(**data)) == name


def test_running_moments_match_numpy_mean_and_cov():
  rng = np.random.default_rng(1)
  rows = rng.gamma(2., 1., (23, 7)) + 100.  # a large common offset: the centred update must not cancel
  moments = fid_stats.RunningMoments(7)
  for a, b in ((0, 5), (5, 6), (6, 6), (6, 19), (19, 23)):  # uneven batches, one of a single row, one empty
    moments.add(rows[a:b])
  assert moments.count == 23
  np.testing.assert_allclose(moments.mean, rows.mean(axis=0), rtol=1e-13)
  np.testing.assert_allclose(moments.covariance(), np.cov(rows, rowvar=False), rtol=1e-10, atol=1e-12)
  with pytest.raises(ValueError, match='at least 2'):
    fid_stats.RunningMoments(3).add(np.ones((1, 3))).covariance()


def test_a_score_sde_file_with_pool_3_only_gets_mu_and_sigma(tmp_path):
  pool = np.random.default_rng(2).gamma(1., 1., (9, D)).astype(np.float32)
  np.savez(tmp_path / 'cifar10_stats.npz', pool_3=pool)
  stats = fid_stats.load_fid_stats(str(tmp_path / 'cifar10_stats.npz'))
  assert stats.num_images == 9 and stats.pool_3.dtype == np.float32
  np.testing.assert_allclose(stats.mu, pool.astype(np.float64).mean(axis=0), rtol=1e-12)
  np.testing.assert_allclose(stats.sigma, np.cov(pool.astype(np.float64), rowvar=False), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize('arrays, message', [
    (None, 'FID statistics file not found'),
    ('garbage', 'not a readable .npz file'),
    ({'features': np.zeros((4, D))}, r"holds neither pool_3 .* nor mu / sigma .*keys are \['features'\]"),
    ({'mu': np.zeros(D)}, 'holds mu but no sigma'),
    ({'pool_3': np.zeros((4, 64))}, r'pool_3 has shape \(4, 64\), .*\(N, 2048\): a feature dimension mismatch'),
    ({'mu': np.zeros(64), 'sigma': np.eye(64)}, r'mu has shape \(64,\) .*feature dimension mismatch'),
    ({'pool_3': np.full((3, D), np.nan)}, 'pool_3 holds NaN or Inf'),
    ({'pool_3': np.zeros((1, D))}, 'FID needs at least 2'),
])
def test_bad_files_are_errors_naming_the_file(tmp_path, arrays, message):
  path = tmp_path / 'x_stats.npz'
  if isinstance(arrays, dict):
    np.savez(path, **arrays)
  elif arrays == 'garbage':
    path.write_bytes(b'not a zip file at all')
  with pytest.raises(fid_stats.FidStatsError, match=message) as info:
    fid_stats.load_fid_stats(str(path))
  assert str(path) in str(info.value)


def test_fid_stats_stream_the_dataset_and_give_eval_the_same_fid(tmp_path):
  """pool_3 of the streamed batches = Inception on all images; mu / sigma = mean / cov of pool_3; the FID
  against the written file (all keys, pool_3 only, mu / sigma only) = the FID that recomputes the reference."""
  data = tiny_images(7, seed=0)
  np.save(tmp_path / 'data.npy', data)
  config = _data_config(path=str(tmp_path / 'data.npy'), image_size=16)
  config.eval = ml_collections.ConfigDict({'inception_path': write_random_inception_weights(tmp_path / 'w.npz'),
                                           'inception_batch_size': 4, 'reference_split': 'train',
                                           'fid_stats_num_images': None, 'kid_subsets': 3, 'kid_subset_size': 5,
                                           'is_splits': 2})
  stats = fid_stats.compute_fid_stats(config, progress=False)  # batches of 4 and 3 (padded to 4)
  recomputed_reference = evaluation.image_features(data, config, 'reference')  # what eval does without the file
  assert stats.pool_3.shape == (7, D) and stats.num_images == 7
  np.testing.assert_allclose(stats.pool_3, recomputed_reference.inception_pool, rtol=1e-5, atol=1e-6)
  pool = stats.pool_3.astype(np.float64)
  np.testing.assert_allclose(stats.mu, pool.mean(axis=0), rtol=1e-12, atol=1e-15)
  np.testing.assert_allclose(stats.sigma, np.cov(pool, rowvar=False), rtol=1e-9, atol=1e-12)

  path = tmp_path / 'npy_data_16_stats.npz'
  fid_stats.write_fid_stats(str(path), stats)
  with np.load(path) as f:
    assert sorted(f.files) == ['mu', 'pool_3', 'sigma'] and f['pool_3'].dtype == np.float32
  np.savez(tmp_path / 'pool_only.npz', pool_3=stats.pool_3)
  np.savez(tmp_path / 'gaussian_only.npz', mu=stats.mu, sigma=stats.sigma)

  samples = evaluation.image_features(tiny_images(6, seed=1), config, 'samples')
  recomputed = evaluation.evaluate_samples(samples, recomputed_reference, config)
  assert recomputed['fid'] > 0
  for name in ('npy_data_16_stats.npz', 'pool_only.npz', 'gaussian_only.npz'):
    loaded = fid_stats.load_fid_stats(str(tmp_path / name))
    reference = evaluation.image_features(data, config, 'reference', fid_stats=loaded)
    got = evaluation.evaluate_samples(samples, reference, config)
    assert got['fid'] == pytest.approx(recomputed['fid'], rel=1e-6), name
    assert got['swd'] == recomputed['swd'] and got['fd_features'] == recomputed['fd_features']
    assert ('kid_inception' in got) == (name != 'gaussian_only.npz'), name
