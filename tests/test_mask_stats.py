"""Tests for pds_jax.mask_stats against closed-form statistics (cosines, a stationary Gaussian field)."""
import os

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from pds_jax import mask_stats, preconditioning
from pds_jax.gaussian import GaussianReference


def _config(path, image_size, num_channels, dataset='npy', alpha=5., seed=0):
  config = ml_collections.ConfigDict()
  config.seed = seed
  config.training = ml_collections.ConfigDict({'batch_size': 8})
  config.eval = ml_collections.ConfigDict({'batch_size': 8})
  config.sampling = ml_collections.ConfigDict({'alpha': alpha})
  config.data = ml_collections.ConfigDict(dict(dataset=dataset, image_size=image_size, num_channels=num_channels,
                                                random_flip=False, centered=False, path=path))
  return config


def _cosines(size, frequencies, m, a=0.5, b=0.4):
  """m images (m, S, S, C): channel c is a + b cos(2π k_c·n / S + 2π i / m) for image i."""
  n = np.arange(size)
  images = np.zeros((m, size, size, len(frequencies)))
  for c, (ky, kx) in enumerate(frequencies):
    theta = 2 * np.pi * (ky * n[:, None] + kx * n[None, :]) / size
    for i in range(m):
      images[i, :, :, c] = a + b * np.cos(theta + 2 * np.pi * i / m)
  return images


def test_cosines_give_the_analytic_statistics_and_official_files(tmp_path):
  size, freqs, a, b = 8, [(0, 1), (2, 3), (1, 0)], 0.5, 0.4
  path = str(tmp_path / 'cos.npy')
  np.save(path, _cosines(size, freqs, m=9, a=a, b=b).astype(np.float32))  # 9 images: all in the train split
  out = str(tmp_path / 'out')
  summary = mask_stats.write_mask_statistics(_config(path, size, 3), out, progress=False)
  assert summary['num_images'] == 9 and summary['image_shape'] == (size, size, 3)
  assert summary['freq_path'] == os.path.join(out, 'freq_npy_cos_8.npy')
  assert summary['space_path'] == os.path.join(out, 'space_npy_cos_8.npy')
  # |F x|² of a + b cos(θ_k + φ): (a S²)² at k = 0, (b S² / 2)² at ±k, 0 elsewhere, whatever φ.
  expected = np.zeros((size, size, 3))
  for c, (ky, kx) in enumerate(freqs):
    expected[0, 0, c] = np.log1p((a * size ** 2) ** 2)
    expected[ky, kx, c] = expected[-ky, -kx, c] = np.log1p((b * size ** 2 / 2) ** 2)
  freq_chw = np.load(summary['freq_path'])
  space_chw = np.load(summary['space_path'])
  assert freq_chw.shape == space_chw.shape == (3, size, size) and freq_chw.dtype == np.float32
  np.testing.assert_allclose(np.transpose(freq_chw, (1, 2, 0)), expected, rtol=1e-5, atol=1e-5)
  # mean over 9 evenly spaced phases: mean cos = 0, mean cos² = 1/2.
  np.testing.assert_allclose(space_chw, a ** 2 + b ** 2 / 2, rtol=1e-5)
  precond = preconditioning.load(summary['freq_path'], summary['space_path'], alpha=5., shape=(size, size, 3))
  np.testing.assert_allclose(np.asarray(precond.freq_mask), 5. / (expected / expected.max() + 4.), rtol=1e-4)
  np.testing.assert_allclose(summary['condition_number'], 5. / 4., rtol=1e-4)  # the space mask is constant
  assert sorted(os.listdir(out)) == ['freq_npy_cos_8.npy', 'freq_npy_cos_8.png', 'space_npy_cos_8.npy',
                                     'space_npy_cos_8.png']  # no temporary files left
  for png in (summary['freq_png'], summary['space_png']):
    with Image.open(png) as im:
      assert im.format == 'PNG' and im.size[0] > 3 * im.size[1] // 2  # three panels side by side


def test_stationary_gaussian_field_matches_its_power_spectrum(tmp_path):
  size, n = 8, 4000
  reference = GaussianReference.power_law((size, size, 1), mean=0.5, pixel_std=0.08)
  images = np.asarray(reference.sample(jax.random.PRNGKey(0), n), np.float64)
  assert 0. <= images.min() and images.max() <= 1.
  path = str(tmp_path / 'field.npy')
  np.save(path, images)
  summary = mask_stats.write_mask_statistics(_config(path, size, 1), str(tmp_path), num_images=3000,
                                             progress=False)
  assert summary['num_images'] == 3000
  freq = np.load(summary['freq_path'])[0]
  # E|F x|²_k = S² λ_k for k ≠ 0 (λ: variances of the unitary DFT), plus (S² μ)² at k = 0.
  lam = np.asarray(reference.spectrum)[..., 0]
  power = size ** 2 * lam
  power[0, 0] += (size ** 2 * 0.5) ** 2
  # each |F x|²_k is exponential (χ² with 1 or 2 degrees of freedom): relative error ≲ sqrt(2 / 3000)
  np.testing.assert_allclose(np.expm1(freq), power, rtol=0.12)
  space = np.load(summary['space_path'])[0]
  np.testing.assert_allclose(space, 0.5 ** 2 + 0.08 ** 2, rtol=0.03)  # per-pixel std of the mean ≈ 0.6 %


def test_random_subset_is_seeded_and_progress_bar_runs(tmp_path, capsys):
  rs = np.random.RandomState(0)
  path = str(tmp_path / 'noise.npy')
  np.save(path, rs.randint(0, 256, (60, 4, 4, 3)).astype(np.uint8))
  runs = [mask_stats.write_mask_statistics(_config(path, 4, 3, seed=s), str(tmp_path / f'o{i}'), num_images=10)
          for i, s in enumerate((1, 1, 2))]
  assert 'mask statistics' in capsys.readouterr().err
  stats = [np.load(r['freq_path']) for r in runs]
  np.testing.assert_array_equal(stats[0], stats[1])
  assert not np.array_equal(stats[0], stats[2])
  full = mask_stats.write_mask_statistics(_config(path, 4, 3), str(tmp_path / 'all'), progress=False, split='all')
  assert full['num_images'] == 60
  direct = preconditioning.compute_statistics(np.load(path) / 255.)
  np.testing.assert_allclose(np.load(full['freq_path']), np.transpose(direct[0], (2, 0, 1)), rtol=1e-6)


def test_tags_name_the_dataset():
  config = _config('/data/my images/', 64, 3, dataset='folder')
  assert mask_stats.dataset_tag(config) == 'folder_my_images'
  config.data.dataset, config.data.category = 'LSUN', 'church_outdoor'
  assert mask_stats.dataset_tag(config) == 'lsun_church_outdoor'
  config.data.dataset = 'CIFAR10'
  assert mask_stats.dataset_tag(config) == 'cifar10'


def test_bundled_dataset_statistics_have_the_natural_image_spectrum(tmp_path):
  config = _config(None, 32, 3, dataset='natural_patches')
  summary = mask_stats.write_mask_statistics(config, str(tmp_path), num_images=400, progress=False)
  freq = np.load(summary['freq_path'])  # (3, 32, 32)
  assert os.path.basename(summary['freq_path']) == 'freq_natural_patches_32.npy'
  # power falls with |k|: the lowest non-zero frequencies carry more than the highest
  assert np.all(freq[:, 0, 1] > freq[:, 16, 16] + 2.) and np.all(freq[:, 0, 0] == freq.max(axis=(1, 2)))
  # each mask α / (m̂ + α - 1) spans [1, α / (min m̂ + α - 1)]
  cond = np.prod([5. / (stat.min() / stat.max() + 4.) for stat in (freq, np.load(summary['space_path']))])
  np.testing.assert_allclose(summary['condition_number'], cond, rtol=1e-5)
  assert summary['alpha'] == 5. and 1.2 < cond < 5. / 4. * 5. / 4.


def test_zero_images_is_an_error(tmp_path):
  path = str(tmp_path / 'x.npy')
  np.save(path, np.zeros((3, 4, 4, 3), np.uint8))
  with pytest.raises(ValueError, match='num_images must be >= 1'):
    mask_stats.write_mask_statistics(_config(path, 4, 3), str(tmp_path), num_images=0, progress=False)
