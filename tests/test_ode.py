"""Tests for pds_jax.samplers.ode: score_sde's probability-flow ODE sampler solved with diffrax.

Reference: on the exact Gaussian data the PF-ODE's flow map is known per Fourier coefficient,
U(x_t - m_t μ) = sqrt(v(t) / v(s)) U(x_s - m_s μ) with v = m² λ + σ² (docs/method.md §7).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pds_jax import gaussian, sde_lib
from pds_jax.samplers import ode
from pds_jax.samplers.driver import NonFiniteSampleError, Sampler
from pds_jax.preconditioning import Preconditioner

SHAPE = (8, 8, 2)
REF = gaussian.GaussianReference.power_law(SHAPE, mean=0.3, pixel_std=0.5)
SDES = [(sde_lib.VESDE(0.01, 20.), 1e-5), (sde_lib.VPSDE(), 1e-3), (sde_lib.subVPSDE(), 1e-3)]
IDS = ['ve', 'vp', 'subvp']


def _exact_map(sde, x, s, t):
  """The exact PF-ODE solution at time t from x at time s (scalars)."""
  mean_s, v_s = REF.marginal(sde, jnp.full((1,), s))
  mean_t, v_t = REF.marginal(sde, jnp.full((1,), t))
  f = jnp.fft.fft2(x - mean_s, axes=(-3, -2)) * jnp.sqrt(v_t / v_s)
  return mean_t + jnp.real(jnp.fft.ifft2(f, axes=(-3, -2)))


@pytest.mark.parametrize('sde, eps', SDES, ids=IDS)
def test_pf_ode_matches_the_exact_flow_map(sde, eps):
  x_t = REF.sample_marginal(jax.random.PRNGKey(0), sde, jnp.ones(4))
  solver = ode.ODESolver(sde, eps, denoise=False)
  out, nfe = Sampler(solver, x_t.shape)(jax.random.PRNGKey(1), REF.score_fn(sde), x_init=x_t)
  want = _exact_map(sde, x_t, 1., eps)
  scale = float(jnp.max(jnp.abs(want - REF.mean)))
  assert float(jnp.max(jnp.abs(out - want))) < 2e-3 * scale, float(jnp.max(jnp.abs(out - want)))
  assert 30 < nfe < 2000


def test_nfe_is_counted_from_the_solver_statistics():
  sde, eps = SDES[0]
  count = []

  def score_fn(x, t):
    jax.debug.callback(lambda t: count.append(1), t)
    return REF.score(x, t, sde)

  x_t = REF.sample_marginal(jax.random.PRNGKey(0), sde, jnp.ones(1))
  for denoise in (False, True):
    count.clear()
    out, nfe = Sampler(ode.ODESolver(sde, eps, denoise=denoise), x_t.shape)(jax.random.PRNGKey(1), score_fn,
                                                                              x_init=x_t)
    jax.block_until_ready(out)
    assert nfe == len(count) and (nfe - 1 - denoise) % 6 == 0, (nfe, len(count))


def test_denoise_is_tweedie_at_eps_for_ve():
  sde, eps = SDES[0]
  x_t = REF.sample_marginal(jax.random.PRNGKey(0), sde, jnp.ones(3))
  solve = lambda denoise: Sampler(ode.ODESolver(sde, eps, denoise=denoise), x_t.shape)(
      jax.random.PRNGKey(1), REF.score_fn(sde), x_init=x_t)
  (raw, nfe_raw), (den, nfe_den) = solve(False), solve(True)
  sigma = sde.discrete_sigmas[0]  # reverse_diffusion's x_mean at eps: x + σ_0² s(x, eps)
  want = raw + sigma ** 2 * REF.score(raw, jnp.full((3,), eps), sde)
  np.testing.assert_allclose(den, want, atol=1e-5)
  assert nfe_den == nfe_raw + 1


def test_each_sample_is_solved_on_its_own():
  sde, eps = SDES[1]
  x_t = REF.sample_marginal(jax.random.PRNGKey(0), sde, jnp.ones(6))
  run = lambda x: Sampler(ode.ODESolver(sde, eps), x.shape)(jax.random.PRNGKey(1), REF.score_fn(sde), x_init=x)[0]
  np.testing.assert_allclose(run(x_t)[2:4], run(x_t[2:4]), rtol=0, atol=1e-6)


def test_pds_masks_are_refused_and_failures_are_reported():
  sde, eps = SDES[0]
  x_t = REF.sample_marginal(jax.random.PRNGKey(0), sde, jnp.ones(2))
  sampler = Sampler(ode.ODESolver(sde, eps, max_steps=64), x_t.shape)
  with pytest.raises(ValueError, match="'ode' is a deterministic ODE solver"):
    sampler(jax.random.PRNGKey(0), REF.score_fn(sde), Preconditioner(freq_mask=jnp.full(SHAPE, 1.2)), x_init=x_t)

  def broken(x, t):  # NaN below t = 0.5
    return jnp.where(t[:, None, None, None] < 0.5, jnp.nan, REF.score(x, t, sde))

  with pytest.raises(NonFiniteSampleError, match='ode: the adaptive solve of 2 of 2 samples did not reach eps within 64 steps.*at step 0 of 2'):
    sampler(jax.random.PRNGKey(0), broken, x_init=x_t)
  with pytest.raises(ValueError, match="ode_method = 'euler'"):
    ode.ODESolver(sde, eps, method='euler')
  with pytest.raises(ValueError, match='eps must lie in'):
    ode.ODESolver(sde, 2.)
