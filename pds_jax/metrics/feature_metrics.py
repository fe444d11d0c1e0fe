"""Distances between feature sets: Fréchet distance, KID (unbiased polynomial MMD²), Inception Score.

All in float64 NumPy.
  Fréchet distance (Heusel et al. 2017), between Gaussian fits N(μ₁, Σ₁), N(μ₂, Σ₂):
    d² = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^½ Σ₂ Σ₁^½)^½,
  the symmetric form of tr (Σ₁Σ₂)^½ (same eigenvalues), computed with one D × D `eigh` of Σ₁ and
  one r × r `eigvalsh` in the range of Σ₁ (rank r), eigenvalues below the round-off level
  D·ε·max λ set to 0: singular covariances (fewer samples than dimensions) need no offset
  (pytorch-fid retries scipy's sqrtm with Σ + 1e-6 I instead) and make it cheaper.
  `frechet_distance_to_features` takes side 1 as its N feature vectors: for N − 1 < D it factors
  Σ₁ = H Hᵀ straight from them and needs no D × D eigendecomposition at all (2048-d FID of a few
  hundred samples: an N × N eigvalsh instead of a 2048² eigh, seconds on a CPU).
  KID (Bińkowski et al. 2018) with k(x, y) = (xᵀy / d + 1)³: the mean and standard deviation over
  `num_subsets` pairs of random subsets (each drawn without replacement) of the unbiased estimate
    MMD²_u = Σ_{i≠j} k(x_i, x_j) / (m(m−1)) + Σ_{i≠j} k(y_i, y_j) / (m(m−1)) − 2 Σ_{i,j} k(x_i, y_j) / m²
  as in their `polynomial_mmd_averages` (defaults 100 subsets of 1000, as torch-fidelity and clean-fid).
  Inception Score (Salimans et al. 2016): exp E_x KL(p(y|x) ‖ p(y)) on each of `splits` consecutive
  parts, mean and standard deviation over the parts.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np


def gaussian_fit(features: np.ndarray, name: str = 'features') -> Tuple[np.ndarray, np.ndarray]:
  """Mean (D,) and unbiased covariance (D, D) of features (N, D), as pytorch-fid (np.cov, ddof 1)."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or len(features) < 2:
    raise ValueError(f'{name}: a Gaussian fit needs (N ≥ 2, D) features; got shape {features.shape}.')
  return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


def _nonnegative(eigenvalues: np.ndarray) -> np.ndarray:
  """Eigenvalues of a PSD matrix with round-off set to 0: those below d·ε·max|λ| (np.linalg.matrix_rank's tol)."""
  tol = len(eigenvalues) * np.finfo(np.float64).eps * np.max(np.abs(eigenvalues), initial=0.)
  return np.where(eigenvalues > tol, eigenvalues, 0.)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
  """d² between N(μ₁, Σ₁) and N(μ₂, Σ₂) (module docstring); μ (D,), Σ (D, D).

  With Σ₁ = V Λ Vᵀ restricted to its r non-zero eigenvalues, H = V_r Λ_r^½ (D, r) gives Σ₁ = H Hᵀ,
  and Σ₁^½ Σ₂ Σ₁^½ has the non-zero eigenvalues of the r × r matrix Hᵀ Σ₂ H.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  d = mu1.shape[0]
  for name, value, shape in (('mu2', mu2, (d,)), ('sigma1', sigma1, (d, d)), ('sigma2', sigma2, (d, d))):
    if value.shape != shape:
      raise ValueError(f'frechet_distance: {name} has shape {value.shape}, expected {shape} (mu1 is ({d},)).')
  eigenvalues, eigenvectors = np.linalg.eigh((sigma1 + sigma1.T) / 2)
  eigenvalues = _nonnegative(eigenvalues)
  keep = eigenvalues > 0
  half = eigenvectors[:, keep] * np.sqrt(eigenvalues[keep])
  return _frechet_from_factor(mu1, half, np.trace(sigma1), mu2, sigma2)


def _frechet_from_factor(mu1: np.ndarray, half: np.ndarray, trace1: float, mu2: np.ndarray,
                         sigma2: np.ndarray) -> float:
  """d² with Σ₁ = H Hᵀ given by its factor H (D, r): tr (Σ₁^½ Σ₂ Σ₁^½)^½ = Σ √eig(Hᵀ Σ₂ H)."""
  cross = half.T @ sigma2 @ half
  trace_sqrt = np.sum(np.sqrt(_nonnegative(np.linalg.eigvalsh((cross + cross.T) / 2))))
  return float(np.sum((mu1 - mu2) ** 2) + trace1 + np.trace(sigma2) - 2 * trace_sqrt)


def frechet_distance_to_features(features: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                                 name: str = 'features') -> float:
  """frechet_distance(*gaussian_fit(features), mu2, sigma2), the fit's covariance factored from the features.

  features (N, D): with N − 1 < D, Σ₁ = H Hᵀ for H = (X − μ₁)ᵀ / √(N − 1) (D, N), so only the N × N
  matrix Hᵀ Σ₂ H is decomposed; with N − 1 ≥ D this is `frechet_distance` of the fit.
  """
  x = np.asarray(features, np.float64)
  if x.ndim != 2 or len(x) < 2:
    raise ValueError(f'{name}: a Gaussian fit needs (N ≥ 2, D) features; got shape {x.shape}.')
  n, d = x.shape
  if n - 1 >= d:
    return frechet_distance(*gaussian_fit(x, name), mu2, sigma2)
  mu2, sigma2 = np.asarray(mu2, np.float64), np.asarray(sigma2, np.float64)
  if mu2.shape != (d,) or sigma2.shape != (d, d):
    raise ValueError(f'frechet_distance: mu2 has shape {mu2.shape} and sigma2 {sigma2.shape}, expected ({d},) and '
                     f'({d}, {d}) ({name} have {d} features).')
  mu1 = x.mean(axis=0)
  half = (x - mu1).T / np.sqrt(n - 1)
  return _frechet_from_factor(mu1, half, float(np.sum(half * half)), mu2, sigma2)


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """k(x, y) = (xᵀy / d + 1)³ for x (n, d), y (m, d) -> (n, m)."""
  t = x @ y.T / x.shape[1] + 1.
  return t * t * t


def polynomial_mmd_averages(x: np.ndarray, y: np.ndarray, num_subsets: int = 100, subset_size: int = 1000,
                            seed: int = 0) -> Tuple[float, float]:
  """Mean and std of MMD²_u over random subset pairs (module docstring); x (n, d), y (m, d).

  The subsets come from np.random.default_rng(seed): x's then y's indices, subset after subset.
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
    raise ValueError(f'KID needs features (n, d) and (m, d); got {x.shape} and {y.shape}.')
  if subset_size < 2 or num_subsets < 1:
    raise ValueError(f'KID needs subset_size ≥ 2 and num_subsets ≥ 1; got {subset_size} and {num_subsets}.')
  if subset_size > min(len(x), len(y)):
    raise ValueError(f'KID subset_size = {subset_size} exceeds the number of feature vectors '
                     f'({len(x)} and {len(y)}); lower subset_size (config.eval.kid_subset_size) or pass more images.')
  rng = np.random.default_rng(seed)
  m = subset_size
  estimates = []
  for _ in range(num_subsets):
    xs = x[rng.choice(len(x), m, replace=False)]
    ys = y[rng.choice(len(y), m, replace=False)]
    k_xx, k_yy, k_xy = polynomial_kernel(xs, xs), polynomial_kernel(ys, ys), polynomial_kernel(xs, ys)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    estimates.append(within - 2 * k_xy.sum() / m ** 2)
  return float(np.mean(estimates)), float(np.std(estimates))


def inception_score(logits: np.ndarray, splits: int = 10) -> Tuple[float, float]:
  """Mean and std over `splits` parts of exp(mean_x KL(p(y|x) ‖ p(y))), p = softmax(logits (N, K))."""
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 2 or not 1 <= splits <= len(logits):
    raise ValueError(f'inception_score needs logits (N, K) with 1 ≤ splits ≤ N; got {logits.shape}, splits={splits}.')
  log_p = logits - logits.max(axis=1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
  n = len(log_p)
  scores = []
  for i in range(splits):
    part = log_p[i * n // splits:(i + 1) * n // splits]
    log_marginal = np.log(np.exp(part).mean(axis=0))
    scores.append(np.exp(np.mean(np.sum(np.exp(part) * (part - log_marginal), axis=1))))
  return float(np.mean(scores)), float(np.std(scores))
