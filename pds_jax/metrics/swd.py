"""Multi-scale sliced Wasserstein distance (SWD) of Karras et al. (2018, Progressive GAN, App. D).

For each level of a Laplacian pyramid, from the full resolution down to `min_resolution` = 16:
  1. descriptors: `nhoods_per_image` = 128 neighbourhoods of 7 × 7 pixels (all channels) per
     image, centred uniformly where the whole window fits;
  2. each SET's descriptors are normalised per channel to zero mean and unit standard deviation
     over all of its neighbourhoods and window positions (as in the original code, so a global
     per-level, per-channel shift or gain between the sets is not measured);
  3. SWD = mean over `dir_repeats` × `dirs_per_repeat` = 4 × 128 = 512 random unit directions θ
     (the paper's 512 projections, drawn in 4 batches of 128 as the code does) of W₁(θᵀA, θᵀB),
     the 1-D Wasserstein-1 distance of the projected sets, reported × 10³.
The pyramid is cv2.pyrDown/pyrUp's: 5-tap binomial [1, 4, 6, 4, 1] / 16 per axis, mirror
boundary (… c b | a b c …), level ℓ = G_ℓ − up(G_{ℓ+1}) and the last level is G_{L−1} itself.

Levels: 16×16 → (16) (the image itself, no band-pass); 32×32 → (32, 16); 64×64 → (64, 32, 16); 256×256 → 5 levels. Images must be
square, at least `min_resolution` and divisible by 2^(levels − 1).

Differences from the original code (tkarras/progressive_growing_of_gans, metrics/
sliced_wasserstein.py): the random numbers come from seeded `np.random.default_rng` streams (the
original used the global NumPy state) — positions from ([seed, level, 0]), directions from
([seed, level, 1]) — so two sets of the same size get the same positions and identical sets score
exactly 0; inputs are NHWC in [0, 1] instead of NCHW uint8 (the normalisation makes the scale
irrelevant); any channel count is accepted; and sets of different sizes are compared through their
quantile functions, W₁ = ∫₀¹ |F_A⁻¹(q) − F_B⁻¹(q)| dq, which for equal sizes is the original
mean_i |a₍ᵢ₎ − b₍ᵢ₎|. Descriptors and projections are float32 like the original: bit-identical on
one machine, float32 round-off (~1e-5 relative) between BLAS builds. The paper compares 16384
images per set (2.1M descriptors per level); smaller sets give a larger, positive sampling floor.
Memory: 128 · 49 · C float32 per image and level (75 kB for C = 3), i.e. 75 MB per 1000 images.
"""
from __future__ import annotations

import math
from typing import Dict, List

import numpy as np

BINOMIAL_TAPS = np.array([1., 4., 6., 4., 1.]) / 16.
MIN_RESOLUTION = 16


def pyramid_resolutions(size: int, min_resolution: int) -> List[int]:
  """[size, size/2, …] down to the last resolution ≥ min_resolution; checks the halvings are exact."""
  if size < min_resolution:
    raise ValueError(f'images of size {size} are smaller than the pyramid minimum {min_resolution}.')
  count = int(math.floor(math.log2(size / min_resolution))) + 1
  if size % 2 ** (count - 1):
    raise ValueError(f'image size {size} is not divisible by 2^{count - 1}, as a {count}-level pyramid '
                     f'down to {min_resolution} needs.')
  return [size // 2 ** i for i in range(count)]


def _blur(x: np.ndarray, axis: int, taps: np.ndarray) -> np.ndarray:
  """Correlation of x with 5 taps along `axis`, mirror boundary (numpy 'reflect' = scipy 'mirror')."""
  pad = [(0, 0)] * x.ndim
  pad[axis] = (2, 2)
  padded = np.pad(x, pad, mode='reflect')
  n = x.shape[axis]
  window = lambda k: padded[(slice(None),) * axis + (slice(k, k + n),)]
  return sum(x.dtype.type(t) * window(k) for k, t in enumerate(taps))


def pyr_down(x: np.ndarray) -> np.ndarray:
  """cv2.pyrDown of images (N, H, W, C): binomial blur, keep every second pixel -> (N, H/2, W/2, C)."""
  return _blur(_blur(x, 1, BINOMIAL_TAPS), 2, BINOMIAL_TAPS)[:, ::2, ::2]


def pyr_up(x: np.ndarray) -> np.ndarray:
  """cv2.pyrUp of images (N, H, W, C): zero-stuffing then a 4× binomial blur -> (N, 2H, 2W, C)."""
  n, h, w, c = x.shape
  stuffed = np.zeros((n, 2 * h, 2 * w, c), x.dtype)
  stuffed[:, ::2, ::2] = x
  return _blur(_blur(stuffed, 1, 2 * BINOMIAL_TAPS), 2, 2 * BINOMIAL_TAPS)


def laplacian_pyramid(images: np.ndarray, num_levels: int) -> List[np.ndarray]:
  """Levels L_ℓ = G_ℓ − pyr_up(G_{ℓ+1}) for ℓ < num_levels − 1 and L_last = G_last, G_0 = images.

  images (N, H, W, C); level ℓ has shape (N, H/2^ℓ, W/2^ℓ, C) and the input's dtype; G_ℓ = L_ℓ + pyr_up(G_{ℓ+1})
  reconstructs the input exactly.
  """
  gaussians = [images]
  for _ in range(num_levels - 1):
    gaussians.append(pyr_down(gaussians[-1]))
  return [g - pyr_up(g_next) for g, g_next in zip(gaussians, gaussians[1:])] + [gaussians[-1]]


def neighbourhoods(level: np.ndarray, rng: np.random.Generator, nhood_size: int, nhoods_per_image: int
                   ) -> np.ndarray:
  """`nhoods_per_image` random windows per image of a level (N, h, w, C) -> (N·K, size, size, C)."""
  n, h, w, _ = level.shape
  half = nhood_size // 2
  ys = rng.integers(half, h - half, size=(n, nhoods_per_image))
  xs = rng.integers(half, w - half, size=(n, nhoods_per_image))
  offsets = np.arange(nhood_size) - half
  image = np.arange(n)[:, None, None, None]
  rows = ys[:, :, None, None] + offsets[None, None, :, None]
  cols = xs[:, :, None, None] + offsets[None, None, None, :]
  return level[image, rows, cols].reshape((n * nhoods_per_image, nhood_size, nhood_size, -1))


def normalise_descriptors(windows: np.ndarray) -> np.ndarray:
  """Per-channel z-score over all windows and positions, flattened: (K, s, s, C) -> (K, s·s·C) float32.

  The statistics accumulate in float64; the descriptors are float32.
  """
  pixels = windows.reshape(-1, windows.shape[-1])
  centred = pixels - pixels.mean(axis=0, dtype=np.float64).astype(np.float32)
  std = np.sqrt(np.einsum('ij,ij->j', centred, centred, dtype=np.float64) / len(pixels))
  std = np.where(std > 0, std, 1.).astype(np.float32)
  return (centred / std).reshape(len(windows), -1)


def swd_descriptors(images: np.ndarray, seed: int = 0, nhood_size: int = 7, nhoods_per_image: int = 128,
                    min_resolution: int = MIN_RESOLUTION) -> Dict[int, np.ndarray]:
  """Normalised descriptors of every pyramid level: {resolution: (N·K, size²·C) float32}.

  images (N, H, H, C) float in [0, 1]; the level-ℓ positions come from default_rng([seed, ℓ, 0]).
  """
  if images.ndim != 4 or images.shape[1] != images.shape[2]:
    raise ValueError(f'SWD needs square images (N, H, H, C); got shape {images.shape}.')
  resolutions = pyramid_resolutions(images.shape[1], min_resolution)
  pyramid = laplacian_pyramid(np.asarray(images, np.float32), len(resolutions))
  return {res: normalise_descriptors(neighbourhoods(level, np.random.default_rng([seed, lod, 0]),
                                                    nhood_size, nhoods_per_image))
          for lod, (res, level) in enumerate(zip(resolutions, pyramid))}


def _quantile_grid(n: int, m: int):
  """Intervals on which both empirical quantile functions are constant: (index in a, index in b, width)."""
  lcm = n * m // math.gcd(n, m)
  step_a, step_b = lcm // n, lcm // m
  edges = np.union1d(np.arange(0, lcm + 1, step_a), np.arange(0, lcm + 1, step_b))
  return edges[:-1] // step_a, edges[:-1] // step_b, np.diff(edges) / lcm


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, dir_repeats: int = 4,
                       dirs_per_repeat: int = 128) -> float:
  """mean_θ W₁(θᵀa, θᵀb) over dir_repeats·dirs_per_repeat directions uniform on the unit sphere.

  a (n, d), b (m, d). W₁ of two 1-D empirical laws is ∫₀¹ |F_a⁻¹(q) − F_b⁻¹(q)| dq, a sum over
  the intervals between the quantile steps i/n and j/m (for n = m: mean_i |a₍ᵢ₎ − b₍ᵢ₎|).
  """
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
    raise ValueError(f'descriptor sets must be (n, d) and (m, d); got {a.shape} and {b.shape}.')
  index_a, index_b, width = _quantile_grid(len(a), len(b))
  distances = []
  for _ in range(dir_repeats):
    dirs = rng.standard_normal((a.shape[1], dirs_per_repeat))
    dirs = (dirs / np.sqrt(np.sum(dirs ** 2, axis=0, keepdims=True))).astype(np.float32)
    proj_a = np.sort(dirs.T @ a.T, axis=1)  # (direction, descriptor)
    proj_b = np.sort(dirs.T @ b.T, axis=1)
    distances.append(np.abs(proj_a[:, index_a] - proj_b[:, index_b]) @ width)
  return float(np.mean(distances))


def sliced_wasserstein_distance(descriptors_a: Dict[int, np.ndarray], descriptors_b: Dict[int, np.ndarray],
                                seed: int = 0, dir_repeats: int = 4, dirs_per_repeat: int = 128
                                ) -> Dict[str, float]:
  """SWD × 10³ per level and their mean: {'32': …, '16': …, 'avg': …} (keys: level resolution).

  The level-ℓ directions come from default_rng([seed, ℓ, 1]), shared by every pair of sets.
  """
  if list(descriptors_a) != list(descriptors_b):
    raise ValueError(f'descriptor levels differ: {list(descriptors_a)} vs {list(descriptors_b)}.')
  result = {str(res): 1e3 * sliced_wasserstein(descriptors_a[res], descriptors_b[res],
                                               np.random.default_rng([seed, lod, 1]), dir_repeats, dirs_per_repeat)
            for lod, res in enumerate(descriptors_a)}
  result['avg'] = float(np.mean(list(result.values())))
  return result


def swd(images_a: np.ndarray, images_b: np.ndarray, seed: int = 0) -> Dict[str, float]:
  """The multi-scale SWD × 10³ of two image sets (N, H, H, C) and (M, H, H, C) in [0, 1]."""
  return sliced_wasserstein_distance(swd_descriptors(images_a, seed), swd_descriptors(images_b, seed), seed)

