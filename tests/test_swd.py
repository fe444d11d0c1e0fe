"""Tests for pds_jax.metrics.swd: pyramid against a direct 2-D convolution, SW against closed forms."""
import math

import numpy as np
import pytest

from pds_jax.metrics import swd

KERNEL = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.


def _mirror(i, n):
  """scipy.ndimage 'mirror' / cv2 BORDER_REFLECT_101 index."""
  return -i if i < 0 else (2 * n - 2 - i if i >= n else i)


def _convolve_mirror(img, kernel):
  """Direct 2-D correlation of an (H, W) image with a 5×5 kernel at mirrored borders."""
  h, w = img.shape
  out = np.zeros_like(img)
  for y in range(h):
    for x in range(w):
      out[y, x] = sum(kernel[dy + 2, dx + 2] * img[_mirror(y + dy, h), _mirror(x + dx, w)]
                      for dy in range(-2, 3) for dx in range(-2, 3))
  return out


def test_pyramid_matches_direct_convolution_and_reconstructs():
  img = np.random.default_rng(0).random((1, 8, 8, 1))
  down = _convolve_mirror(img[0, :, :, 0], KERNEL)[::2, ::2]
  np.testing.assert_allclose(swd.pyr_down(img)[0, :, :, 0], down, rtol=1e-12)
  stuffed = np.zeros((8, 8))
  stuffed[::2, ::2] = down
  np.testing.assert_allclose(swd.pyr_up(swd.pyr_down(img))[0, :, :, 0], _convolve_mirror(stuffed, 4 * KERNEL),
                             rtol=1e-12)
  images = np.random.default_rng(1).random((3, 32, 32, 2))
  levels = swd.laplacian_pyramid(images, 3)
  assert [lv.shape for lv in levels] == [(3, 32, 32, 2), (3, 16, 16, 2), (3, 8, 8, 2)]
  rebuilt = levels[-1]
  for level in levels[-2::-1]:
    rebuilt = swd.pyr_up(rebuilt) + level
  np.testing.assert_allclose(rebuilt, images, atol=1e-12)
  flat = swd.laplacian_pyramid(np.full((1, 16, 16, 1), 0.3, np.float32), 2)
  assert np.abs(flat[0]).max() < 1e-6 and np.allclose(flat[1], 0.3)


@pytest.mark.parametrize('size, want', [(16, [16]), (32, [32, 16]), (64, [64, 32, 16]), (48, [48, 24])])
def test_levels_go_down_to_16(size, want):
  assert swd.pyramid_resolutions(size, 16) == want


def test_too_small_or_odd_images_are_rejected():
  with pytest.raises(ValueError, match='smaller than'):
    swd.pyramid_resolutions(8, 16)
  with pytest.raises(ValueError, match='not divisible'):
    swd.pyramid_resolutions(66, 16)  # 66, 33, 16.5
  with pytest.raises(ValueError, match='square'):
    swd.swd_descriptors(np.zeros((2, 32, 16, 3)))


def test_one_dimensional_wasserstein_closed_forms():
  rng = np.random.default_rng(0)
  a = rng.standard_normal((20000, 1)).astype(np.float32)
  # A shifted copy: every projection (θ = ±1) is shifted by exactly 0.7.
  assert swd.sliced_wasserstein(a, a + 0.7, rng) == pytest.approx(0.7, rel=1e-5)
  # W₁(N(0, 1), N(0, s²)) = |1 − s| E|Z| = |1 − s| √(2/π).
  b = 2. * rng.standard_normal((30000, 1)).astype(np.float32)
  assert swd.sliced_wasserstein(a, b, rng) == pytest.approx(math.sqrt(2 / math.pi), rel=0.03)


def test_shifted_cloud_gives_the_mean_projected_shift():
  """b = a + δ: W₁ per direction is |θᵀδ|, so SW = ‖δ‖ E|θ₁| = ‖δ‖ Γ(d/2) / (√π Γ((d+1)/2))."""
  d = 20
  rng = np.random.default_rng(1)
  a = rng.standard_normal((500, d)).astype(np.float32)
  delta = rng.standard_normal(d).astype(np.float32)
  want = np.linalg.norm(delta) * math.gamma(d / 2) / (math.sqrt(math.pi) * math.gamma((d + 1) / 2))
  # 16 × 128 directions: relative Monte-Carlo error ≈ 0.75 / √2048 = 1.7 %.
  got = swd.sliced_wasserstein(a, a + delta, rng, dir_repeats=16)
  assert got == pytest.approx(want, rel=0.07)


def test_unequal_sizes_use_the_quantile_functions():
  rng = np.random.default_rng(2)
  a = rng.random((7, 1))
  b = rng.random((12, 1)) + 0.2
  # Reference: W₁ = ∫ |F_a(t) − F_b(t)| dt on a fine grid (directions in 1-D are ±1).
  t = np.linspace(-0.1, 1.4, 600001)
  cdf = lambda s: np.searchsorted(np.sort(s[:, 0]), t, side='right') / len(s)
  want = np.sum(np.abs(cdf(a) - cdf(b))) * (t[1] - t[0])
  assert swd.sliced_wasserstein(a, b, rng, dir_repeats=1, dirs_per_repeat=3) == pytest.approx(want, rel=1e-4)
  c = rng.random((12, 1))
  assert swd.sliced_wasserstein(b, c, rng, 1, 2) == pytest.approx(np.mean(np.abs(np.sort(b[:, 0]) - np.sort(c[:, 0]))))


def _power_law_images(n, size, seed):
  """Images with a 1/|k|² power spectrum (natural-image-like), scaled into [0, 1]."""
  rng = np.random.default_rng(seed)
  k = np.fft.fftfreq(size) * size
  amplitude = 1. / np.maximum(np.hypot(k[:, None], k[None, :]), 1.)
  noise = np.fft.fft2(rng.standard_normal((n, size, size, 3)), axes=(1, 2)) * amplitude[None, :, :, None]
  x = np.real(np.fft.ifft2(noise, axes=(1, 2)))
  return np.clip(0.5 + 0.15 * x / x.std(), 0., 1.)


def test_identical_sets_score_zero_and_results_are_deterministic():
  images = _power_law_images(40, 32, 0)
  assert swd.swd(images, images) == {'32': 0., '16': 0., 'avg': 0.}
  other = _power_law_images(40, 32, 1)
  first = swd.swd(images, other, seed=3)
  assert first == swd.swd(images, other, seed=3)
  assert first != swd.swd(images, other, seed=4)
  assert set(first) == {'32', '16', 'avg'} and first['avg'] == pytest.approx((first['32'] + first['16']) / 2)


def test_blur_shows_at_the_fine_levels():
  sharp = _power_law_images(150, 64, 0)
  other = _power_law_images(150, 64, 1)
  blurred = swd.pyr_up(swd.pyr_down(other))  # removes the top octave
  floor = swd.swd(sharp, other)
  blur = swd.swd(sharp, blurred)
  # The finest band changes far beyond the two-sample noise floor, the 16×16 low-pass does not.
  assert blur['64'] > 5 * floor['64']
  assert blur['32'] > 1.5 * floor['32']
  assert blur['16'] < 1.3 * floor['16']
