"""Tests for pds_jax.metrics.features: layout, closed-form values on synthetic images, determinism."""
import numpy as np
import pytest

from pds_jax.metrics import feature_metrics, features, swd

EPS = features.EPSILON


def _split(f, c, num_bands):
  """Splits (N, D) features into the documented groups."""
  sizes = [3 * c, 16 * c] + [4 * c] * num_bands + [c] * (num_bands - 1)
  return np.split(f, np.cumsum(sizes)[:-1], axis=1)


@pytest.mark.parametrize('shape, dim', [((32, 32, 3), 99), ((64, 64, 3), 114), ((32, 32, 1), 33), ((16, 16, 3), 84)])
def test_feature_dimension(shape, dim):
  assert features.multiscale_statistics(np.zeros((2,) + shape)).shape == (2, dim)


def test_opponent_transform_is_orthonormal_and_grey_has_no_chroma():
  np.testing.assert_allclose(features.OPPONENT @ features.OPPONENT.T, np.eye(3), atol=1e-15)
  grey = np.full((1, 4, 4, 3), 0.4)
  np.testing.assert_allclose(features.opponent_colours(grey)[..., 1:], 0., atol=1e-15)
  np.testing.assert_allclose(features.opponent_colours(grey)[..., 0], 0.4 * np.sqrt(3))


def test_constant_image_closed_form():
  value = np.array([0.2, 0.5, 0.9])
  f = features.multiscale_statistics(np.broadcast_to(value, (1, 32, 32, 3)))
  moments, layout, *rest = _split(f, 3, 3)
  o = features.OPPONENT @ value
  np.testing.assert_allclose(moments[0], np.concatenate([o, np.zeros(6)]), atol=1e-12)
  np.testing.assert_allclose(layout[0].reshape(16, 3), np.tile(o, (16, 1)), atol=1e-12)
  for band in rest[:3]:
    np.testing.assert_allclose(band[0], np.concatenate([np.full(3, np.log(EPS)), np.zeros(9)]), atol=1e-9)
  np.testing.assert_allclose(np.concatenate(rest[3:], axis=1), 0., atol=1e-9)


def test_moments_and_layout_of_random_images():
  x = np.random.default_rng(0).random((3, 32, 32, 3))
  moments, layout, *_ = _split(features.multiscale_statistics(x), 3, 3)
  lum = x.sum(-1) / np.sqrt(3)
  centred = lum - lum.mean(axis=(1, 2), keepdims=True)
  var = np.mean(centred ** 2, axis=(1, 2))
  np.testing.assert_allclose(moments[:, 0], lum.mean(axis=(1, 2)), rtol=1e-12)
  np.testing.assert_allclose(moments[:, 3], np.sqrt(var), rtol=1e-12)
  np.testing.assert_allclose(moments[:, 6], np.mean(centred ** 3, axis=(1, 2)) / (var + EPS) ** 1.5, rtol=1e-10)
  np.testing.assert_allclose(layout[:, 0], lum[:, :8, :8].mean(axis=(1, 2)), rtol=1e-12)  # top-left block, channel 0


@pytest.mark.parametrize('axis, sign', [(2, 1.), (1, -1.)])
def test_stripes_give_the_orientation_closed_form(axis, sign):
  """Stripes that vary along x only have ∂_y b = 0: (J_xx − J_yy)/tr J = +1 (along y: −1), J_xy = 0."""
  coords = np.arange(32)
  stripes = 0.5 + 0.3 * np.sin(2 * np.pi * coords * 5 / 32)
  img = np.broadcast_to(stripes[None, :] if axis == 2 else stripes[:, None], (32, 32))
  f = features.multiscale_statistics(np.repeat(img[None, :, :, None], 2, axis=0))
  band0 = _split(f, 1, 3)[2]  # finest band: energy, anisotropy, 2 J_xy / tr J, kurtosis
  assert band0[0, 1] == pytest.approx(sign, abs=1e-4)
  assert band0[0, 2] == pytest.approx(0., abs=1e-12)


def test_band_kurtosis_and_cross_scale_coherence_separate_noise_from_edges():
  """A linear band-pass of Gaussian white noise is Gaussian (mean b⁴ / (mean b²)² = 3); a step edge
  is coherent across scales, noise only through the overlap of neighbouring bands."""
  rng = np.random.default_rng(1)
  noise = 0.5 + 0.1 * rng.standard_normal((8, 64, 64, 1))
  noise_parts = _split(features.multiscale_statistics(noise), 1, 4)
  assert np.mean(noise_parts[2][:, 3]) == pytest.approx(np.log(3.), abs=0.05)
  steps = np.stack([np.broadcast_to(np.arange(64) >= p, (64, 64)) for p in rng.integers(8, 56, 8)])
  edge_parts = _split(features.multiscale_statistics(0.2 + 0.6 * steps[..., None]), 1, 4)
  for level in range(3):
    assert np.mean(edge_parts[6 + level]) > np.mean(noise_parts[6 + level]) + 0.25


def test_deterministic_and_batch_independent():
  x = np.random.default_rng(2).random((13, 32, 32, 3))
  a = features.multiscale_statistics(x)
  np.testing.assert_array_equal(a, features.multiscale_statistics(x))
  np.testing.assert_allclose(a, features.multiscale_statistics(x, batch_size=4), rtol=1e-12, atol=1e-14)


def test_noise_and_blur_move_the_features():
  """Against a clean set, noisy or blurred copies of other clean images are far beyond the noise floor."""
  rng = np.random.default_rng(3)

  def clean(n):
    k = np.fft.fftfreq(32) * 32
    amp = 1. / np.maximum(np.hypot(k[:, None], k[None, :]), 1.)
    x = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, 32, 32, 3)), axes=(1, 2)) * amp[None, :, :, None],
                             axes=(1, 2)))
    return np.clip(0.5 + 0.15 * x / x.std(), 0, 1)

  ref, other = clean(300), clean(300)
  fd = lambda a, b: feature_metrics.frechet_distance(*feature_metrics.gaussian_fit(a), *feature_metrics.gaussian_fit(b))
  z = lambda f, r: (f - r.mean(0)) / r.std(0)
  f_ref = features.multiscale_statistics(ref)
  floor = fd(z(features.multiscale_statistics(other), f_ref), z(f_ref, f_ref))
  noisy = np.clip(other + 0.05 * rng.standard_normal(other.shape), 0, 1)
  blurred = swd.pyr_up(swd.pyr_down(other))
  # floor ≈ 15 (the finite-sample bias of a 99-d FD with 300 images), noisy ≈ 75, blurred ≈ 1e4
  assert fd(z(features.multiscale_statistics(noisy), f_ref), z(f_ref, f_ref)) > 4 * floor
  assert fd(z(features.multiscale_statistics(blurred), f_ref), z(f_ref, f_ref)) > 100 * floor


def test_unsupported_sizes_are_rejected():
  with pytest.raises(ValueError, match='square'):
    features.multiscale_statistics(np.zeros((2, 32, 16, 3)))
  with pytest.raises(ValueError, match='divisible by 4'):
    features.multiscale_statistics(np.zeros((2, 18, 18, 3)))
  with pytest.raises(ValueError, match='not divisible by 2'):
    features.multiscale_statistics(np.zeros((2, 36, 36, 3)))  # 36, 18, 9 and a 4.5 low-pass
