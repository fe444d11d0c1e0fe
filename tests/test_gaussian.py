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


# ----------------------------------------------------------------------------- likelihood and conditionals (METHOD §6)


def _dense(ref, shape):
  n = int(np.prod(shape))
  half = np.asarray(ref._colour(jnp.eye(n).reshape((n,) + shape), ref.spectrum), np.float64).reshape(n, n)
  return half @ half.T


@pytest.mark.parametrize('sde', [None, sde_lib.VESDE(0.01, 5.), sde_lib.VPSDE()], ids=['data', 've', 'vp'])
def test_log_prob_matches_the_dense_gaussian(sde):
  ref = gaussian.GaussianReference.power_law(SHAPE, mean=0.2, pixel_std=0.4)
  x = np.random.RandomState(1).randn(3, *SHAPE)
  mean, cov = np.asarray(ref.mean, np.float64).ravel(), _dense_covariance(ref)
  if sde is not None:
    m = float(sde.marginal_prob(jnp.ones(1), jnp.full((1,), 0.3))[0][0])
    std = float(sde.marginal_prob(jnp.zeros(1), jnp.full((1,), 0.3))[1][0])
    mean, cov = m * mean, m ** 2 * cov + std ** 2 * np.eye(len(cov))
  diff = x.reshape(3, -1) - mean
  want = -0.5 * np.einsum('bi,bi->b', diff, np.linalg.solve(cov, diff.T).T) - 0.5 * np.linalg.slogdet(2 * np.pi * cov)[1]
  np.testing.assert_allclose(ref.log_prob(x, sde, 0.3) if sde else ref.log_prob(x), want, rtol=1e-6)


def test_pixel_conditional_matches_the_dense_schur_complement():
  ref = gaussian.GaussianReference.power_law(SHAPE, mean=0.2, pixel_std=0.4)
  mask = (np.random.RandomState(2).rand(*SHAPE) < 0.5).astype(np.float32)  # (H, W, C): per-channel masks
  y = np.asarray(ref.sample(jax.random.PRNGKey(4), 3), np.float64)
  got = ref.condition_on_pixels(y, mask)
  cov, k = _dense_covariance(ref), mask.ravel() == 1
  u = ~k
  gain = np.linalg.solve(cov[np.ix_(k, k)], cov[np.ix_(k, u)])
  mu = np.asarray(ref.mean, np.float64).ravel()
  want = y.reshape(3, -1).copy()
  want[:, u] = mu[u] + (y.reshape(3, -1)[:, k] - mu[k]) @ gain
  np.testing.assert_allclose(got.mean.reshape(3, -1), want, atol=1e-5)  # the dense Σ is float32-built
  assert got.trace == pytest.approx(np.trace(cov[np.ix_(u, u)] - cov[np.ix_(u, k)] @ gain), rel=1e-5)
  assert got.marginal_trace == pytest.approx(np.trace(cov[np.ix_(u, u)]), rel=1e-5)
  assert got.error_ratio(got.mean) == 0. and got.ignore_ratio() > 1.
  with pytest.raises(ValueError, match='does not fit'):
    ref.condition_on_pixels(y, mask[:2])
  with pytest.raises(ValueError, match='0 or 1'):
    ref.condition_on_pixels(y, mask * 2)


def test_colour_conditional_matches_the_dense_schur_complement():
  shape = (4, 6, 3)
  base = gaussian.GaussianReference.power_law(shape, mean=0.3, pixel_std=0.3)
  base = base.replace(spectrum=base.spectrum * jnp.asarray([1., 0.2, 0.05]))
  q, _ = np.linalg.qr(np.random.RandomState(3).randn(3, 3))
  ref = gaussian.ColourGaussianReference(base=base, rotation=jnp.asarray(q, jnp.float32))
  basis = np.linalg.qr(np.random.RandomState(4).randn(3, 3))[0]
  x = np.asarray(ref.sample(jax.random.PRNGKey(0), 2), np.float64)
  got = ref.condition_on_channels(x, basis, [0])
  # d = (Bᵀ Q) z per pixel: a dense (D, D) linear map of z, whose covariance is dense too.
  per_pixel = np.kron(np.eye(shape[0] * shape[1]), basis.T @ np.asarray(ref.rotation, np.float64))
  cov = per_pixel @ _dense(base, shape) @ per_pixel.T
  k = np.tile([True, False, False], shape[0] * shape[1])
  u = ~k
  mean_d = per_pixel @ np.asarray(base.mean, np.float64).ravel()
  d = np.einsum('nhwi,ij->nhwj', x, basis).reshape(2, -1)
  gain = np.linalg.solve(cov[np.ix_(k, k)], cov[np.ix_(k, u)])
  np.testing.assert_allclose(got.mean.reshape(2, -1)[:, u], mean_d[u] + (d[:, k] - mean_d[k]) @ gain, atol=1e-5)
  assert got.trace == pytest.approx(np.trace(cov[np.ix_(u, u)] - cov[np.ix_(u, k)] @ gain), rel=1e-5)
  # its exact score is the gradient of the dense log-density of x = Q z
  sde = sde_lib.VESDE(0.01, 5.)
  t = jnp.full((2,), 0.4)
  std = float(sde.marginal_prob(jnp.zeros(1), t[:1])[1][0])
  pix = np.kron(np.eye(shape[0] * shape[1]), np.asarray(ref.rotation, np.float64))
  cov_x = pix @ _dense(base, shape) @ pix.T + std ** 2 * np.eye(cov.shape[0])
  want = -np.linalg.solve(cov_x, (x.reshape(2, -1) - np.asarray(ref.mean, np.float64).ravel()).T).T
  np.testing.assert_allclose(np.asarray(ref.score(jnp.asarray(x, jnp.float32), t, sde)).reshape(2, -1), want,
                             rtol=2e-4, atol=2e-4 * np.abs(want).max())
