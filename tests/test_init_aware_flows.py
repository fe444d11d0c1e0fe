"""Tests of pds_jax/init_aware/flows.py: the affine coupling flow and the FlowInit wrapper."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings, strategies as st

from pds_jax.init_aware.flows import CouplingFlow, FlowInit
from pds_jax.init_aware.inits import InitDistribution


@functools.lru_cache(maxsize=None)
def _params(dim, perturb, flow_layers=5):
  """The init parameters, moved by 0.1·N(0, 1) (numpy draws) when `perturb` so that neither the
  triangular affine nor any coupling is at its init (larger moves push coupling scales towards
  their 0.01 floor, and float32 round trips lose digits). Parameters depend on (dim, layers) only,
  so flows with other bases share them (and their compiled init)."""
  module = CouplingFlow(dim=dim, flow_layers=flow_layers)
  params = jax.jit(module.init)(jax.random.PRNGKey(0), jnp.zeros((1, dim)))['params']
  if not perturb:
    return params
  rng = np.random.default_rng(dim)
  return jax.tree_util.tree_map(lambda p: p + 0.1 * rng.standard_normal(p.shape).astype(np.float32), params)


def _flow(dim=2, base='gaussian', sigma=0.7, perturb=True, flow_layers=5):
  module = CouplingFlow(dim=dim, base_scale=sigma, base=base, flow_layers=flow_layers)
  return module, _params(dim, perturb, flow_layers)


def _apply(module, method):
  return jax.jit(functools.partial(module.apply, method=method))


def _identity_params(params):
  """Zero output layers: shift 0 and scale softplus(softplus⁻¹(0.99)) + 0.01 = 1 in every coupling,
  and L = I, loc = 0 at init, so the flow is its base distribution."""
  params = jax.tree_util.tree_map(lambda x: x, params)
  for name, cond in params.items():
    if name.startswith('conditioners_'):
      last = sorted(cond)[-1]
      cond[last] = jax.tree_util.tree_map(jnp.zeros_like, cond[last])
  return params


@pytest.mark.parametrize('dim,base', [(2, 'gaussian'), (5, 'student_t')])
def test_inverse_is_exact(dim, base):
  module, params = _flow(dim, base)
  x = 2. * jax.random.normal(jax.random.PRNGKey(3), (64, dim))
  w, _ = _apply(module, 'forward_and_log_det')({'params': params}, x)
  x_back = _apply(module, 'inverse')({'params': params}, w)
  np.testing.assert_allclose(x_back, x, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('dim,base', [(2, 'gaussian'), (5, 'student_t')])
def test_log_det_matches_jacobian(dim, base):
  module, params = _flow(dim, base)
  x = jax.random.normal(jax.random.PRNGKey(4), (5, dim))
  _, log_det = _apply(module, 'forward_and_log_det')({'params': params}, x)

  def w_of(xi):
    return module.apply({'params': params}, xi[None], method='forward_and_log_det')[0][0]

  jac = jax.jit(jax.vmap(jax.jacfwd(w_of)))(x)
  for j, ld in zip(jac, log_det):
    sign, logabs = np.linalg.slogdet(np.asarray(j, np.float64))
    assert sign != 0
    np.testing.assert_allclose(ld, logabs, atol=1e-4)


@pytest.mark.parametrize('base', ['gaussian', 'student_t'])
def test_density_integrates_to_one_in_2d(base):
  module, params = _flow(2, base, sigma=0.5)
  flow = FlowInit(module, params, 0.5)
  h = 0.03
  g = jnp.arange(-9., 9., h) + h / 2
  xx, yy = jnp.meshgrid(g, g)
  pts = jnp.stack([xx.ravel(), yy.ravel()], axis=1)
  dens = jnp.exp(flow.log_prob(pts))
  mass = float(jnp.sum(dens) * h * h)
  assert abs(mass - 1.) < 1e-2, mass
  # sample() draws from the same density: its mean matches the quadrature mean ∫ x q(x) dx.
  mean_q = np.asarray(jnp.sum(dens[:, None] * pts, axis=0) * h * h / mass)
  draws = np.clip(np.asarray(flow.sample(jax.random.PRNGKey(0), 20000)), -9., 9.)  # the quadrature box
  se = draws.std(axis=0) / np.sqrt(len(draws))
  np.testing.assert_array_less(np.abs(draws.mean(axis=0) - mean_q), 5 * se + 2e-2)


@pytest.mark.parametrize('base', ['gaussian', 'student_t'])
def test_base_distribution_matches_scipy(base):
  sigma = 0.8
  module, params = _flow(5, base, sigma=sigma, perturb=False)
  params = _identity_params(params)
  flow = FlowInit(module, params, sigma)
  x = jnp.asarray(np.random.default_rng(0).standard_t(3, size=(50, 5)) * 2.)
  ref = (scipy.stats.t(df=3, scale=sigma) if base == 'student_t' else scipy.stats.norm(scale=sigma))
  np.testing.assert_allclose(flow.log_prob(x), ref.logpdf(np.asarray(x, np.float64)).sum(axis=1),
                             rtol=1e-5, atol=1e-4)
  draws = np.asarray(flow.sample(jax.random.PRNGKey(1), 4000))
  for j in range(5):
    assert scipy.stats.kstest(draws[:, j], ref.cdf).pvalue > 1e-3


def test_triangular_affine_base():
  """With identity couplings and an even number of flips (d = 2, 4 layers) q = N(loc, σ² L Lᵀ)."""
  sigma = 0.6
  module, params = _flow(2, 'gaussian', sigma=sigma, perturb=False, flow_layers=4)
  params = _identity_params(params)
  params['triangular'] = jnp.array([[0.3, 9.], [-0.4, -1.]])  # the upper entry is ignored
  params['loc'] = jnp.array([0.5, -1.])
  raw = np.asarray(params['triangular'], np.float64)
  lower = np.tril(raw, -1) + np.diag(np.log1p(np.exp(np.diag(raw))))
  ref = scipy.stats.multivariate_normal(np.asarray(params['loc']), sigma ** 2 * lower @ lower.T)
  x = jax.random.normal(jax.random.PRNGKey(2), (20, 2))
  np.testing.assert_allclose(FlowInit(module, params, sigma).log_prob(x), ref.logpdf(np.asarray(x)),
                             rtol=1e-5, atol=1e-4)


@settings(max_examples=4, deadline=None)
@given(dim=st.sampled_from([2, 5]), n=st.integers(1, 7), base=st.sampled_from(['gaussian', 'student_t']))
def test_shapes_and_dtypes(dim, n, base):
  module, params = _flow(dim, base, perturb=False)
  flow = FlowInit(module, params, 0.7)
  x = flow.sample(jax.random.PRNGKey(n), n)
  assert x.shape == (n, dim) and x.dtype == jnp.float32
  lp = flow.log_prob(x)
  assert lp.shape == (n,) and lp.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(lp)))


def test_flow_init_is_a_pytree_with_the_init_protocol():
  module, params = _flow(2)
  flow = FlowInit(module, params, 0.7)
  assert isinstance(flow, InitDistribution) and flow.event_shape == (2,)
  x = jnp.ones((3, 2))
  np.testing.assert_allclose(jax.jit(lambda f: f.log_prob(x))(flow), flow.log_prob(x), rtol=1e-6)
  doubled = jax.tree_util.tree_map(lambda p: 2 * p, flow)
  assert isinstance(doubled, FlowInit) and doubled.sigma_t == 0.7


def test_architecture_matches_the_paper():
  """5 couplings, conditioner 3 hidden layers of 50 (relu6), flowjax-like init ranges."""
  module, params = _flow(5, perturb=False)
  conds = [k for k in params if k.startswith('conditioners_')]
  assert len(conds) == 5
  shapes = [params['conditioners_0'][f'Dense_{i}']['kernel'].shape for i in range(4)]
  assert shapes == [(2, 50), (50, 50), (50, 50), (50, 6)]  # (shift, scale) for each of 3 coordinates
  assert float(jnp.max(jnp.abs(params['conditioners_0']['Dense_1']['kernel']))) <= 1 / np.sqrt(50)
  np.testing.assert_allclose(jax.nn.softplus(jnp.diag(params['triangular'])), 1., rtol=1e-6)


@pytest.mark.parametrize('kwargs,match', [({'dim': 1}, 'at least 2'), ({'dim': 2, 'base': 'cauchy'}, 'base'),
                                          ({'dim': 2, 'base_scale': 0.}, 'positive')])
def test_invalid_settings_are_rejected(kwargs, match):
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(CouplingFlow(**kwargs).init, jax.random.PRNGKey(0), jnp.zeros((1, kwargs['dim'])))
