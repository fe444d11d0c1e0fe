"""Tests for pds_jax.init_aware.inits: every q_T against dense closed forms and exact p_T."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

from pds_jax import gaussian
from pds_jax.init_aware import inits

SHAPE = (4, 6, 2)
REF = gaussian.GaussianReference.power_law(SHAPE, mean=0.4, pixel_std=0.3)


def _dense_covariance(ref):
  """Σ = U* diag(λ) U as a (D, D) matrix, through the colouring operator twice (Σ^½ symmetric)."""
  n = int(np.prod(ref.shape))
  half = np.asarray(ref._colour(jnp.eye(n).reshape((n,) + ref.shape), ref.spectrum), np.float64).reshape(n, n)
  return half @ half.T


def test_every_init_follows_the_protocol_and_jits():
  x4 = jnp.zeros((3, 4))
  for q, x in [(inits.IsotropicGaussianInit.create(1., (4,)), x4),
               (inits.MomentGaussianInit.from_moments(np.zeros(4), np.eye(4), 1.), x4),
               (inits.SpectralGaussianInit.from_reference(REF, 1.), jnp.zeros((3,) + SHAPE)),
               (inits.EmpiricalInit.create(np.ones((5, 4)), 1.), x4)]:
    assert isinstance(q, inits.InitDistribution)
    assert q.sample(jax.random.PRNGKey(0), 3).shape == x.shape
    np.testing.assert_allclose(jax.jit(lambda q, x: q.log_prob(x))(q, x), q.log_prob(x), rtol=1e-6)


def test_isotropic_init_is_the_uninformed_gaussian():
  q = inits.IsotropicGaussianInit.create(2.5, (3, 2))
  x = q.sample(jax.random.PRNGKey(0), 20000)
  assert x.shape == (20000, 3, 2)
  np.testing.assert_allclose(np.std(np.asarray(x)), 2.5, rtol=0.01)
  flat = np.asarray(x[:5], np.float64).reshape(5, -1)
  want = stats.multivariate_normal(np.zeros(6), 2.5 ** 2 * np.eye(6)).logpdf(flat)
  np.testing.assert_allclose(q.log_prob(x[:5]), want, rtol=1e-5)


def test_moment_init_is_the_moment_matched_gaussian_plus_noise():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(3, 3))
  x0 = rng.normal(size=(5000, 3)) @ a.T + np.array([1., -2., 0.5])
  q = inits.MomentGaussianInit.from_samples(x0, 0.7)
  cov = np.cov(x0, rowvar=False) + 0.49 * np.eye(3)
  pts = rng.normal(size=(6, 3)) * 2
  want = stats.multivariate_normal(x0.mean(0), cov).logpdf(pts)
  np.testing.assert_allclose(q.log_prob(jnp.asarray(pts, jnp.float32)), want, rtol=1e-5)
  draws = np.asarray(q.sample(jax.random.PRNGKey(1), 40000), np.float64)
  np.testing.assert_allclose(np.cov(draws, rowvar=False), cov, atol=0.05 * np.abs(cov).max())
  with pytest.raises(ValueError, match=r'expected mean \(D,\) and cov \(D, D\)'):
    inits.MomentGaussianInit.from_moments(np.zeros(3), np.eye(2), 1.)
  with pytest.raises(ValueError, match=r'expected x0 of shape \(N >= 2, D\)'):
    inits.MomentGaussianInit.from_samples(np.zeros((1, 3)), 1.)


def test_spectral_init_log_prob_is_the_dense_gaussian_density():
  sigma_t = 0.8
  q = inits.SpectralGaussianInit.from_reference(REF, sigma_t)
  n = int(np.prod(SHAPE))
  cov = _dense_covariance(REF) + sigma_t ** 2 * np.eye(n)
  x = q.sample(jax.random.PRNGKey(2), 4)
  want = stats.multivariate_normal(np.asarray(REF.mean, np.float64).ravel(), cov).logpdf(
      np.asarray(x, np.float64).reshape(4, -1))
  np.testing.assert_allclose(q.log_prob(x), want, rtol=1e-5)


def test_spectral_init_samples_are_exact_p_t_at_the_noise_floor():
  sigma_t = 0.5
  exact_p_t = gaussian.GaussianReference(REF.mean, REF.spectrum + sigma_t ** 2)
  q = inits.SpectralGaussianInit.from_reference(REF, sigma_t)
  n = 4000
  ours = gaussian.metrics(q.sample(jax.random.PRNGKey(3), n), exact_p_t)['frechet_distance']
  floor = gaussian.metrics(exact_p_t.sample(jax.random.PRNGKey(4), n), exact_p_t)['frechet_distance']
  # Any draw-to-draw difference is sampling noise: a mismatch of the variances by 10% alone would
  # add Σ_k (sqrt(1.1 v_k) - sqrt(v_k))² ≈ 0.0024 Σ_k v_k ≈ 0.03 here.
  assert ours < 2.5 * floor and floor < 0.01, (ours, floor)
  isotropic = inits.IsotropicGaussianInit.create(sigma_t, SHAPE).sample(jax.random.PRNGKey(3), n)
  assert gaussian.metrics(isotropic, exact_p_t)['frechet_distance'] > 100 * floor


@pytest.mark.parametrize('mean', ['channel', 'pixel'])
def test_spectral_init_fitted_to_gaussian_images_recovers_p_t(mean):
  sigma_t = 0.5
  images = np.asarray(REF.sample(jax.random.PRNGKey(5), 3000))
  q = inits.SpectralGaussianInit.from_images(images, sigma_t, mean=mean)
  np.testing.assert_allclose(q.noised.spectrum, REF.spectrum + sigma_t ** 2, rtol=0.1)
  np.testing.assert_allclose(q.noised.mean, REF.mean, atol=0.03)
  exact = inits.SpectralGaussianInit.from_reference(REF, sigma_t)
  x = exact.sample(jax.random.PRNGKey(6), 500)
  kl = float(jnp.mean(exact.log_prob(x) - q.log_prob(x)))  # ≈ KL(p_T ‖ q_T) ≥ 0, small
  assert abs(kl) < 0.03, kl  # measured: 0.0008 (channel), 0.007 (pixel)


def test_spectral_init_rejects_bad_inputs():
  q = inits.SpectralGaussianInit.from_reference(REF, 1.)
  with pytest.raises(ValueError, match=r'SpectralGaussianInit.log_prob: expected x of shape \(n, 4, 6, 2\), '
                                       r'got \(3, 4, 6, 1\)'):
    q.log_prob(jnp.zeros((3, 4, 6, 1)))
  with pytest.raises(ValueError, match="mean must be 'channel' or 'pixel'"):
    inits.SpectralGaussianInit.from_images(np.zeros((3,) + SHAPE), 1., mean='image')
  with pytest.raises(ValueError, match=r'expected images \(N >= 2, H, W, C\)'):
    inits.SpectralGaussianInit.from_images(np.zeros((3, 4, 6)), 1.)
  with pytest.raises(ValueError, match='sigma_T must be > 0'):
    inits.SpectralGaussianInit.from_reference(REF, 0.)


def test_empirical_init_log_prob_is_the_gaussian_kde_of_the_data():
  rng = np.random.default_rng(1)
  data = rng.normal(size=(50, 2, 3))
  sigma_t = 0.4
  q = inits.EmpiricalInit.create(data, sigma_t)
  x = rng.normal(size=(7, 2, 3))
  sq = ((x.reshape(7, 1, -1) - data.reshape(1, 50, -1)) ** 2).sum(-1)
  want = logsumexp(-sq / (2 * sigma_t ** 2), axis=1) - np.log(50) - 3 * np.log(2 * np.pi * sigma_t ** 2)
  np.testing.assert_allclose(q.log_prob(jnp.asarray(x, jnp.float32)), want, rtol=1e-5)
  draws = np.asarray(q.sample(jax.random.PRNGKey(0), 40000), np.float64)
  np.testing.assert_allclose(draws.mean(0), data.mean(0), atol=0.03)
  np.testing.assert_allclose(draws.var(0), data.var(0) + sigma_t ** 2, rtol=0.05)
  with pytest.raises(ValueError, match=r'EmpiricalInit.log_prob: expected x of shape \(n, 2, 3\)'):
    q.log_prob(jnp.zeros((4, 6)))
  with pytest.raises(ValueError, match='sigma_T must be > 0'):
    inits.EmpiricalInit.create(data, -1.)
