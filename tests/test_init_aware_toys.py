"""Tests for pds_jax.init_aware.toys and .metrics: exact densities, scores, official settings, metrics."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from pds_jax.init_aware import metrics, toys

GRID = toys.grid_gaussian_mixture()
T2 = toys.random_student_t_mixture()
T10 = toys.random_student_t_mixture(dim=10, n_mixture=20)
# One draw of one size per mixture, sliced by the tests: every new shape recompiles jax.random.gamma (~2 s).
SAMPLES = {name: mix.sample(jax.random.PRNGKey(0), 100000) for name, mix in (('grid', GRID), ('t2', T2), ('t10', T10))}


def test_grid_mixture_matches_the_official_construction():
  # The official numpyro build (create_data_gmm.build_gmm_ref_dist, key 0, numpyro 0.20.1):
  # Dirichlet weights and a 10⁵-draw estimate of the standardisation (mean vector, pooled std).
  np.testing.assert_allclose(GRID.weights[:4], [0.02159883, 0.00512664, 0.04483109, 0.03467877], rtol=1e-5)
  assert GRID.means.shape == (25, 2) and float(GRID.weights.sum()) == pytest.approx(1., abs=1e-6)
  scale = 1. / float(GRID.means[1, 1] - GRID.means[0, 1])  # modes (-2, -2) and (-2, -1)
  shift = np.array([-2., -2.]) - scale * np.asarray(GRID.means[0])
  np.testing.assert_allclose(scale, 1.522849202, rtol=1e-3)
  np.testing.assert_allclose(shift, [0.44584537, 0.04923519], atol=5e-3)
  np.testing.assert_allclose(GRID.weights[:4], toys.grid_gaussian_mixture(seed=0).weights[:4])


@pytest.mark.parametrize('name', ['grid', 't2', 't10'])
def test_toys_are_centred_and_sample_their_moments(name):
  mixture = {'grid': GRID, 't2': T2, 't10': T10}[name]
  mean, cov = mixture.moments()
  np.testing.assert_allclose(mean, 0., atol=1e-5)
  assert float(jnp.mean(jnp.diag(cov))) <= 1.  # the pooled std also counts the spread of the raw means
  x = np.asarray(SAMPLES[name][:100000], np.float64)
  tol = 0.03 if name == 'grid' else 0.15  # t3 has no fourth moment: slow sample covariances
  np.testing.assert_allclose(x.mean(0), 0., atol=0.03)
  np.testing.assert_allclose(np.cov(x, rowvar=False), cov, atol=tol)


def test_random_gaussian_mixture_is_the_t_construction_with_gaussian_components():
  gmm = toys.random_gaussian_mixture()
  np.testing.assert_array_equal(gmm.weights, T10.weights)
  mean, cov = gmm.moments()
  np.testing.assert_allclose(mean, 0., atol=1e-5)
  # Same locations and scale matrices up to the standardisation: (μ_k - m) / s and Σ_k / s².
  ratio = np.asarray(gmm.covs[0]) / np.asarray(T10.scales[0])
  np.testing.assert_allclose(ratio, ratio[0, 0], rtol=1e-3)


def test_gaussian_mixture_log_prob_is_the_dense_density():
  x = SAMPLES['grid'][:5]
  for sigma in (0., 0.7):
    want = np.log(sum(w * stats.multivariate_normal(m, c + sigma ** 2 * np.eye(2)).pdf(np.asarray(x))
                      for w, m, c in zip(np.asarray(GRID.weights), np.asarray(GRID.means), np.asarray(GRID.covs))))
    np.testing.assert_allclose(GRID.noised_log_prob(x, sigma), want, rtol=1e-5)
    np.testing.assert_allclose(GRID.noised(sigma).log_prob(x), want, rtol=1e-5)


def test_gaussian_mixture_noised_score_is_the_gradient_of_the_noised_log_prob():
  x = SAMPLES['grid'][:64] * 1.5
  sigma = jnp.linspace(0.01, 3., 64)
  grad = jax.jit(jax.grad(lambda y, s: jnp.sum(GRID.noised_log_prob(y, s))))
  score = jax.jit(GRID.noised_score)
  for s in (jnp.zeros(64), jnp.full(64, 0.4), sigma):
    want = grad(x, s)
    np.testing.assert_allclose(score(x, s), want, rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()))
  np.testing.assert_allclose(GRID.denoiser(x, sigma), x + sigma[:, None] ** 2 * GRID.noised_score(x, sigma),
                             rtol=1e-6)
  np.testing.assert_allclose(GRID.score(x), GRID.noised_score(x, 0.), rtol=1e-6)


@pytest.mark.parametrize('name', ['t2', 't10'])
def test_student_t_quadrature_reproduces_the_closed_form_at_sigma_0(name):
  mixture, x = {'t2': T2, 't10': T10}[name], SAMPLES[name][:500]
  np.testing.assert_allclose(mixture.noised_log_prob(x, 0.), mixture.log_prob(x), atol=5e-5)


def test_student_t_closed_form_is_scipys_density():
  x = np.asarray(SAMPLES['t2'][:5], np.float64)
  want = np.log(sum(w * stats.multivariate_t(loc, shape, df=3).pdf(x)
                    for w, loc, shape in zip(np.asarray(T2.weights), np.asarray(T2.locs), np.asarray(T2.scales))))
  np.testing.assert_allclose(T2.log_prob(jnp.asarray(x, jnp.float32)), want, rtol=1e-5)


@pytest.mark.parametrize('mixture', [GRID, T2], ids=['gmm', 't'])
def test_noised_densities_integrate_to_one(mixture):
  u = np.linspace(-12., 12., 161)
  pts = jnp.asarray(np.stack(np.meshgrid(u, u, indexing='ij'), -1).reshape(-1, 2), jnp.float32)
  mass = float(jnp.sum(jnp.exp(mixture.noised_log_prob(pts, 0.6)))) * (u[1] - u[0]) ** 2
  assert mass == pytest.approx(1., abs=3e-3)  # t3 tails beyond |x| = 12 carry ~1e-3


def test_student_t_noised_density_matches_monte_carlo_convolution():
  sigma = 0.5
  y = SAMPLES['t2']
  x = jnp.array([[0., 0.], [1., -0.5], [-1.5, 1.]])
  sq = jnp.sum((x[:, None] - y[None]) ** 2, -1)
  mc = jnp.log(jnp.mean(jnp.exp(-sq / (2 * sigma ** 2)), axis=1)) - jnp.log(2 * jnp.pi * sigma ** 2)
  np.testing.assert_allclose(T2.noised_log_prob(x, sigma), mc, atol=0.05)  # MC: ~5000 effective draws
  den = T2.denoiser(x, sigma)
  np.testing.assert_allclose(den, x + sigma ** 2 * T2.noised_score(x, sigma), rtol=1e-6)
  # Tweedie: D(x, σ) = E[y | y + σ ε = x], here by self-normalised importance weights.
  w = jnp.exp(-sq / (2 * sigma ** 2))
  posterior_mean = (w @ y) / w.sum(1, keepdims=True)
  np.testing.assert_allclose(den, posterior_mean, atol=0.03)


def test_toys_reject_points_of_the_wrong_dimension():
  with pytest.raises(ValueError, match=r'GaussianMixture: expected points of shape \(B, 2\), got \(4, 3\)'):
    GRID.log_prob(jnp.zeros((4, 3)))
  with pytest.raises(ValueError, match=r'StudentTMixture: expected points of shape \(B, 2\), got \(2,\)'):
    T2.noised_log_prob(jnp.zeros(2), 1.)
  with pytest.raises(ValueError, match='df must be > 2'):
    toys.random_student_t_mixture(df=2.)
  with pytest.raises(ValueError, match='positive definite'):
    toys.GaussianMixture.from_covariances(np.ones(1), np.zeros((1, 2)), -np.eye(2)[None])


# ----------------------------------------------------------------------------- metrics


def test_wasserstein_1d_matches_scipy_and_the_replicated_sorting_formula():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=7), rng.normal(1., 2., size=5)
  np.testing.assert_allclose(metrics.wasserstein_1d(jnp.asarray(a), jnp.asarray(b), p=1),
                             stats.wasserstein_distance(a, b), rtol=1e-5)
  # W_2 of unequal sizes = W_2 of the equal-size samples that repeat each point of a 5 and of b 7 times.
  want = np.sqrt(np.mean((np.sort(np.repeat(a, 5)) - np.sort(np.repeat(b, 7))) ** 2))
  np.testing.assert_allclose(metrics.wasserstein_1d(jnp.asarray(a), jnp.asarray(b)), want, rtol=1e-5)


def test_sliced_and_max_sliced_wasserstein_on_gaussians():
  rng = jax.random.PRNGKey(0)
  k1, k2, k3 = jax.random.split(rng, 3)
  x = jax.random.normal(k1, (2000, 3))
  shift = jnp.array([0., 0., 1.2])
  y = jax.random.normal(k2, (2000, 3)) + shift
  # SW_2² = E_θ (θ·μ)² = ‖μ‖² / D, max-SW_2 = ‖μ‖ for equal covariances.
  np.testing.assert_allclose(metrics.sliced_wasserstein(x, y, k3, 512), 1.2 / np.sqrt(3), rtol=0.05)
  value, direction = metrics.max_sliced_wasserstein(x, y, k3, num_directions=4, num_steps=100, learning_rate=0.03)
  np.testing.assert_allclose(value, 1.2, rtol=0.06)  # the max over noisy directions is biased up
  np.testing.assert_allclose(jnp.abs(direction), [0., 0., 1.], atol=0.1)
  random_only, _ = metrics.max_sliced_wasserstein(x, y, k3, num_directions=4, num_steps=0)
  assert float(random_only) < float(value)
  # Different covariances: the max over θ of |sd_θ(y) - sd_θ(x)| is 3 - 1 = 2, along e_2.
  z = jax.random.normal(k2, (2000, 3)) * jnp.array([1., 3., 1.])
  value, direction = metrics.max_sliced_wasserstein(x, z, k3, num_directions=64, num_steps=100, learning_rate=0.03)
  np.testing.assert_allclose(value, 2., rtol=0.06)
  np.testing.assert_allclose(jnp.abs(direction), [0., 1., 0.], atol=0.1)
  with pytest.raises(ValueError, match=r'expected samples \(N, D\) and \(M, D\), got \(5, 2\) and \(5, 3\)'):
    metrics.sliced_wasserstein(jnp.zeros((5, 2)), jnp.zeros((5, 3)), k3)


def test_kl_monte_carlo_matches_the_gaussian_closed_form():
  p, q = stats.norm(0., 1.), stats.norm(1., 2.)
  x = np.random.default_rng(0).normal(size=(20000, 1))
  kl, se = metrics.kl_monte_carlo(lambda x: p.logpdf(x[:, 0]), lambda x: q.logpdf(x[:, 0]), x)
  exact = np.log(2.) + (1. + 1.) / 8. - 0.5
  assert abs(kl - exact) < 4 * se and se < 0.01
  with pytest.raises(ValueError, match=r'must return shape \(20000,\)'):
    metrics.kl_monte_carlo(lambda x: p.logpdf(x), lambda x: q.logpdf(x), x)


def test_tail_quantiles_of_a_projected_gaussian():
  x = np.random.default_rng(1).normal(size=(200000, 2)) * np.array([1., 2.])
  got = metrics.tail_quantiles(x, direction=np.array([0., 5.]), levels=(0.9, 0.99, 0.999))
  np.testing.assert_allclose(got, 2. * stats.norm.ppf([0.9, 0.99, 0.999]), rtol=0.03)
  np.testing.assert_allclose(metrics.tail_quantiles(x[:, 0], levels=(0.5,)), [0.], atol=0.01)
  with pytest.raises(ValueError, match='need a direction'):
    metrics.tail_quantiles(x)
  with pytest.raises(ValueError, match=r'direction must have shape \(2,\)'):
    metrics.tail_quantiles(x, direction=np.ones(3))
