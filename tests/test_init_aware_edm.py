"""Tests for pds_jax.init_aware.edm: σ grids, denoisers, EDM/ancestral samplers, the PC sampler from σ_T.

References are closed forms of the exact Gaussian data N(μ, Σ) (pds_jax.gaussian): per Fourier
mode k (variance λ_k), the probability-flow ODE maps x_T - μ to sqrt((λ + σ²) / (λ + σ_T²)) (x_T - μ),
the denoiser is μ + λ / (λ + σ²) (x - μ), and an ancestral step is a linear Gaussian recursion.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.tree_util import Partial

from pds_jax import gaussian, sampling, sde_lib
from pds_jax.init_aware import edm
from pds_jax.preconditioning import Preconditioner

SHAPE = (4, 4, 1)
REF = gaussian.GaussianReference.power_law(SHAPE, mean=0.3, pixel_std=0.5)


def _fourier(x):
  return jnp.fft.fft2(x, axes=(-3, -2))


def _ifourier(c):
  return jnp.real(jnp.fft.ifft2(c, axes=(-3, -2)))


def _exact_denoiser(ref, x, sigma):
  """E[x_0 | x] = μ + F⁻¹[λ / (λ + σ²) F(x - μ)] for σ (B,)."""
  s2 = (sigma ** 2)[:, None, None, None]
  return ref.mean + _ifourier(ref.spectrum / (ref.spectrum + s2) * _fourier(x - ref.mean))


DENOISER = Partial(_exact_denoiser, REF)


def _x_t(sigma_t, n=8, seed=0):
  return gaussian.GaussianReference(REF.mean, REF.spectrum + sigma_t ** 2).sample(jax.random.PRNGKey(seed), n)


def _ode_solution(x_t, sigma_t, sigma_end):
  ratio = jnp.sqrt((REF.spectrum + sigma_end ** 2) / (REF.spectrum + sigma_t ** 2))
  return REF.mean + _ifourier(ratio * _fourier(x_t - REF.mean))


# ----------------------------------------------------------------------------- grids


def test_karras_sigmas_follow_the_edm_formula():
  s = edm.karras_sigmas(80., 0.002, 18, 7.)
  i = np.arange(18)
  want = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
  np.testing.assert_allclose(s[:-1], want, rtol=1e-14)
  assert s[-1] == 0 and len(s) == 19 and s[0] == pytest.approx(80.) and s[-2] == pytest.approx(0.002)
  assert len(edm.karras_sigmas(80., 0.002, 18, append_zero=False)) == 18
  assert np.all(np.diff(s) < 0)


@settings(max_examples=30, deadline=None)
@given(st.floats(0.01, 100.), st.floats(1.01, 1e4), st.integers(2, 50), st.floats(0.5, 10.))
def test_karras_sigmas_decrease_from_sigma_max_to_sigma_min(sigma_min, ratio, n, rho):
  s = edm.karras_sigmas(sigma_min * ratio, sigma_min, n, rho, append_zero=False)
  assert s.shape == (n,) and s.dtype == np.float64 and np.all(np.diff(s) < 0)
  np.testing.assert_allclose([s[0], s[-1]], [sigma_min * ratio, sigma_min], rtol=1e-8)


@pytest.mark.parametrize('args', [(1., 2., 10), (0., 1., 10), (2., 1., 1), (2., 1., 10, 0.)])
def test_karras_sigmas_reject_bad_settings(args):
  with pytest.raises(ValueError, match='karras_sigmas'):
    edm.karras_sigmas(*args)


def test_truncate_sigmas_starts_at_sigma_t_or_at_the_official_node():
  grid = edm.karras_sigmas(3., 2e-4, 40, 2., append_zero=False)
  ours = edm.truncate_sigmas(grid, 1.0)
  assert ours[0] == 1.0 and np.all(ours[1:] < 1.0) and ours[-1] == pytest.approx(2e-4)
  np.testing.assert_array_equal(ours[1:], grid[grid < 1.0])
  official = edm.truncate_sigmas(grid, 1.0, start_at_sigma_t=False)
  np.testing.assert_array_equal(official, np.sort(grid)[np.sort(grid) <= 1.0][::-1])
  with pytest.raises(ValueError, match='sigma_T = 0.0001 must exceed the smallest positive node'):
    edm.truncate_sigmas(grid, 1e-4)
  with pytest.raises(ValueError, match='sigma_T = 0.0002 must exceed'):
    edm.truncate_sigmas(grid, 2e-4)
  with pytest.raises(ValueError, match='strictly decreasing'):
    edm.truncate_sigmas(grid[::-1], 1.0)


# ----------------------------------------------------------------------------- denoisers


@pytest.mark.parametrize('sde', [sde_lib.VESDE(0.01, 50.), sde_lib.VPSDE(), sde_lib.subVPSDE()],
                         ids=['ve', 'vp', 'subvp'])
def test_sigma_to_time_inverts_the_marginal_noise_level(sde):
  sigma = jnp.array([0.05, 0.3, 1., 4., 20.])
  t, m = edm.sigma_to_time(sde, sigma)
  mean, std = sde.marginal_prob(jnp.ones_like(t), t)
  np.testing.assert_allclose(m, mean, rtol=1e-5)
  np.testing.assert_allclose(std / mean, sigma, rtol=1e-4)


def test_ve_vp_and_subvp_denoisers_agree_with_the_exact_posterior_mean():
  x = _x_t(2., n=5, seed=1)
  sigma = jnp.array([0.05, 0.3, 1., 4., 20.])
  want = _exact_denoiser(REF, x, sigma)
  for sde in (sde_lib.VESDE(0.01, 50.), sde_lib.VPSDE(), sde_lib.subVPSDE()):
    got = edm.denoiser_from_score(REF.score_fn(sde), sde)(x, sigma)
    # Relative to ‖x - μ‖: D = x + σ² s cancels in float32 at large σ.
    err = jnp.linalg.norm((got - want).reshape(5, -1), axis=1) / jnp.linalg.norm((x - REF.mean).reshape(5, -1), axis=1)
    assert float(err.max()) < 2e-5, (type(sde).__name__, err)


def test_denoiser_takes_a_scalar_sigma_and_rejects_other_sdes():
  sde = sde_lib.VESDE(0.01, 50.)
  den = edm.denoiser_from_score(REF.score_fn(sde), sde)
  x = _x_t(1., n=3)
  np.testing.assert_array_equal(den(x, 1.), den(x, jnp.ones(3)))
  with pytest.raises(TypeError, match='unsupported SDE'):
    edm.sigma_to_time(object(), jnp.ones(2))


# ----------------------------------------------------------------------------- samplers: convergence


def _slope(steps, errors):
  return np.polyfit(np.log(steps), np.log(errors), 1)[0]


@pytest.mark.parametrize('name, order', [('heun', 2), ('euler', 1)])
def test_ode_samplers_converge_to_the_exact_flow_at_their_order(name, order):
  sigma_t, sigma_end = 5., 0.05
  x_t = _x_t(sigma_t)
  exact = _ode_solution(x_t, sigma_t, sigma_end)
  sampler = jax.jit(edm.get_sampler(name))
  steps = np.array([8, 16, 32, 64])
  errors = []
  for n in steps:
    sigmas = edm.karras_sigmas(sigma_t, sigma_end, n + 1, 7., append_zero=False)
    out, nfe = sampler(DENOISER, x_t, sigmas, None)
    assert int(nfe) == n * order
    errors.append(float(jnp.max(jnp.abs(out - exact))))
  slope = _slope(steps, errors)
  assert -order - 0.4 < slope < -order + 0.3, (errors, slope)
  assert errors[-1] < (2e-3 if order == 2 else 5e-2)


def test_heun_on_the_edm_grid_skips_the_correction_on_the_last_step():
  sigmas = edm.karras_sigmas(2., 0.002, 10, 7.)
  x_t = _x_t(2.)
  out, nfe = jax.jit(edm.heun_sampler)(DENOISER, x_t, sigmas, None)
  assert int(nfe) == 2 * 10 - 1
  # The last step from σ_min to 0 is Euler: x = D(x, σ_min).
  before, _ = jax.jit(edm.heun_sampler)(DENOISER, x_t, sigmas[:-1], None)
  np.testing.assert_allclose(out, _exact_denoiser(REF, before, jnp.full(8, sigmas[-2], jnp.float32)), atol=1e-6)


def _ancestral_variances(sigmas, lam):
  """Exact per-mode variance of the ancestral chain's output from x_T ~ p_T, λ the data variances."""
  v = lam + sigmas[0] ** 2
  for s, s_next in zip(sigmas[:-1], sigmas[1:]):
    r = s_next ** 2 / s ** 2
    a = r + (1 - r) * lam / (lam + s ** 2)
    v = a ** 2 * v + (s_next / s) ** 2 * (s ** 2 - s_next ** 2)
  return v


def test_ancestral_chain_reaches_the_target_as_steps_grow():
  lam = np.asarray(REF.spectrum, np.float64)
  steps = np.array([5, 10, 20, 40, 80, 160])
  errors = [np.abs(np.log(_ancestral_variances(edm.karras_sigmas(3., 2e-3, n, 2.), lam) / lam)).max() for n in steps]
  assert np.all(np.diff(errors) < 0) and errors[-1] < 0.06, errors
  assert -1.3 < _slope(steps[2:], errors[2:]) < -0.8, errors  # first order in the number of steps


def test_ancestral_sampler_has_the_exact_output_law():
  sigmas = edm.karras_sigmas(3., 2e-3, 12, 2.)
  n = 4000
  x_t = _x_t(3., n=n, seed=3)
  out, nfe = jax.jit(edm.ancestral_sampler)(DENOISER, x_t, sigmas, jax.random.PRNGKey(4))
  assert int(nfe) == 12
  want = _ancestral_variances(sigmas, np.asarray(REF.spectrum, np.float64))
  got = np.asarray(gaussian.fourier_variances(out, REF.mean), np.float64)
  # Per-mode sample variances of 4000 draws: relative sd ≈ sqrt(2 / 4000) ≈ 2.2% (3.2% for real modes).
  rel = got / want - 1
  assert np.abs(rel).max() < 0.15 and abs(rel.mean()) < 0.02, rel
  np.testing.assert_allclose(np.asarray(out).mean(0), np.asarray(REF.mean), atol=0.05)


# ----------------------------------------------------------------------------- samplers: PDS, keys, jit


def _plain_reference(name, x, sigmas, rng, k2=1., k1=1.):
  """EDM's loops written out step by step (K = k2 I, M = k1 I)."""
  sigmas = jnp.asarray(sigmas, jnp.float32)
  for i in range(len(sigmas) - 1):
    s, s_next = sigmas[i], sigmas[i + 1]
    denoised = DENOISER(x, s * jnp.ones(x.shape[0]))
    if name == 'ancestral':
      r = s_next ** 2 / s ** 2
      z = sampling.normal(jax.random.fold_in(rng, i), x.shape)
      x = x + (1 - r) * k2 * (denoised - x) + s_next / s * jnp.sqrt(s ** 2 - s_next ** 2) * k1 * z
      continue
    d = (x - denoised) / s
    x_euler = x + (s_next - s) * k2 * d
    if name == 'heun' and s_next > 0:
      d_prime = (x_euler - DENOISER(x_euler, s_next * jnp.ones(x.shape[0]))) / s_next
      x = x + (s_next - s) * k2 * (0.5 * d + 0.5 * d_prime)
    else:
      x = x_euler
  return x


@pytest.mark.parametrize('name', ['euler', 'heun', 'ancestral'])
def test_identity_pds_is_bit_for_bit_the_plain_sampler(name):
  sampler = jax.jit(edm.get_sampler(name))
  sigmas = edm.karras_sigmas(2., 0.01, 6, 7.)
  x_t, rng = _x_t(2.), jax.random.PRNGKey(7)
  plain, _ = sampler(DENOISER, x_t, sigmas, rng)
  identity, _ = sampler(DENOISER, x_t, sigmas, rng, preconditioner=Preconditioner())
  np.testing.assert_array_equal(identity, plain)
  # The identity preconditioner adds no operation at all to the traced sampler (a mask adds FFTs).
  sample = lambda p: lambda x: edm.get_sampler(name)(DENOISER, x, sigmas, rng, preconditioner=p)
  trace = lambda p: str(jax.make_jaxpr(sample(p))(x_t))
  assert trace(Preconditioner()) == trace(None)
  assert trace(Preconditioner(freq_mask=jnp.ones(SHAPE))).count('fft') > trace(None).count('fft')
  # Eager step-by-step EDM loop (XLA fuses the scan differently: equal up to float32 rounding).
  np.testing.assert_allclose(plain, _plain_reference(name, x_t, sigmas, rng), rtol=0, atol=2e-6)


@pytest.mark.parametrize('name', ['euler', 'heun', 'ancestral'])
def test_pds_preconditions_the_update_direction(name):
  c = 1.3  # M = c I through the frequency mask: K = c² I, M z = c z
  precond = Preconditioner(freq_mask=jnp.full(SHAPE, c, jnp.float32))
  sigmas = edm.karras_sigmas(2., 0.01, 6, 7.)
  x_t, rng = _x_t(2.), jax.random.PRNGKey(7)
  out, _ = jax.jit(edm.get_sampler(name))(DENOISER, x_t, sigmas, rng, preconditioner=precond)
  want = _plain_reference(name, x_t, sigmas, rng, k2=c ** 2, k1=c)
  np.testing.assert_allclose(out, want, rtol=0, atol=2e-5)
  plain, _ = edm.get_sampler(name)(DENOISER, x_t, sigmas, rng)
  assert float(jnp.max(jnp.abs(out - plain))) > 1e-3


def test_ancestral_per_sample_keys_make_items_independent_of_the_batch():
  sigmas = edm.karras_sigmas(2., 0.01, 6, 2.)
  x_t = _x_t(2., n=4)
  keys = sampling.sample_keys(0, 0, 4)
  full, _ = jax.jit(edm.ancestral_sampler)(DENOISER, x_t, sigmas, keys)
  part, _ = jax.jit(edm.ancestral_sampler)(DENOISER, x_t[2:], sigmas, keys[2:])
  np.testing.assert_allclose(full[2:], part, atol=1e-6)
  assert float(jnp.max(jnp.abs(full[0] - full[1]))) > 0


def test_callback_sees_every_step_in_order():
  seen = []
  sigmas = edm.karras_sigmas(2., 0.01, 5, 7.)
  out, _ = edm.heun_sampler(DENOISER, _x_t(2.), sigmas, callback=lambda info: seen.append(
      (int(info['i']), float(info['sigma']), np.asarray(info['x']))))
  jax.block_until_ready(out)
  assert [s[0] for s in seen] == list(range(5))
  np.testing.assert_allclose([s[1] for s in seen], sigmas[:-1], rtol=1e-6)
  np.testing.assert_array_equal(seen[-1][2], out)


def test_samplers_reject_a_grid_of_one_level():
  with pytest.raises(ValueError, match='sigmas must be a 1-D grid of >= 2'):
    edm.heun_sampler(DENOISER, _x_t(1.), np.array([1.]))
  with pytest.raises(ValueError, match="Unknown EDM sampler 'dpm'"):
    edm.get_sampler('dpm')


# ----------------------------------------------------------------------------- the PC sampler from σ_T


def test_pc_sample_from_at_sigma_max_is_the_core_pc_sampler():
  sde = sde_lib.VESDE(0.01, 5., N=12)
  score_fn = REF.score_fn(sde)
  shape = (6,) + SHAPE
  sampler = sampling.get_pc_sampler(sde, shape, 'reverse_diffusion', 'langevin', lambda x: x, snr=0.16, eps=1e-5)
  rng = jax.random.PRNGKey(3)
  want, nfe = sampler(rng, score_fn)
  rng_run, rng_prior = sampling.split(rng)
  x_t = sde.prior_sampling(rng_prior, shape)
  got, got_nfe = edm.pc_sample_from(rng_run, score_fn, sde, x_t, 5., num_steps=12, snr=0.16, eps=1e-5)
  assert got_nfe == nfe == 24
  # The same steps on the same carry; only XLA's fusion of the extra t -> 1.0 · t differs (ulps).
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_pc_sample_from_queries_the_model_on_the_truncated_grid():
  sde = sde_lib.VESDE(0.01, 50., N=1000)
  seen = []

  def score_fn(x, t):
    jax.debug.callback(lambda t: seen.append(float(t[0])), t)
    return REF.score(x, t, sde)

  x_t = _x_t(1.5, n=4)
  out, nfe = edm.pc_sample_from(jax.random.PRNGKey(0), score_fn, sde, x_t, 1.5, corrector='none')
  jax.block_until_ready(out)
  sigma = lambda t: 0.01 * (50. / 0.01) ** np.asarray(t)
  kappa = np.log(1.5 / 0.01) / np.log(50. / 0.01)
  assert nfe == len(seen) == int(round(999 * (kappa - 1e-5) / (1 - 1e-5))) + 1
  np.testing.assert_allclose(sigma(seen[0]), 1.5, rtol=1e-5)
  np.testing.assert_allclose(sigma(seen[-1]), sigma(1e-5), rtol=1e-5)
  assert np.all(np.diff(seen) < 0)


def test_pc_sample_from_an_exact_init_recovers_the_data_law():
  sde = sde_lib.VESDE(0.01, 50., N=1000)
  run = lambda x_t: edm.pc_sample_from(jax.random.PRNGKey(1), REF.score_fn(sde), sde, x_t, 0.5, num_steps=40,
                                       corrector='none')[0]
  x_t = _x_t(0.5, n=2000, seed=5)
  informed = gaussian.metrics(run(x_t), REF)['frechet_distance']
  blind = gaussian.metrics(run(0.5 * jax.random.normal(jax.random.PRNGKey(5), x_t.shape)), REF)['frechet_distance']
  assert informed < 0.01 and blind > 0.5, (informed, blind)  # measured: 0.0026 and 0.94


def test_pc_sample_from_rejects_bad_sigma_t_and_sdes():
  sde = sde_lib.VESDE(0.01, 50., N=100)
  x_t = _x_t(1., n=2)
  with pytest.raises(ValueError, match=r'sigma_T = 0.01 must lie in \(sigma\(eps\)'):
    edm.pc_sample_from(jax.random.PRNGKey(0), REF.score_fn(sde), sde, x_t, 0.01)
  with pytest.raises(ValueError, match='sigma_T = 60.0 must lie in'):
    edm.pc_sample_from(jax.random.PRNGKey(0), REF.score_fn(sde), sde, x_t, 60.)
  with pytest.raises(TypeError, match='needs a VESDE model'):
    edm.pc_sample_from(jax.random.PRNGKey(0), REF.score_fn(sde_lib.VPSDE()), sde_lib.VPSDE(), x_t, 1.)
