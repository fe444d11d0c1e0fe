"""Tests for pds_jax.metrics.feature_metrics against closed forms for Gaussians and one-hot predictions."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from pds_jax.metrics import feature_metrics as fm


def _random_spd(rng, d, rank=None):
  a = rng.standard_normal((d, rank or d))
  return a @ a.T / d


def test_frechet_distance_of_given_gaussians_equals_the_closed_forms():
  rng = np.random.default_rng(0)
  # 1-D: (μ₁ − μ₂)² + (σ₁ − σ₂)².
  assert fm.frechet_distance(np.array([1.]), np.array([[4.]]), np.array([3.]), np.array([[9.]])) == pytest.approx(5.)
  # Commuting covariances Σᵢ = U diag(λᵢ) Uᵀ: ‖Δμ‖² + Σ_k (√λ₁ₖ − √λ₂ₖ)².
  d = 6
  u = np.linalg.qr(rng.standard_normal((d, d)))[0]
  lam1, lam2 = rng.random(d) * 3, rng.random(d) * 3
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(lam1) - np.sqrt(lam2)) ** 2)
  got = fm.frechet_distance(mu1, u @ np.diag(lam1) @ u.T, mu2, u @ np.diag(lam2) @ u.T)
  assert got == pytest.approx(want, rel=1e-10)


@settings(max_examples=20, deadline=None)
@given(d=st.integers(1, 8), rank=st.integers(1, 8), seed=st.integers(0, 2 ** 16))
def test_frechet_distance_matches_the_nonsymmetric_eigenvalue_form(d, rank, seed):
  """tr (Σ₁Σ₂)^½ = Σ √eig(Σ₁Σ₂) (real, ≥ 0), also for singular Σ₁; d² is symmetric and ≥ 0."""
  rng = np.random.default_rng(seed)
  s1, s2 = _random_spd(rng, d, min(rank, d)), _random_spd(rng, d)
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  trace_sqrt = np.sum(np.sqrt(np.clip(np.real(np.linalg.eigvals(s1 @ s2)), 0, None)))
  want = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
  got = fm.frechet_distance(mu1, s1, mu2, s2)
  assert got == pytest.approx(want, rel=1e-6, abs=1e-7)
  assert got == pytest.approx(fm.frechet_distance(mu2, s2, mu1, s1), rel=1e-6, abs=1e-7)
  assert fm.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0., abs=1e-6 * (1 + np.trace(s1)))


def test_frechet_distance_of_samples_with_shifted_means():
  rng = np.random.default_rng(1)
  d, n = 5, 20000
  sigma = _random_spd(rng, d) + 0.5 * np.eye(d)
  delta = rng.standard_normal(d) * 0.6
  chol = np.linalg.cholesky(sigma)
  a = rng.standard_normal((n, d)) @ chol.T
  b = rng.standard_normal((n, d)) @ chol.T + delta
  # Same draws shifted by δ: equal sample covariances, so d² = ‖δ‖² up to round-off.
  assert fm.frechet_distance(*fm.gaussian_fit(a), *fm.gaussian_fit(a + delta)) == pytest.approx(np.sum(delta ** 2),
                                                                                              rel=1e-9)
  # Independent draws: ‖δ̂‖² has standard deviation ≈ 2 sqrt(δᵀ (2Σ/n) δ); the trace term is O(d/n).
  tolerance = 4 * 2 * np.sqrt(delta @ (2 * sigma / n) @ delta) + 10 * d / n
  assert fm.frechet_distance(*fm.gaussian_fit(a), *fm.gaussian_fit(b)) == pytest.approx(np.sum(delta ** 2),
                                                                                        abs=tolerance)
  assert abs(fm.frechet_distance(*fm.gaussian_fit(a), *fm.gaussian_fit(a))) < 1e-9
  # fewer samples than dimensions: singular covariances are fine
  few = rng.standard_normal((4, 10))
  assert abs(fm.frechet_distance(*fm.gaussian_fit(few), *fm.gaussian_fit(few))) < 1e-9


def test_frechet_distance_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match=r'sigma2 has shape \(2, 2\), expected \(3, 3\)'):
    fm.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))
  with pytest.raises(ValueError, match='N ≥ 2'):
    fm.gaussian_fit(np.zeros((1, 3)))


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 14), d=st.integers(1, 9), seed=st.integers(0, 2 ** 16))
def test_frechet_distance_to_features_equals_the_fit_then_frechet_distance(n, d, seed):
  """The factored path (N − 1 < D) and the fallback (N − 1 ≥ D) both equal frechet_distance of the fit."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, d)) * rng.uniform(0.1, 3., d) + 5.
  mu2, s2 = rng.standard_normal(d), _random_spd(rng, d, max(1, d - 2))
  want = fm.frechet_distance(*fm.gaussian_fit(x), mu2, s2)
  assert fm.frechet_distance_to_features(x, mu2, s2) == pytest.approx(want, rel=1e-8, abs=1e-8)
  assert abs(fm.frechet_distance_to_features(x, *fm.gaussian_fit(x))) < 1e-8 * (1 + np.sum(x.var(axis=0)))
  with pytest.raises(ValueError, match=r'samples: a Gaussian fit needs \(N ≥ 2, D\)'):
    fm.frechet_distance_to_features(x[:1], mu2, s2, name='samples')
  with pytest.raises(ValueError, match='expected'):
    fm.frechet_distance_to_features(np.zeros((2, 30)), np.zeros(3), np.eye(3))


def _expected_kernel(mu1, s1, mu2, s2):
  """E (xᵀy/d + 1)³ for independent x ~ N(μ₁, Σ₁), y ~ N(μ₂, Σ₂), from the Gaussian moments of s = xᵀy:
  E s = μ₁ᵀμ₂, E s² = tr((Σ₁ + μ₁μ₁ᵀ)(Σ₂ + μ₂μ₂ᵀ)),
  E s³ = E_y[(μ₁ᵀy)³ + 3 (μ₁ᵀy)(yᵀΣ₁y)]
       = (μ₁ᵀμ₂)³ + 3 μ₁ᵀμ₂ μ₁ᵀΣ₂μ₁ + 3 [μ₁ᵀμ₂ (μ₂ᵀΣ₁μ₂ + tr Σ₁Σ₂) + 2 μ₁ᵀΣ₂Σ₁μ₂]."""
  d = len(mu1)
  m = mu1 @ mu2
  e1 = m
  e2 = np.trace((s1 + np.outer(mu1, mu1)) @ (s2 + np.outer(mu2, mu2)))
  e3 = m ** 3 + 3 * m * (mu1 @ s2 @ mu1) + 3 * (m * (mu2 @ s1 @ mu2 + np.trace(s1 @ s2)) + 2 * mu1 @ s2 @ s1 @ mu2)
  return e3 / d ** 3 + 3 * e2 / d ** 2 + 3 * e1 / d + 1


def test_kid_of_gaussian_features_matches_the_analytic_mmd():
  rng = np.random.default_rng(2)
  d = 4
  mu1, mu2 = np.zeros(d), np.full(d, 0.5)
  s1, s2 = np.eye(d), _random_spd(rng, d) + 0.3 * np.eye(d)
  want = (_expected_kernel(mu1, s1, mu1, s1) + _expected_kernel(mu2, s2, mu2, s2)
          - 2 * _expected_kernel(mu1, s1, mu2, s2))
  x = rng.multivariate_normal(mu1, s1, 20000)
  y = rng.multivariate_normal(mu2, s2, 20000)
  mean, std = fm.polynomial_mmd_averages(x, y, num_subsets=20, subset_size=1000, seed=0)
  # 20 disjoint-ish subsets of 1000 from 20000: standard error ≈ std / √20.
  assert mean == pytest.approx(want, abs=4 * std / np.sqrt(20) + 1e-3), (mean, std, want)
  assert want > 10 * std / np.sqrt(20)


def test_kid_is_unbiased_for_equal_distributions():
  """Independent small sets from one law: the mean of MMD²_u is 0 (the biased V-statistic is ≈ +0.3 here)."""
  rng = np.random.default_rng(3)
  estimates = [fm.polynomial_mmd_averages(rng.standard_normal((50, 4)), rng.standard_normal((50, 4)),
                                          num_subsets=1, subset_size=50, seed=i)[0] for i in range(300)]
  assert abs(np.mean(estimates)) < 3.5 * np.std(estimates) / np.sqrt(len(estimates))


def test_kid_of_a_set_with_itself_is_minus_two_over_n_times_the_diagonal_excess():
  """Independent subsets of ONE set of N points share a point with probability 1/N per pair, so
  E MMD²_u = −(2/N)(mean_i k(x_i, x_i) − mean_{i≠j} k(x_i, x_j)), not 0."""
  rng = np.random.default_rng(6)
  n = 40
  x = rng.standard_normal((n, 4))
  k = fm.polynomial_kernel(x, x)
  want = -2 / n * (np.mean(np.diag(k)) - (k.sum() - np.trace(k)) / (n * (n - 1)))
  mean, std = fm.polynomial_mmd_averages(x, x, num_subsets=2000, subset_size=20)
  assert mean == pytest.approx(want, abs=4 * std / np.sqrt(2000))


def test_kid_estimator_is_the_u_statistic():
  rng = np.random.default_rng(4)
  x, y = rng.standard_normal((5, 3)), rng.standard_normal((5, 3)) + 1
  k = lambda a, b: (a @ b / 3 + 1) ** 3
  within = sum(k(x[i], x[j]) + k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / 20
  cross = sum(k(x[i], y[j]) for i in range(5) for j in range(5)) / 25
  mean, std = fm.polynomial_mmd_averages(x, y, num_subsets=3, subset_size=5)
  assert mean == pytest.approx(within - 2 * cross, rel=1e-12) and std < 1e-12


def test_kid_rejects_too_few_features():
  x = np.zeros((10, 3))
  with pytest.raises(ValueError, match=r'subset_size = 20 exceeds the number of feature vectors \(10 and 10\)'):
    fm.polynomial_mmd_averages(x, x, subset_size=20)
  with pytest.raises(ValueError, match=r'\(10, 3\) and \(10, 2\)'):
    fm.polynomial_mmd_averages(x, np.zeros((10, 2)), subset_size=5)


def test_inception_score_closed_forms():
  k, n = 10, 100
  confident = 50. * np.eye(k)[np.arange(n) % k]  # one class per image, every class equally often
  mean, std = fm.inception_score(confident, splits=10)
  assert mean == pytest.approx(k, rel=1e-9) and std < 1e-9
  assert fm.inception_score(np.tile(np.random.default_rng(5).standard_normal(k), (n, 1)))[0] == pytest.approx(1.)
  # Two classes, p(y|x) = (a, 1−a) or (1−a, a) half the time each: IS = exp(log 2 − H(a)).
  a = 0.8
  logits = np.log(np.array([[a, 1 - a], [1 - a, a]]))[np.arange(n) % 2]
  entropy = -(a * np.log(a) + (1 - a) * np.log(1 - a))
  assert fm.inception_score(logits, splits=1)[0] == pytest.approx(np.exp(np.log(2) - entropy), rel=1e-12)
  with pytest.raises(ValueError, match='splits'):
    fm.inception_score(confident[:5], splits=10)
