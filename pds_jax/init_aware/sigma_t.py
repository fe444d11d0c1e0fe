"""Choosing the early-stopping level σ_T: the unimodality onset of p_T (docs/method.md §8), and for images
the smallest σ at which the closed-form q_T matches noised data along the leading principal
directions (`select_sigma_t_principal`).

Fassina et al. stop the forward VE process at the smallest σ at which p_σ = p_data * N(0, σ² I)
looks unimodal, as seen through the dip test on random 1-D projections (their
`find_unimodality.worst_case_onset`):
  1. draw K unit directions θ_k, one data draw x_i and one noise draw ε_i per point;
  2. for each direction, the projected noised sample  y_i(σ) = θ_kᵀ x_i + σ θ_kᵀ ε_i
     (the same x_i, ε_i for every σ, so the test is a deterministic function of σ);
  3. bisection in log σ per direction for the onset: the smallest σ at which y(σ) is judged
     unimodal, starting from the bracket `bounds`;
  4. σ_T = the largest onset over the directions (the worst direction).
Unimodal means, with `alpha=None` (the official criterion), that the dip's z-score against the
dips of uniform samples of the same size is below `z_threshold` (0: the dip is smaller than the
mean uniform dip); with `alpha` set, that the Monte-Carlo dip-test p-value exceeds α. A direction
still multimodal at the upper bound gets the upper bound as its onset; one already unimodal at
the lower bound gets the lower bound (so widen `bounds` if σ_T sits on either end).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import jax
import numpy as np

from pds_jax.init_aware.dip import dip_p_value, dip_statistic, uniform_null_dips

_NOISE_CHUNK = 4096  # rows of ε drawn at a time, so images of any size fit in memory


def _projections(x0: np.ndarray, rng: jax.Array, num_directions: int) -> Tuple[np.ndarray, np.ndarray]:
  """(θᵀ x_i, θᵀ ε_i) for K random unit directions θ: two arrays (N, K) in float64."""
  n, d = x0.shape
  k_dirs, k_noise = jax.random.split(rng)
  dirs = np.asarray(jax.random.normal(k_dirs, (num_directions, d)), np.float64)
  dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
  noise = np.concatenate([
      np.asarray(jax.random.normal(jax.random.fold_in(k_noise, i), (min(_NOISE_CHUNK, n - start), d)), np.float64)
      @ dirs.T for i, start in enumerate(range(0, n, _NOISE_CHUNK))])
  return x0 @ dirs.T, noise


def select_sigma_t(x0, rng: jax.Array, num_directions: int = 64, *, alpha: Optional[float] = None,
                   z_threshold: float = 0., bounds: Tuple[float, float] = (0.1, 5.), rtol: float = 1e-3,
                   num_null_draws: int = 500, null_seed: int = 0) -> Tuple[float, np.ndarray]:
  """σ_T = max over random directions of the unimodality onset of the projected p_σ.

  Args:
    x0: data draws (N, D), or (N, H, W, C) images (flattened to (N, H·W·C)); N ≥ 4.
    rng: a JAX PRNG key for the directions and the noise.
    num_directions: K, the number of random unit directions (the official runs use 2·10⁴).
    alpha: None for the official z-score criterion; a level in (0, 1) for the p-value one.
    z_threshold: the z-score below which a projection counts as unimodal (alpha=None only).
    bounds: (σ_lo, σ_hi), the initial bisection bracket (official: (0.1, 5)).
    rtol: bisect until σ_hi / σ_lo ≤ 1 + rtol (official: 12 halvings of log(50), ≈ 1e-3).
    num_null_draws: uniform samples of size N behind the null dips (official: 500 for the z-score).
    null_seed: NumPy seed of those uniform samples (the null is cached per (N, draws, seed)).

  Returns:
    (σ_T, onsets): the largest onset and the onset of every direction (K,), each the upper end
    of its final bracket.
  """
  x0 = np.asarray(x0, np.float64)
  if x0.ndim < 2 or x0.shape[0] < 4:
    raise ValueError(f'select_sigma_t: x0 must be (N, D) or (N, H, W, C) with N >= 4, got shape {x0.shape}.')
  x0 = x0.reshape(x0.shape[0], -1)
  lo, hi = bounds
  if not 0 < lo < hi:
    raise ValueError(f'select_sigma_t: bounds must satisfy 0 < sigma_lo < sigma_hi, got {bounds}.')
  if alpha is not None and not 0 < alpha < 1:
    raise ValueError(f'select_sigma_t: alpha must lie in (0, 1) or be None, got {alpha}.')
  if num_directions < 1 or rtol <= 0:
    raise ValueError(f'select_sigma_t: need num_directions >= 1 and rtol > 0, got {num_directions}, {rtol}.')
  proj_x, proj_eps = _projections(x0, rng, num_directions)
  null = uniform_null_dips(x0.shape[0], num_null_draws, null_seed)
  if alpha is None:
    cutoff = null.mean() + z_threshold * null.std()
    unimodal = lambda dip: dip < cutoff
  else:
    unimodal = lambda dip: dip_p_value(dip, null) > alpha

  def is_unimodal(log_sigma: np.ndarray) -> np.ndarray:
    y = proj_x + np.exp(log_sigma)[None, :] * proj_eps
    return np.array([unimodal(dip_statistic(y[:, k])) for k in range(num_directions)])

  log_lo = np.full(num_directions, math.log(lo))
  log_hi = np.full(num_directions, math.log(hi))
  stuck_hi = ~is_unimodal(log_hi)
  num_iters = max(0, math.ceil(math.log2(math.log(hi / lo) / math.log1p(rtol))))
  for _ in range(num_iters):
    log_mid = 0.5 * (log_lo + log_hi)
    up = ~is_unimodal(log_mid)
    log_lo = np.where(up, log_mid, log_lo)
    log_hi = np.where(up, log_hi, log_mid)
  onsets = np.where(stuck_hi, hi, np.exp(log_hi))
  return float(onsets.max()), onsets


# ----------------------------------------------------------------------------- images


def leading_directions(x: np.ndarray, k: int, seed: int = 0,
                       power_iterations: int = 4) -> Tuple[np.ndarray, np.ndarray]:
  """The k leading principal directions (k, D) of x (N, D) and their variances (k,), by randomized
  subspace iteration (Halko et al. 2011)."""
  xc = x - x.mean(0)
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(xc @ rng.standard_normal((x.shape[1], min(k + 8, x.shape[0]))))
  for _ in range(power_iterations):
    q, _ = np.linalg.qr(xc @ (xc.T @ q))
  _, s, vt = np.linalg.svd(q.T @ xc, full_matrices=False)
  return vt[:k], s[:k] ** 2 / len(x)


def _standardized_w1(a: np.ndarray, b: np.ndarray, weights: np.ndarray) -> float:
  """Σ_j w_j W1(a_j, b_j) / std(b_j) for two samples (n, k) of equal size and weights (k,) summing to 1."""
  return float(np.sum(weights * np.abs(np.sort(a, 0) - np.sort(b, 0)).mean(0) / b.std(0)))


def select_sigma_t_principal(x0, seed: int = 0, *, num_directions: int = 16, tolerance: float = 0.05,
                             bounds: Tuple[float, float] = (0.1, 20.), num_sigmas: int = 32) -> Tuple[float, dict]:
  """σ_T for images: the smallest σ from which on the closed-form Gaussian q_T matches the noised images.

  Random 1-D projections of images are Gaussian by the central limit theorem at any σ (so the dip
  test above returns its lower bound), but the data's leading principal directions are not: their
  projections carry the non-Gaussian low-frequency content that a Gaussian q_T misses. For each σ
  of a log grid in `bounds`, with q_T = `inits.SpectralGaussianInit` of the images at σ:
    d(σ) = Σ_j w_j W1(u_jᵀ (x_i + σ ε_i), u_jᵀ q_T draws) / std       (the N images, N draws)
    f(σ) = Σ_j w_j W1(u_jᵀ q_T draws', u_jᵀ q_T draws) / std          (the finite-sample floor)
  with u_j the leading principal directions of the images, w_j ∝ their variances (a direction that
  carries little of the images matters little; an unweighted mean would drown a few non-Gaussian
  directions among Gaussian ones) and std that of the noised projection. σ_T is the smallest grid σ
  from which on d - f ≤ `tolerance` (W1 in standard deviations), or the upper bound when no grid σ
  qualifies. The noise and the draws are fixed across σ, so the curve is smooth. The closed-form
  q_T has only a mean and a spectrum to fit, so the images it was fitted to serve as the data.
  Gaussian data give the lower bound; the bundled 32² natural patches give σ_T ≈ 10-12 in [0, 1]
  (their leading principal direction has a standard deviation of 9.9; Fassina et al. use 7 for
  FFHQ-64 in [-1, 1], i.e. 3.5 in [0, 1]).

  Args:
    x0: images (N, H, W, C), N ≥ num_directions, in the model's range.
    seed: NumPy seed of the directions, the noise and the draws.

  Returns:
    (σ_T, {'sigma': grid, 'excess': d - f, 'distance': d, 'floor': f}) as lists.
  """
  from pds_jax.init_aware import inits  # the closed-form q_T
  x0 = np.asarray(x0, np.float32)
  if x0.ndim != 4 or len(x0) < max(num_directions, 2):
    raise ValueError(f'select_sigma_t_principal: need images (N, H, W, C) with N >= num_directions = '
                     f'{num_directions}, got shape {x0.shape}.')
  lo, hi = bounds
  if not 0 < lo < hi or tolerance <= 0 or num_directions < 1:
    raise ValueError(f'select_sigma_t_principal: need 0 < sigma_lo < sigma_hi, tolerance > 0 and num_directions >= 1, '
                     f'got bounds={bounds}, tolerance={tolerance}, num_directions={num_directions}.')
  n = len(x0)
  rng = np.random.default_rng(seed)
  flat = x0.reshape(n, -1).astype(np.float64)
  u, variances = leading_directions(flat, num_directions, seed)
  weights = variances / variances.sum()
  q0 = inits.SpectralGaussianInit.from_images(x0, 1e-6)  # N(μ, Σ); q_T adds σ ε
  draw = lambda k: np.asarray(q0.sample(jax.random.PRNGKey(seed + k), n), np.float64).reshape(n, -1) @ u.T
  clean = {'data': flat @ u.T, 'q': draw(0), 'q_again': draw(1)}
  noise = {name: rng.standard_normal((n, flat.shape[1])) @ u.T for name in clean}
  grid = np.geomspace(lo, hi, num_sigmas)
  distance, floor = [], []
  for sigma in grid:
    proj = {name: clean[name] + sigma * noise[name] for name in clean}
    distance.append(_standardized_w1(proj['q'], proj['data'], weights))
    floor.append(_standardized_w1(proj['q'], proj['q_again'], weights))
  excess = np.asarray(distance) - np.asarray(floor)
  bad = np.nonzero(excess > tolerance)[0]
  sigma_t = float(grid[0] if not len(bad) else grid[min(bad[-1] + 1, num_sigmas - 1)])
  return sigma_t, {'sigma': grid.tolist(), 'excess': excess.tolist(), 'distance': distance, 'floor': floor}
