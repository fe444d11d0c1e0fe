"""Tests for pds_jax.sde_lib against closed forms and score_sde's discretisations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pds_jax import sde_lib

T = jnp.array([1e-3, 0.25, 0.5, 1.])
X = jnp.asarray(np.random.RandomState(0).randn(4, 3, 3, 2), jnp.float32)


def test_vesde_closed_forms():
  sde = sde_lib.VESDE(0.01, 50., 100)
  sigma = 0.01 * 5000. ** np.asarray(T)
  mean, std = sde.marginal_prob(X, T)
  np.testing.assert_array_equal(mean, X)
  np.testing.assert_allclose(std, sigma, rtol=1e-5)
  drift, g = sde.sde(X, T)
  assert not np.any(drift)
  np.testing.assert_allclose(g ** 2, 2 * np.log(5000.) * sigma ** 2, rtol=1e-5)  # d σ²/dt
  np.testing.assert_allclose(sde.discrete_sigmas, np.exp(np.linspace(np.log(0.01), np.log(50), 100)), rtol=1e-6)
  f, G = sde.discretize(X, T)
  i = (np.asarray(T) * 99).astype(int)
  prev = np.where(i == 0, 0., np.asarray(sde.discrete_sigmas)[i - 1])
  np.testing.assert_allclose(G, np.sqrt(np.asarray(sde.discrete_sigmas)[i] ** 2 - prev ** 2), rtol=1e-5)
  z = jnp.ones((2, 3))
  np.testing.assert_allclose(sde.prior_logp(z), -3 / 2 * np.log(2 * np.pi * 2500) - 3 / (2 * 2500), rtol=1e-6)


@pytest.mark.parametrize('cls', [sde_lib.VPSDE, sde_lib.subVPSDE])
def test_vp_marginals_solve_the_moment_equations(cls):
  """d m/dt = -½ β m and d v/dt = -β v + g² for the variance v of x(t) | x(0) = 0."""
  sde = cls(0.1, 20., 1000)
  t = jnp.linspace(0.05, 0.95, 7)
  m = lambda t: sde.marginal_prob(jnp.ones_like(t), t)[0]
  v = lambda t: sde.marginal_prob(jnp.zeros_like(t), t)[1] ** 2
  beta = 0.1 + t * 19.9
  dm = jax.vmap(jax.grad(lambda s: m(s[None])[0]))(t)
  dv = jax.vmap(jax.grad(lambda s: v(s[None])[0]))(t)
  g2 = sde.sde(jnp.zeros((7, 1)), t)[1] ** 2
  np.testing.assert_allclose(dm, -0.5 * beta * m(t), rtol=2e-3)
  np.testing.assert_allclose(dv, -beta * v(t) + g2, rtol=2e-3, atol=1e-4)


def test_vpsde_ddpm_discretisation_and_isinstance_semantics():
  sde = sde_lib.VPSDE(0.1, 20., 1000)
  betas = np.linspace(0.1 / 1000, 20 / 1000, 1000)
  np.testing.assert_allclose(sde.discrete_betas, betas, rtol=1e-5)
  np.testing.assert_allclose(sde.alphas_cumprod, np.cumprod(1 - betas), rtol=1e-4)
  f, G = sde.discretize(X, T)
  i = (np.asarray(T) * 999).astype(int)
  np.testing.assert_allclose(G, np.sqrt(betas[i]), rtol=1e-5)
  np.testing.assert_allclose(f, (np.sqrt(1 - betas[i]) - 1)[:, None, None, None] * X, rtol=1e-4, atol=1e-7)
  assert not isinstance(sde_lib.subVPSDE(), sde_lib.VPSDE)  # as in score_sde


@pytest.mark.parametrize('sde', [sde_lib.VESDE(), sde_lib.VPSDE(), sde_lib.subVPSDE()], ids=['ve', 'vp', 'subvp'])
def test_reverse_sde_and_probability_flow(sde):
  score_fn = lambda x, t: -x
  f, G = sde.discretize(X, T)
  rev_f, rev_G = sde.reverse(score_fn).discretize(X, T)
  np.testing.assert_allclose(rev_f, f + G[:, None, None, None] ** 2 * X, rtol=1e-6)
  np.testing.assert_array_equal(rev_G, G)
  ode_f, ode_G = sde.reverse(score_fn, probability_flow=True).discretize(X, T)
  np.testing.assert_allclose(ode_f, f + 0.5 * G[:, None, None, None] ** 2 * X, rtol=1e-6)
  assert not np.any(ode_G)
  drift, g = sde.reverse(score_fn).sde(X, T)
  np.testing.assert_allclose(drift, sde.sde(X, T)[0] + g[:, None, None, None] ** 2 * X, rtol=1e-6)
  assert sde.with_num_scales(7).N == 7 and type(sde.with_num_scales(7)) is type(sde)


def test_prior_sampling_and_errors():
  x = sde_lib.VESDE(0.01, 30., 10).prior_sampling(jax.random.PRNGKey(0), (4000, 4))
  assert abs(float(jnp.std(x)) - 30.) < 1.
  with pytest.raises(ValueError, match='sigma_min < sigma_max'):
    sde_lib.VESDE(1., 0.5)
  with pytest.raises(ValueError, match='positive integer'):
    sde_lib.VPSDE(N=0)
  from configs.default_cifar10_configs import get_default_configs
  config = get_default_configs()
  config.training.sde = 'edm'
  with pytest.raises(ValueError, match="training.sde = 'edm' is unknown"):
    sde_lib.get_sde(config)
