"""A fixed, weight-free feature map for FD and KID: multi-scale image statistics.

Why this map. FD/KID need a feature space in which the differences that samplers make are
visible, and that every machine computes identically without downloading a network. The map
below is a reduced set of the texture statistics of Portilla & Simoncelli (2000) — the marginal
and joint statistics of a multi-scale pyramid that are known to determine the appearance of
natural textures — plus colour moments and a coarse layout. It measures exactly the failure
modes of diffusion samplers: residual noise (fine-band energy up, fine-band kurtosis down towards
the Gaussian 3, cross-scale coherence down), over-smoothing (fine-band energy down), colour casts
(moments) and broken global structure (layout). It has no random numbers and no weights; in
float64 it is deterministic up to summation order (~1e-12 relative across machines). It cannot see
object identity: it is a texture/colour/layout metric, complementary to the Inception metrics.

For images x (N, H, W, C) in [0, 1] (H = W divisible by 4, ≥ 16), with o = x in opponent colours
(C = 3: luminance (R+G+B)/√3, red-green (R−G)/√2, yellow-blue (R+G−2B)/√6; other C: unchanged),
the features of each image are, for every opponent channel c:
  colour moments   mean, standard deviation, skewness of o_c over the pixels            (3)
  layout           means of o_c over a 4 × 4 grid of blocks                              (16)
  for every band-pass level b of the Laplacian pyramid of o (`swd.laplacian_pyramid`) down
  to resolution 8 (32×32: 32, 16, 8; 64×64: 64, 32, 16, 8):
    energy         log(mean b² + ε)                                                     (1)
    orientation    (J_xx − J_yy) / tr J and 2 J_xy / tr J of the structure tensor
                   J = mean ∇b ∇bᵀ (central differences on the interior)               (2)
    kurtosis       log((mean b⁴ + ε²) / (mean b² + ε)²)                                 (1)
    cross-scale    correlation over pixels of |b_ℓ| (2×2-averaged) with |b_{ℓ+1}|,
                   for all but the coarsest band (edges are coherent across scales,
                   noise is not)                                                        (1)
ε = (1/255)² / 12 is the variance of 8-bit quantisation noise: energies below it cannot be told
apart in uint8 images. D = C·(19 + 5·L − 1) for L bands: 99 for 32×32×3, 114 for 64×64×3.
"""
from __future__ import annotations

import numpy as np

from pds_jax.metrics import swd

EPSILON = (1. / 255.) ** 2 / 12.
LAYOUT_GRID = 4
MIN_BAND_RESOLUTION = 8

OPPONENT = np.array([[1., 1., 1.], [1., -1., 0.], [1., 1., -2.]]) / np.sqrt([[3.], [2.], [6.]])


def opponent_colours(images: np.ndarray) -> np.ndarray:
  """(N, H, W, 3) RGB -> luminance, red-green, yellow-blue (an orthonormal map); other C unchanged."""
  return images @ OPPONENT.T if images.shape[-1] == 3 else images


def _moments(o: np.ndarray) -> np.ndarray:
  """Mean, std and skewness over pixels of (N, H, W, C) -> (N, 3C)."""
  mean = o.mean(axis=(1, 2))
  centred = o - mean[:, None, None]
  var = np.mean(centred ** 2, axis=(1, 2))
  skew = np.mean(centred ** 3, axis=(1, 2)) / (var + EPSILON) ** 1.5
  return np.concatenate([mean, np.sqrt(var), skew], axis=1)


def _layout(o: np.ndarray) -> np.ndarray:
  """Block means over a LAYOUT_GRID² grid: (N, H, W, C) -> (N, 16C)."""
  n, h, w, c = o.shape
  g = LAYOUT_GRID
  return o.reshape(n, g, h // g, g, w // g, c).mean(axis=(2, 4)).reshape(n, -1)


def _band_statistics(band: np.ndarray) -> np.ndarray:
  """Energy, two orientation components and kurtosis of a band (N, h, w, C) -> (N, 4C)."""
  m2 = np.mean(band ** 2, axis=(1, 2))
  m4 = np.mean(band ** 4, axis=(1, 2))
  gy = band[:, 2:, 1:-1] - band[:, :-2, 1:-1]
  gx = band[:, 1:-1, 2:] - band[:, 1:-1, :-2]
  jxx, jyy, jxy = (np.mean(g, axis=(1, 2)) for g in (gx * gx, gy * gy, gx * gy))
  trace = jxx + jyy + EPSILON
  return np.concatenate([np.log(m2 + EPSILON), (jxx - jyy) / trace, 2 * jxy / trace,
                         np.log((m4 + EPSILON ** 2) / (m2 + EPSILON) ** 2)], axis=1)


def _cross_scale(fine: np.ndarray, coarse: np.ndarray) -> np.ndarray:
  """Per-channel correlation over pixels of 2×2-averaged |fine| with |coarse| -> (N, C)."""
  n, h, w, c = coarse.shape
  a = np.abs(fine).reshape(n, h, 2, w, 2, c).mean(axis=(2, 4))
  b = np.abs(coarse)
  a = a - a.mean(axis=(1, 2), keepdims=True)
  b = b - b.mean(axis=(1, 2), keepdims=True)
  cov = np.mean(a * b, axis=(1, 2))
  return cov / (np.sqrt(np.mean(a * a, axis=(1, 2)) * np.mean(b * b, axis=(1, 2))) + EPSILON)


def check_image_size(shape) -> None:
  """Raises unless (N, H, W, C) images are square, H divisible by 4 and the band pyramid exact."""
  if len(shape) != 4 or shape[1] != shape[2] or shape[1] % LAYOUT_GRID:
    raise ValueError(f'the statistics features need square images (N, H, H, C) with H divisible by '
                     f'{LAYOUT_GRID}; got shape {tuple(shape)}.')
  bands = len(swd.pyramid_resolutions(shape[1], MIN_BAND_RESOLUTION))
  if shape[1] % 2 ** bands:
    raise ValueError(f'image size {shape[1]} is not divisible by 2^{bands}, as {bands} band-pass levels '
                     f'and a low-pass residual need.')


def multiscale_statistics(images: np.ndarray, batch_size: int = 500) -> np.ndarray:
  """The features of the module docstring: images (N, H, H, C) in [0, 1] -> (N, D) float64."""
  check_image_size(images.shape)
  num_bands = len(swd.pyramid_resolutions(images.shape[1], MIN_BAND_RESOLUTION))
  rows = []
  for start in range(0, len(images), batch_size):
    o = opponent_colours(np.asarray(images[start:start + batch_size], np.float64))
    bands = swd.laplacian_pyramid(o, num_bands + 1)[:num_bands]
    rows.append(np.concatenate(
        [_moments(o), _layout(o)] + [_band_statistics(b) for b in bands]
        + [_cross_scale(fine, coarse) for fine, coarse in zip(bands, bands[1:])], axis=1))
  return np.concatenate(rows, axis=0)
