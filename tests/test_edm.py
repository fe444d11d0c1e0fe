"""Tests for pds_jax.samplers.grid, .edm and .dpm_solver: σ grids, denoisers, the σ-grid methods, the PC method from σ_T.

References are closed forms of the exact Gaussian data N(μ, Σ) (pds_jax.gaussian): per Fourier
mode k (variance λ_k), the probability-flow ODE maps x̃ - μ at σ_s to sqrt((λ + σ²) / (λ + σ_s²)) (x̃ - μ)
at σ (docs/method.md §7), the denoiser is μ + λ / (λ + σ²) (x̃ - μ), and an ancestral step is a linear
Gaussian recursion. Every σ-grid method runs through the driver (`pds_jax.samplers.driver.Sampler`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pds_jax import gaussian, sampling, sde_lib
from pds_jax.samplers import dpm_solver, edm, grid
from pds_jax.samplers.driver import Sampler
from pds_jax.preconditioning import Preconditioner

SHAPE = (4, 4, 1)
REF = gaussian.GaussianReference.power_law(SHAPE, mean=0.3, pixel_std=0.5)
VE = sde_lib.VESDE(0.01, 50.)
SDES = [VE, sde_lib.VPSDE(), sde_lib.subVPSDE()]
SDE_IDS = ['ve', 'vp', 'subvp']


def _fourier(x):
  return jnp.fft.fft2(x, axes=(-3, -2))


def _ifourier(c):
  return jnp.real(jnp.fft.ifft2(c, axes=(-3, -2)))


def _exact_denoiser(x, sigma):
  """E[x_0 | x̃] = μ + F⁻¹[λ / (λ + σ²) F(x̃ - μ)] for σ (B,)."""
  s2 = (sigma ** 2)[:, None, None, None]
  return REF.mean + _ifourier(REF.spectrum / (REF.spectrum + s2) * _fourier(x - REF.mean))


def _x_t(sigma_t, n=8, seed=0):
  """Exact draws of x̃ at σ_T: N(μ, Σ + σ_T² I)."""
  return gaussian.GaussianReference(REF.mean, REF.spectrum + sigma_t ** 2).sample(jax.random.PRNGKey(seed), n)


def _ode_solution(x_t, sigma_t, sigma_end):
  ratio = jnp.sqrt((REF.spectrum + sigma_end ** 2) / (REF.spectrum + sigma_t ** 2))
  return REF.mean + _ifourier(ratio * _fourier(x_t - REF.mean))


def _run(solver, x_t, rng=None, precond=None):
  """(output in the SDE's variable, nfe) from x̃_T; x_init is the SDE's variable x = m x̃."""
  m = solver.sde.edm_scale(jnp.float32(solver.t_start))
  rng = jax.random.PRNGKey(0) if rng is None else rng
  return Sampler(solver, x_t.shape)(rng, REF.score_fn(solver.sde), precond, x_init=m * x_t)


def _solver(name, sde, sigmas, order=2):
  return {'euler': lambda: edm.EulerSolver(sde, sigmas), 'heun': lambda: edm.HeunSolver(sde, sigmas),
          'ancestral': lambda: edm.AncestralSolver(sde, sigmas),
          'dpm_solver': lambda: dpm_solver.DPMSolver(sde, sigmas, order),
          'dpm_solver++': lambda: dpm_solver.DPMSolverPP(sde, sigmas, order, lower_order_final=True),
          'dpm_solver++/full': lambda: dpm_solver.DPMSolverPP(sde, sigmas, order)}[name]()


# ----------------------------------------------------------------------------- grids


def test_karras_sigmas_follow_the_edm_formula():
  s = grid.karras_sigmas(80., 0.002, 18, 7.)
  i = np.arange(18)
  want = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
  np.testing.assert_allclose(s[:-1], want, rtol=1e-14)
  assert s[-1] == 0 and len(s) == 19 and s[0] == pytest.approx(80.) and s[-2] == pytest.approx(0.002)
  assert len(grid.karras_sigmas(80., 0.002, 18, append_zero=False)) == 18
  assert np.all(np.diff(s) < 0)


@settings(max_examples=30, deadline=None)
@given(st.floats(0.01, 100.), st.floats(1.01, 1e4), st.integers(2, 50), st.floats(0.5, 10.))
def test_karras_sigmas_decrease_from_sigma_max_to_sigma_min(sigma_min, ratio, n, rho):
  s = grid.karras_sigmas(sigma_min * ratio, sigma_min, n, rho, append_zero=False)
  assert s.shape == (n,) and s.dtype == np.float64 and np.all(np.diff(s) < 0)
  np.testing.assert_allclose([s[0], s[-1]], [sigma_min * ratio, sigma_min], rtol=1e-8)


@pytest.mark.parametrize('args', [(1., 2., 10), (0., 1., 10), (2., 1., 1), (2., 1., 10, 0.)])
def test_karras_sigmas_reject_bad_settings(args):
  with pytest.raises(ValueError, match='karras_sigmas'):
    grid.karras_sigmas(*args)


def test_truncate_sigmas_starts_at_sigma_t_or_at_the_official_node():
  sigmas = grid.karras_sigmas(3., 2e-4, 40, 2., append_zero=False)
  ours = grid.truncate_sigmas(sigmas, 1.0)
  assert ours[0] == 1.0 and np.all(ours[1:] < 1.0) and ours[-1] == pytest.approx(2e-4)
  np.testing.assert_array_equal(ours[1:], sigmas[sigmas < 1.0])
  official = grid.truncate_sigmas(sigmas, 1.0, start_at_sigma_t=False)
  np.testing.assert_array_equal(official, np.sort(sigmas)[np.sort(sigmas) <= 1.0][::-1])
  with pytest.raises(ValueError, match='sigma_T = 0.0001 must exceed the smallest positive node'):
    grid.truncate_sigmas(sigmas, 1e-4)
  with pytest.raises(ValueError, match='sigma_T = 0.0002 must exceed'):
    grid.truncate_sigmas(sigmas, 2e-4)
  with pytest.raises(ValueError, match='strictly decreasing'):
    grid.truncate_sigmas(sigmas[::-1], 1.0)


@pytest.mark.parametrize('sde', SDES, ids=SDE_IDS)
def test_edm_sigma_and_time_invert_the_marginal_noise_level(sde):
  sigma = jnp.array([0.05, 0.3, 1., 4., 20.])
  t = sde.edm_time(sigma)
  mean, std = sde.marginal_prob(jnp.ones_like(t), t)
  np.testing.assert_allclose(sde.edm_scale(t), mean, rtol=1e-5)
  np.testing.assert_allclose(std / mean, sigma, rtol=1e-4)
  np.testing.assert_allclose(sde.edm_sigma(np.asarray(t, np.float64)), sigma, rtol=1e-5)


@pytest.mark.parametrize('sde', SDES, ids=SDE_IDS)
def test_truncated_sde_is_the_same_process_on_the_shorter_interval(sde):
  t_end = 0.4
  short = sde.truncate(t_end, N=7)
  t = np.linspace(0.05, 1., 5)
  np.testing.assert_allclose(short.edm_sigma(t), sde.edm_sigma(t_end * t), rtol=1e-10)
  mean, std = short.marginal_prob(jnp.ones(5), jnp.asarray(t, jnp.float32))
  want_mean, want_std = sde.marginal_prob(jnp.ones(5), jnp.asarray(t_end * t, jnp.float32))
  np.testing.assert_allclose(mean, want_mean, rtol=1e-5)
  np.testing.assert_allclose(std, want_std, rtol=1e-4)
  assert short.N == 7


# ----------------------------------------------------------------------------- denoisers


def test_ve_vp_and_subvp_denoisers_agree_with_the_exact_posterior_mean():
  x = _x_t(2., n=5, seed=1)
  sigma = jnp.array([0.05, 0.3, 1., 4., 20.])
  want = _exact_denoiser(x, sigma)
  for sde in SDES:
    got = grid.denoiser_from_score(REF.score_fn(sde), sde)(x, sigma)
    # Relative to ‖x - μ‖: D = x + σ² s cancels in float32 at large σ.
    err = jnp.linalg.norm((got - want).reshape(5, -1), axis=1) / jnp.linalg.norm((x - REF.mean).reshape(5, -1), axis=1)
    assert float(err.max()) < 2e-5, (type(sde).__name__, err)


def test_denoiser_takes_a_scalar_sigma():
  den = grid.denoiser_from_score(REF.score_fn(VE), VE)
  x = _x_t(1., n=3)
  np.testing.assert_array_equal(den(x, 1.), den(x, jnp.ones(3)))


# ----------------------------------------------------------------------------- convergence to the exact flow


def _slope(steps, errors):
  return np.polyfit(np.log(steps), np.log(errors), 1)[0]


ORDER_CASES = [('euler', 1, 1), ('heun', 2, 2), ('dpm_solver', 1, 1), ('dpm_solver', 2, 2), ('dpm_solver', 3, 3),
               ('dpm_solver++', 1, 1), ('dpm_solver++', 2, 2), ('dpm_solver++', 3, 3),
               ('dpm_solver++/full', 2, 2)]


@pytest.mark.parametrize('sde', [VE, sde_lib.VPSDE()], ids=['ve', 'vp'])
@pytest.mark.parametrize('name, order, expected_order', ORDER_CASES,
                         ids=[f'{n}{o}' for n, o, _ in ORDER_CASES])
def test_ode_solvers_converge_to_the_exact_flow_map_at_their_order(sde, name, order, expected_order):
  """Global error against the exact PF-ODE map on a grid uniform in λ = -log σ (docs/method.md §7)."""
  sigma_t, sigma_end = 5., 0.05
  x_t = _x_t(sigma_t)
  exact = _ode_solution(x_t, sigma_t, sigma_end) * sde.edm_scale(jnp.float32(sde.edm_time(np.float64(sigma_end))))
  # without lower_order_final (the default) the full-order last steps leave the asymptotic range later (3M's
  # first-order warm-up step then bounds its global error at O(h²) from 16 steps on: not checked at order 3)
  steps = np.array([8, 16, 32, 64]) if name.endswith('/full') else np.array([4, 8, 16, 32])
  errors = []
  for n in steps:
    solver = _solver(name, sde, np.geomspace(sigma_t, sigma_end, n + 1), order)
    out, nfe = _run(solver, x_t)
    evals = {'euler': 1, 'heun': 2, 'dpm_solver': order}.get(name, 1)
    assert nfe == n * evals
    errors.append(float(jnp.max(jnp.abs(out - exact))))
  slope = _slope(steps, errors)
  assert -expected_order - 0.5 < slope < -expected_order + 0.35, (errors, slope)
  # measured at 32 steps: 4.4e-2 (order 1), 1.4e-3 to 3.4e-3 (order 2), 6.9e-6 (DPM-Solver-3), 4.1e-4 (3M)
  assert errors[-1] < {1: 6e-2, 2: 5e-3, 3: 1e-3}[expected_order], errors


@pytest.mark.parametrize('name', ['heun', 'dpm_solver++'])
def test_ve_and_vp_models_of_the_same_data_give_the_same_samples(name):
  """In EDM's variables the VE and VP probability-flow ODEs of one data law coincide (docs/method.md §9)."""
  sigmas = np.geomspace(5., 0.05, 9)
  x_t = _x_t(5.)
  ve, _ = _run(_solver(name, VE, sigmas), x_t)
  vp_sde = sde_lib.VPSDE()
  vp, _ = _run(_solver(name, vp_sde, sigmas), x_t)
  vp_tilde = vp / vp_sde.edm_scale(jnp.float32(vp_sde.edm_time(np.float64(0.05))))
  np.testing.assert_allclose(vp_tilde, ve, rtol=0, atol=2e-4)


@pytest.mark.parametrize('name', ['euler', 'heun', 'ancestral', 'dpm_solver', 'dpm_solver++/full'])
def test_the_step_to_sigma_zero_is_the_denoiser(name):
  sigmas = grid.karras_sigmas(2., 0.01, 6, 7.)
  x_t = _x_t(2.)
  out, nfe = _run(_solver(name, VE, sigmas), x_t)
  before, nfe_before = _run(_solver(name, VE, sigmas[:-1]), x_t)
  assert nfe == nfe_before + 1
  np.testing.assert_allclose(out, _exact_denoiser(before, jnp.full(8, sigmas[-2], jnp.float32)), atol=2e-6)
  assert _solver('heun', VE, sigmas).static_nfe == 2 * 6 - 1  # EDM: 2n - 1 for n nodes and the step to 0


def test_dpm_solver_pp_multistep_uses_lower_orders_at_the_start_and_end():
  sigmas = grid.karras_sigmas(2., 0.01, 8, 7.)  # 7 steps to σ_min, then the first-order step to 0
  assert list(dpm_solver.DPMSolverPP(VE, sigmas, order=3).orders) == [1, 2, 3, 3, 3, 3, 3, 1]
  # the official lower_order_final (< 10 steps) counts the step to 0: never two first-order steps in a row
  few = dpm_solver.DPMSolverPP(VE, sigmas, order=3, lower_order_final=True)
  assert list(few.orders) == [1, 2, 3, 3, 3, 3, 2, 1]
  assert list(dpm_solver.DPMSolverPP(VE, sigmas[:-1], order=3, lower_order_final=True).orders) == [1, 2, 3, 3, 3, 2, 1]
  for n in range(3, 12):
    orders = dpm_solver.DPMSolverPP(VE, grid.karras_sigmas(2., 0.01, n, 7.), order=2, lower_order_final=True).orders
    assert not any(a == b == 1 for a, b in zip(orders[1:], orders[2:])), orders
  many = dpm_solver.DPMSolverPP(VE, grid.karras_sigmas(2., 0.01, 12, 7.), order=2, lower_order_final=True)
  assert list(many.orders) == [1] + [2] * 10 + [1]
  with pytest.raises(ValueError, match='solver_order = 4'):
    dpm_solver.DPMSolverPP(VE, grid.karras_sigmas(2., 0.01, 8, 7.), order=4)


# ----------------------------------------------------------------------------- the ancestral step


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
  errors = [np.abs(np.log(_ancestral_variances(grid.karras_sigmas(3., 2e-3, n, 2.), lam) / lam)).max() for n in steps]
  assert np.all(np.diff(errors) < 0) and errors[-1] < 0.06, errors
  assert -1.3 < _slope(steps[2:], errors[2:]) < -0.8, errors  # first order in the number of steps


def test_ancestral_sampler_has_the_exact_output_law():
  sigmas = grid.karras_sigmas(3., 2e-3, 12, 2.)
  n = 4000
  out, nfe = _run(edm.AncestralSolver(VE, sigmas), _x_t(3., n=n, seed=3), rng=jax.random.PRNGKey(4))
  assert nfe == 12
  want = _ancestral_variances(sigmas, np.asarray(REF.spectrum, np.float64))
  got = np.asarray(gaussian.fourier_variances(out, REF.mean), np.float64)
  # Per-mode sample variances of 4000 draws: relative sd ≈ sqrt(2 / 4000) ≈ 2.2% (3.2% for real modes).
  rel = got / want - 1
  assert np.abs(rel).max() < 0.15 and abs(rel.mean()) < 0.02, rel
  np.testing.assert_allclose(np.asarray(out).mean(0), np.asarray(REF.mean), atol=0.05)


def _ancestral_reference(x, sigmas, keys, k2=1., k1=1.):
  """The ancestral loop written out step by step (K = k2 I, M = k1 I), per-sample keys split each step
  (the driver first splits off the keys of x_T)."""
  keys = sampling.split(keys)[0]
  sigmas = jnp.asarray(sigmas, jnp.float32)
  for i in range(len(sigmas) - 1):
    s, s_next = sigmas[i], sigmas[i + 1]
    denoised = grid.denoiser_from_score(REF.score_fn(VE), VE)(x, s)
    keys, step_keys = sampling.split(keys)
    r = s_next ** 2 / s ** 2
    z = sampling.normal(step_keys, x.shape)
    x = x + (1 - r) * k2 * (denoised - x) + s_next / s * jnp.sqrt(s ** 2 - s_next ** 2) * k1 * z
  return x


def test_ancestral_pds_preconditions_the_update_and_identity_is_bit_for_bit_plain():
  c = 1.3  # M = c I through the frequency mask: K = c² I, M z = c z
  sigmas = grid.karras_sigmas(2., 0.01, 6, 7., append_zero=False)
  x_t, keys = _x_t(2.), sampling.sample_keys(0, 0, 8)
  plain, _ = _run(edm.AncestralSolver(VE, sigmas), x_t, keys)
  identity, _ = _run(edm.AncestralSolver(VE, sigmas), x_t, keys, Preconditioner())
  np.testing.assert_array_equal(identity, plain)
  np.testing.assert_allclose(plain, _ancestral_reference(x_t, sigmas, keys), rtol=0, atol=2e-6)
  precond = Preconditioner(freq_mask=jnp.full(SHAPE, c, jnp.float32))
  out, _ = _run(edm.AncestralSolver(VE, sigmas), x_t, keys, precond)
  np.testing.assert_allclose(out, _ancestral_reference(x_t, sigmas, keys, k2=c ** 2, k1=c), rtol=0, atol=2e-5)
  assert float(jnp.max(jnp.abs(out - plain))) > 1e-3


@pytest.mark.parametrize('name', ['euler', 'heun', 'dpm_solver', 'dpm_solver++'])
def test_deterministic_solvers_refuse_pds_masks(name):
  precond = Preconditioner(freq_mask=jnp.full(SHAPE, 1.3, jnp.float32))
  with pytest.raises(ValueError, match='deterministic ODE solver.*flow'):
    _run(_solver(name, VE, grid.karras_sigmas(2., 0.01, 6, 7.)), _x_t(2.), precond=precond)


def test_ancestral_per_sample_keys_make_items_independent_of_the_batch():
  sigmas = grid.karras_sigmas(2., 0.01, 6, 2.)
  x_t = _x_t(2., n=4)
  keys = sampling.sample_keys(0, 0, 4)
  full, _ = _run(edm.AncestralSolver(VE, sigmas), x_t, keys)
  part, _ = _run(edm.AncestralSolver(VE, sigmas), x_t[2:], keys[2:])
  np.testing.assert_allclose(full[2:], part, atol=1e-6)
  assert float(jnp.max(jnp.abs(full[0] - full[1]))) > 0


def test_grid_solvers_reject_bad_grids():
  with pytest.raises(ValueError, match='strictly decreasing 1-D grid of >= 2'):
    edm.HeunSolver(VE, np.array([1.]))
  for bad in ([1., 0., 0.], [1., 2.], [1., -0.5]):
    with pytest.raises(ValueError, match='strictly decreasing'):
      edm.HeunSolver(VE, np.array(bad))


# ----------------------------------------------------------------------------- the PC method from σ_T


def test_pc_from_sigma_max_is_the_pc_sampler_from_the_prior():
  sde = sde_lib.VESDE(0.01, 5., N=12)
  score_fn = REF.score_fn(sde)
  shape = (6,) + SHAPE
  rng = jax.random.PRNGKey(3)
  want, nfe = sampling.get_pc_sampler(sde, shape, 'reverse_diffusion', 'langevin', lambda x: x, snr=0.16,
                                      eps=1e-5)(rng, score_fn)
  x_t = sde.prior_sampling(sampling.split(rng)[1], shape)
  solver = sampling.PCSolver(sde, snr=0.16, eps=1e-5, t_start=float(sde.edm_time(np.float64(5.))))
  got, got_nfe = Sampler(solver, shape)(rng, score_fn, x_init=x_t)
  assert got_nfe == nfe == 24
  # The same steps on the same carry; only XLA's fusion of the prior draw into the jitted start differs (ulps).
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize('sde', SDES, ids=SDE_IDS)
def test_pc_from_sigma_t_queries_the_model_on_the_truncated_grid(sde):
  seen = []

  def score_fn(x, t):
    jax.debug.callback(lambda t: seen.append(float(t[0])), t)
    return REF.score(x, t, sde)

  eps = 1e-5 if isinstance(sde, sde_lib.VESDE) else 1e-3
  t_start = float(sde.edm_time(np.float64(1.5)))
  n = sampling.truncated_num_steps(1000, t_start, eps)
  solver = sampling.PCSolver(sde.with_num_scales(n), 'reverse_diffusion', 'none', eps=eps, t_start=t_start)
  out, nfe = Sampler(solver, (4,) + SHAPE)(jax.random.PRNGKey(0), score_fn, x_init=_x_t(1.5, n=4))
  jax.block_until_ready(out)
  assert nfe == len(seen) == n == int(round(999 * (t_start - eps) / (1 - eps))) + 1
  np.testing.assert_allclose(sde.edm_sigma(np.float64(seen[0])), 1.5, rtol=1e-5)
  np.testing.assert_allclose(seen[-1], eps, rtol=1e-4)
  assert np.all(np.diff(seen) < 0)


def test_pc_from_an_exact_init_recovers_the_data_law():
  sde = sde_lib.VESDE(0.01, 50., N=40)
  t_start = float(sde.edm_time(np.float64(0.5)))
  solver = sampling.PCSolver(sde, 'reverse_diffusion', 'none', eps=1e-5, t_start=t_start)
  run = lambda x_t: Sampler(solver, x_t.shape)(jax.random.PRNGKey(1), REF.score_fn(sde), x_init=x_t)[0]
  x_t = _x_t(0.5, n=2000, seed=5)
  informed = gaussian.metrics(run(x_t), REF)['frechet_distance']
  blind = gaussian.metrics(run(0.5 * jax.random.normal(jax.random.PRNGKey(5), x_t.shape)), REF)['frechet_distance']
  assert informed < 0.01 and blind > 0.5, (informed, blind)  # measured: 0.0026 and 0.94


def test_pc_from_sigma_t_needs_eps_below_the_start_and_an_x_t():
  sde = sde_lib.VESDE(0.01, 50., N=100)
  with pytest.raises(ValueError, match='eps must lie in'):
    sampling.PCSolver(sde, eps=1e-5, t_start=1e-6)
  solver = sampling.PCSolver(sde, eps=1e-5, t_start=0.5)
  with pytest.raises(ValueError, match='pass an init q_T or x_init'):
    Sampler(solver, (2,) + SHAPE)(jax.random.PRNGKey(0), REF.score_fn(sde))
