"""Tests for pds_jax.gaussian: the exact reference against dense linear algebra."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pds_jax import gaussian, sde_lib

SHAPE = (4, 6, 2)


def _dense_covariance(ref):
  """Σ as an explicit (D, D) matrix: column j = Σ e_j, through the coloring operator twice."""
  n = int(np.prod(SHAPE))
  eye = jnp.eye(n).reshape((n,) + SHAPE)
  half = ref._colour(eye, ref.spectrum)  # Σ^½ e_j (Σ^½ symmetric)
  half = np.asarray(half, np.float64).reshape(n, n)
  return half @ half.T


@pytest.mark.parametrize('sde', [sde_lib.VESDE(0.01, 5.), sde_lib.VPSDE(), sde_lib.subVPSDE()], ids=['ve', 'vp', 'subvp'])
def test_exact_score_is_the_gradient_of_the_dense_log_density(sde):
  ref = gaussian.GaussianReference.power_law(SHAPE, mean=0.2, pixel_std=0.4)
  sigma = _dense_covariance(ref)
  t = jnp.array([0.05, 0.5, 0.9])
  x = jnp.asarray(np.random.RandomState(0).randn(3, *SHAPE), jnp.float32)
  got = np.asarray(ref.score(x, t, sde), np.float64).reshape(3, -1)
  for b in range(3):
    m = float(sde.marginal_prob(jnp.ones(1), t[b:b + 1])[0][0])
    std = float(sde.marginal_prob(jnp.zeros(1), t[b:b + 1])[1][0])
    cov = m ** 2 * sigma + std ** 2 * np.eye(len(sigma))
    want = -np.linalg.solve(cov, np.asarray(x[b], np.float64).ravel() - m * np.asarray(ref.mean).ravel())
    np.testing.assert_allclose(got[b], want, rtol=2e-4, atol=2e-4 * np.abs(want).max())


def test_samples_have_the_reference_covariance():
  ref = gaussian.GaussianReference.power_law(SHAPE, pixel_std=0.3)
  x = np.asarray(ref.sample(jax.random.PRNGKey(0), 40000), np.float64).reshape(40000, -1)
  np.testing.assert_allclose(np.cov(x.T), _dense_covariance(ref), atol=0.01 * 0.3 ** 2 * 5)
  np.testing.assert_allclose(x.mean(0), 0.45, atol=0.01)
  np.testing.assert_allclose(np.asarray(ref.pixel_variance()), 0.09, rtol=1e-5)


def test_marginal_samples_match_the_marginal_law():
  ref = gaussian.GaussianReference.power_law((8, 8, 1))
  sde = sde_lib.VPSDE()
  t = jnp.full((8192,), 0.3)
  x = ref.sample_marginal(jax.random.PRNGKey(1), sde, t)
  mean, lam_t = ref.marginal(sde, t[:1])
  v = gaussian.fourier_variances(x, mean[0])
  np.testing.assert_allclose(np.asarray(v / lam_t[0]), 1., atol=0.08)


def test_metrics_of_exact_samples_are_at_the_noise_floor_and_detect_shifts():
  ref = gaussian.GaussianReference.power_law((8, 8, 3))
  exact = ref.sample(jax.random.PRNGKey(2), 4096)
  m = gaussian.metrics(exact, ref)
  d = 8 * 8 * 3
  # A 4096-sample variance estimate has relative error sqrt(2/4096) = 0.022 per bin.
  assert m['log_variance_error'] < 0.035
  assert m['frechet_distance'] < 0.01 * float(jnp.sum(ref.spectrum))
  shifted = gaussian.metrics(exact + 0.1, ref)
  assert shifted['frechet_distance'] == pytest.approx(m['frechet_distance'] + d * 0.01, rel=0.05)
  scaled = gaussian.metrics(ref.mean + 2. * (exact - ref.mean), ref)
  assert scaled['log_variance_error'] == pytest.approx(np.log(4.), abs=0.05)  # variances × 4


def test_from_images_recovers_the_spectrum():
  ref = gaussian.GaussianReference.power_law((8, 8, 3), mean=0.3)
  fitted = gaussian.GaussianReference.from_images(np.asarray(ref.sample(jax.random.PRNGKey(3), 8192)))
  np.testing.assert_allclose(np.asarray(fitted.mean), 0.3, atol=0.01)
  np.testing.assert_allclose(np.log(np.asarray(fitted.spectrum) / np.asarray(ref.spectrum)), 0., atol=0.1)


def test_song_ermon_sigma_max_is_the_largest_pairwise_distance():
  ref = gaussian.GaussianReference.power_law((4, 4, 1))
  x = np.asarray(ref.sample(jax.random.PRNGKey(0), 50), np.float64).reshape(50, -1)
  brute = max(np.linalg.norm(a - b) for a in x for b in x)
  assert gaussian.song_ermon_sigma_max(ref, n=50) == pytest.approx(brute, rel=1e-6)


def test_kl_divergence_matches_monte_carlo_and_vanishes_on_itself():
  from pds_jax.init_aware import inits, metrics as toy_metrics
  p = gaussian.GaussianReference.power_law((8, 8, 3))
  q = gaussian.GaussianReference(mean=p.mean + 0.1, spectrum=p.spectrum * 1.5 + 0.01)
  assert gaussian.kl_divergence(p, p) == pytest.approx(0., abs=1e-9)
  x = p.sample(jax.random.PRNGKey(0), 20000)
  log_p, log_q = inits.SpectralGaussianInit(p).log_prob, inits.SpectralGaussianInit(q).log_prob
  mc, err = toy_metrics.kl_monte_carlo(log_p, log_q, x)
  assert gaussian.kl_divergence(p, q) == pytest.approx(mc, abs=4 * err + 1e-3)
  with pytest.raises(ValueError, match='shapes'):
    gaussian.kl_divergence(p, gaussian.GaussianReference.power_law((4, 4, 3)))


def test_kl_per_dim_of_the_sample_fit_matches_the_closed_form():
  ref = gaussian.GaussianReference.power_law((16, 16, 3))
  c, shift = 1.5, 0.2  # samples of N(μ + shift, c Σ): KL per dim → ½ (c - 1 - log c) + shift² Σ_k|U 1|² / (2 D λ)
  wide = gaussian.GaussianReference(ref.mean + shift, c * ref.spectrum)
  got = gaussian.metrics(np.asarray(wide.sample(jax.random.PRNGKey(0), 4000)), ref)['kl_per_dim']
  want = gaussian.kl_divergence(wide, ref) / ref.mean.size
  assert want == pytest.approx(0.5 * (c - 1 - np.log(c)) + float(np.sum(
      np.abs(np.fft.fft2(np.full((16, 16, 3), shift), axes=(0, 1))) ** 2 / 256 / np.asarray(ref.spectrum))) / 2 / 768)
  assert got == pytest.approx(want, rel=0.05)
  exact = gaussian.metrics(np.asarray(ref.sample(jax.random.PRNGKey(1), 4000)), ref)['kl_per_dim']
  assert exact < 0.01 * want
