"""Tests for pds_jax.samplers.unipc and .ipndm: UniPC and iPNDM through the one driver.

References are the closed forms of the exact Gaussian data N(μ, Σ) of tests/test_edm.py: per Fourier
mode the probability-flow ODE maps x̃ - μ at σ_s to sqrt((λ + σ²) / (λ + σ_s²)) (x̃ - μ) at σ.
"""
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import gaussian8_config, same_samples_on_devices
from pds_jax import sampling, sde_lib
from pds_jax.preconditioning import Preconditioner
from pds_jax.samplers import grid, ipndm, unipc
from pds_jax.samplers.driver import NonFiniteSampleError, Sampler
from test_edm import REF, VE, _exact_denoiser, _ode_solution, _run, _slope, _x_t

VP = sde_lib.VPSDE()


def _exact_end(x_t, sde, sigma_t, sigma_end):
  """The exact flow map of x̃_T at σ_T to σ_end, in the SDE's variable."""
  return _ode_solution(x_t, sigma_t, sigma_end) * sde.edm_scale(jnp.float32(sde.edm_time(np.float64(sigma_end))))


def _errors(make, sde, sigmas_of, steps, sigma_t, sigma_end):
  x_t = _x_t(sigma_t)
  exact = _exact_end(x_t, sde, sigma_t, sigma_end)
  errors = []
  for n in steps:
    solver = make(sde, sigmas_of(n))
    out, nfe = _run(solver, x_t)
    assert nfe == solver.static_nfe == n  # n steps to σ_end > 0: one evaluation each
    errors.append(float(jnp.max(jnp.abs(out - exact))))
  return errors


# ----------------------------------------------------------------------------- convergence orders


def _within(slope, order):
  return -order - 0.5 < slope < -order + 0.35  # the tolerance of test_edm's order test


UNIPC_CASES = [(sde, variant, order) for sde in ('ve', 'vp') for variant in unipc.VARIANTS for order in unipc.ORDERS]


@pytest.mark.parametrize('sde, variant, order', [
    pytest.param(*case, marks=() if case == ('ve', 'bh2', 3) else pytest.mark.slow) for case in UNIPC_CASES],
    ids=[f'{s}-{v}-{o}' for s, v, o in UNIPC_CASES])
def test_unipc_converges_to_the_exact_flow_map_at_order_p_plus_one(sde, variant, order):
  """UniC raises UniP-p's order by one (UniPC Theorem 3.1): global error O(h^{p+1}) on a λ-uniform grid.

  Measured (max error at 8 / 16 / 32 steps, VE; VP within 10 %): bh1 4.0e-2 8.6e-3 2.0e-3 (p 1),
  5.0e-2 5.4e-3 6.3e-4 (p 2), 2.7e-3 1.5e-4 1.2e-5 (p 3); bh2 7.4e-2 2.0e-2 5.0e-3, 1.9e-2 2.6e-3
  3.3e-4, 4.3e-3 2.4e-4 1.9e-5.
  """
  steps = np.array([8, 16, 32])
  errors = _errors(lambda sde, sigmas: unipc.UniPCSolver(sde, sigmas, order, variant), {'ve': VE, 'vp': VP}[sde],
                   lambda n: np.geomspace(5., 0.05, n + 1), steps, 5., 0.05)
  assert _within(_slope(steps, errors), order + 1), (errors, _slope(steps, errors))
  assert errors[-1] < {1: 8e-3, 2: 1e-3, 3: 5e-5}[order], errors


IPNDM_CASES = [(sde, order) for sde in ('ve', 'vp') for order in ipndm.ORDERS]


@pytest.mark.parametrize('sde, order', [
    pytest.param(*case, marks=() if case == ('ve', 4) else pytest.mark.slow) for case in IPNDM_CASES],
    ids=[f'{s}-{o}' for s, o in IPNDM_CASES])
def test_variable_step_ipndm_converges_to_the_exact_flow_map_at_its_order(sde, order):
  """Adams–Bashforth-p with variable-step weights: global error O(h^p) on a geometric σ grid.

  The grid starts at σ = 50, where the solution is nearly linear in σ, so the lower-order warm-start
  steps (local errors O(h^{k+1}), k < p) stay below the order-p error. Measured (VE, 32 / 64 / 128
  steps): 3.2e-2 1.6e-2 8.1e-3 (p 1), 7.3e-3 2.0e-3 5.0e-4, 2.3e-3 3.3e-4 3.9e-5, 9.1e-4 6.8e-5 2.6e-6 (p 4).
  """
  steps = np.array([32, 64, 128])
  errors = _errors(lambda sde, sigmas: ipndm.IPNDMSolver(sde, sigmas, order, 'variable'), {'ve': VE, 'vp': VP}[sde],
                   lambda n: np.geomspace(50., 0.5, n + 1), steps, 50., 0.5)
  slope = _slope(steps, errors)
  # p = 4 reaches float32's floor at 128 steps (VP 5.5e-6): slope -3.62 on VP, -4.22 on VE
  assert _within(slope, order) or (order == 4 and -4.5 < slope < -3.5), (errors, slope)


@pytest.mark.parametrize('sde, order', [
    pytest.param(*case, marks=() if case == ('ve', 4) else pytest.mark.slow) for case in IPNDM_CASES],
    ids=[f'{s}-{o}' for s, o in IPNDM_CASES])
def test_fixed_ipndm_converges_at_order_min_p_2_on_a_geometric_grid(sde, order):
  """The published iPNDM (equal-step Adams–Bashforth weights on any grid) is second order on a smooth
  non-uniform grid for p ≥ 2: the weights miss the grid's curvature at O(h³) per step. Its error
  constant is small: at 32 steps it is 2-6x below the variable-step weights' for p = 3, 4.
  Measured (VE, 32 / 64 / 128 steps): 3.6e-3 9.2e-4 2.3e-4 (p 2), 4.6e-4 1.5e-4 4.9e-5, 8.1e-4 2.0e-4 5.5e-5 (p 4).
  """
  steps = np.array([32, 64, 128])
  errors = _errors(lambda sde, sigmas: ipndm.IPNDMSolver(sde, sigmas, order, 'fixed'), {'ve': VE, 'vp': VP}[sde],
                   lambda n: np.geomspace(50., 0.5, n + 1), steps, 50., 0.5)
  slope = _slope(steps, errors)
  if order <= 2:
    assert _within(slope, order), (errors, slope)
  else:
    assert -2.5 < slope < -1.4, (errors, slope)  # measured -1.61 (p 3), -1.93 (p 4)
  assert errors[-1] < {1: 1.2e-2, 2: 4e-4, 3: 1e-4, 4: 1e-4}[order], errors


def test_fixed_ipndm_weights_are_the_variable_step_weights_on_a_uniform_grid():
  """The published coefficients (55, -59, 37, -9)/24 … are the Adams–Bashforth weights of equal steps."""
  sigmas = np.linspace(5., 0.5, 11)
  for order in ipndm.ORDERS:
    fixed = ipndm.IPNDMSolver(VE, sigmas, order, 'fixed').weights
    variable = ipndm.IPNDMSolver(VE, sigmas, order, 'variable').weights
    np.testing.assert_allclose(fixed, variable, rtol=1e-10, atol=1e-13)
  weights = ipndm.IPNDMSolver(VE, sigmas, 4).weights / (sigmas[1] - sigmas[0])
  np.testing.assert_allclose(weights[:4], [[1, 0, 0, 0], [1.5, -0.5, 0, 0], [23 / 12, -16 / 12, 5 / 12, 0],
                                           [55 / 24, -59 / 24, 37 / 24, -9 / 24]], rtol=1e-12)
  # ∫ of a cubic through non-uniform nodes is exact
  nodes, target = np.array([1., 1.3, 2.1, 2.2]), 0.4
  beta = ipndm.variable_step_weights(nodes, target)
  f = lambda s: 2 * s ** 3 - s + 0.5
  exact = (target ** 4 - nodes[0] ** 4) / 2 - (target ** 2 - nodes[0] ** 2) / 2 + 0.5 * (target - nodes[0])
  np.testing.assert_allclose((target - nodes[0]) * beta @ f(nodes), exact, rtol=1e-12)


def test_unipc_bh2_predictor_of_order_two_is_dpm_solver_pp_2m():
  """UniP-2 with B(h) = e^{-h} - 1 and a_1 = 1/2 is DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2)."""
  lam_prev, lam, lam_next = 0.1, 0.5, 1.2
  h, r0 = lam_next - lam, (lam - lam_prev) / (lam_next - lam)
  phi_1 = np.expm1(-h)
  want = [-phi_1 * (1 + 0.5 / r0), 0.5 * phi_1 / r0]  # base - φ₁ D₀ - φ₁ (D₀ - D₋₁) / (2 r₀)
  got = unipc.unipc_coefficients([lam, lam_prev], lam_next, 'bh2', corrector=False)
  np.testing.assert_allclose(got, [0.] + want, rtol=1e-12)
  # UniC-p (p ≥ 2: eq. 8 solved) integrates D exactly when D is a polynomial of degree ≤ p in λ;
  # UniC-1's c = 1/2 is exact for constants only (its order comes from c = 1/2 + O(h))
  for p, variant in [(p, v) for p in unipc.ORDERS for v in unipc.VARIANTS]:
    lams = np.array([0.9, 0.6, 0.2][:p])
    w = unipc.unipc_coefficients(lams, 1.4, variant, corrector=True)
    for j in range(p + 1 if p > 1 else 1):
      # x̃_t = e^{-h} x̃_s + e^{-λ_t} ∫ e^{λ} λ^j dλ: compare the D part only (x̃_s = 0)
      grid_l = np.linspace(lams[0], 1.4, 20001)
      integral = np.trapezoid(np.exp(grid_l - 1.4) * grid_l ** j, grid_l)
      values = np.concatenate([[1.4 ** j], lams ** j])
      np.testing.assert_allclose(w @ values, integral, rtol=1e-6, err_msg=f'UniC-{p} {variant}, degree {j}')


# ----------------------------------------------------------------------------- NFE, the step to 0, devices, NaN


def _counted(sde):
  calls = []

  def score_fn(x, t):
    jax.debug.callback(lambda t: calls.append(float(t[0])), t)
    return REF.score(x, t, sde)

  return score_fn, calls


@pytest.mark.parametrize('make', [lambda s: unipc.UniPCSolver(VE, s, 3), lambda s: ipndm.IPNDMSolver(VE, s, 4)],
                         ids=['unipc', 'ipndm'])
def test_nfe_is_the_number_of_nodes_and_the_step_to_zero_is_the_denoiser(make):
  sigmas = grid.karras_sigmas(2., 0.01, 6, 7.)  # 6 nodes, then 0
  solver = make(sigmas)
  score_fn, calls = _counted(VE)
  x_t = _x_t(2.)
  out, nfe = Sampler(solver, x_t.shape)(jax.random.PRNGKey(0), score_fn, x_init=x_t)
  jax.block_until_ready(out)
  assert nfe == solver.static_nfe == len(calls) == 6
  np.testing.assert_allclose(calls, VE.edm_time(sigmas[:-1]), rtol=1e-5, atol=1e-7)  # one evaluation per node
  before, nfe_before = _run(make(sigmas[:-1]), x_t)
  assert nfe_before == 5
  # UniPC's output at σ_min is the predicted point (its corrector needs the next evaluation): the same
  np.testing.assert_allclose(out, _exact_denoiser(before, jnp.full(8, sigmas[-2], jnp.float32)), atol=2e-6)


def _solvers():
  sde = sde_lib.VESDE(0.01, 10., 12)
  sigmas = grid.karras_sigmas(10., float(sde.edm_sigma(np.float64(1e-5))), 6, 7.)
  return sde, {'unipc': unipc.UniPCSolver(sde, sigmas, 3, 'bh1'), 'ipndm': ipndm.IPNDMSolver(sde, sigmas, 4)}


@pytest.mark.parametrize('name', ['unipc', 'ipndm'])
def test_non_finite_states_are_reported_with_their_step(name):
  sde, solvers = _solvers()
  solver, threshold = solvers[name], 0.5

  def exploding_score(x, t):
    return jnp.where(t[:, None, None, None] < threshold, jnp.inf, REF.score(x, t, sde))

  with pytest.raises(NonFiniteSampleError, match=re.escape(name) + ': .* at step') as info:
    Sampler(solver, (4,) + REF.mean.shape)(sampling.sample_keys(0, 0, 4), exploding_score)
  times = solver.step_times()
  assert info.value.step == int(np.argmax(times < threshold)), (info.value.step, times)  # 1 evaluation, at its start


def device_cases():
  sde, solvers = _solvers()
  return {name: (solver, REF.score_fn(sde), REF.mean.shape) for name, solver in solvers.items()}


def test_unipc_and_ipndm_give_the_same_samples_on_one_and_four_devices(tmp_path):
  assert same_samples_on_devices(tmp_path, 'test_fast_solvers', 'device_cases') == {'unipc': 6, 'ipndm': 6}


# ----------------------------------------------------------------------------- config and CLI


def _config(method, **fields):
  return gaussian8_config(method=method, num_chunks=1, **fields)


def _build(config, preconditioner=None):
  sde, eps = sde_lib.get_sde(config)
  return sampling.get_sampling_fn(config, sde, (4, 8, 8, 3), lambda x: x, eps, preconditioner)


@pytest.mark.parametrize('method, fields, nfe', [
    ('unipc', {}, 10), ('unipc', {'num_steps': 6}, 6), ('unipc', {'num_steps': 6, 'noise_removal': False}, 5),
    ('unipc', {'num_steps': 4, 'solver_order': 3, 'unipc_variant': 'bh1'}, 4),
    ('ipndm', {}, 10), ('ipndm', {'num_steps': 5, 'ipndm_order': 2, 'ipndm_variant': 'variable'}, 5)])
def test_num_steps_is_the_nfe(method, fields, nfe):
  fn = _build(_config(method, **fields))
  assert fn.nfe == fn.settings['nfe'] == nfe and fn.settings['method'] == method


def test_errors_name_the_field():
  with pytest.raises(ValueError, match='solver_order = 4'):
    _build(_config('unipc', solver_order=4))
  with pytest.raises(ValueError, match="unipc_variant = 'bh3'"):
    _build(_config('unipc', unipc_variant='bh3'))
  with pytest.raises(ValueError, match='ipndm_order = 5'):
    _build(_config('ipndm', ipndm_order=5))
  with pytest.raises(ValueError, match="ipndm_variant = 'adaptive'"):
    _build(_config('ipndm', ipndm_variant='adaptive'))
  with pytest.raises(ValueError, match='num_steps = 1'):
    _build(_config('ipndm', num_steps=1))
  masks = Preconditioner(freq_mask=jnp.full((8, 8, 3), 1.2))
  for method in ('unipc', 'ipndm'):
    with pytest.raises(ValueError, match=f"'{method}' is a deterministic ODE solver"):
      _build(_config(method), masks)


@pytest.mark.slow
@pytest.mark.parametrize('method', ['unipc', 'ipndm'])
def test_cli_samples_with_num_steps_evaluations(tmp_path, method):
  from test_cli import TINY_GAUSSIAN, _main
  _main(*TINY_GAUSSIAN, '--mode=sample', f'--workdir={tmp_path}', f'--config.sampling.method={method}',
        '--config.sampling.num_steps=6')
  report = json.loads((tmp_path / 'eval' / 'report.json').read_text())
  assert report['nfe_per_sample'] == 6 and report['settings']['method'] == method
  assert report['num_samples'] == 12 and np.isfinite(report['metrics']['kl_per_dim'])


# ----------------------------------------------------------------------------- against the official loop


def _uni_pc_loop(x, sigmas, order, variant, denoise):
  """The official multistep loop (`UniPC.sample`, denoise_to_zero) re-derived with lists in x̃ and λ = -log σ:
  UniP, one evaluation at the predicted point, UniC (not after the last update), then D at σ_min."""
  lam = -np.log(sigmas[:-1])
  models, lams = [denoise(x, sigmas[0])], [lam[0]]
  for j in range(1, len(lam)):
    p = min(order, len(models))
    h = lam[j] - lams[-1]
    b_h = -h if variant == 'bh1' else np.expm1(-h)
    r = [(lams[-1 - k] - lams[-1]) / h for k in range(1, p)] + [1.]
    diffs = [(models[-1 - k] - models[-1]) / r[k - 1] for k in range(1, p)]
    g, phi, factorial = [], np.expm1(-h) / -h - 1, 1
    for k in range(1, p + 1):
      g.append(phi * factorial / b_h)
      factorial *= k + 1
      phi = phi / -h - 1 / factorial
    big_r = np.array([[rk ** (k - 1) for rk in r] for k in range(1, p + 1)])
    base = np.exp(-h) * x - np.expm1(-h) * models[-1]
    a = [] if p == 1 else [0.5] if p == 2 else np.linalg.solve(big_r[:-1, :-1], g[:-1])
    x_pred = base - b_h * sum(ak * d for ak, d in zip(a, diffs))
    model = denoise(x_pred, sigmas[j])
    if j < len(lam) - 1:
      c = [0.5] if p == 1 else np.linalg.solve(big_r, g)
      x = base - b_h * (sum(ck * d for ck, d in zip(c[:-1], diffs)) + c[-1] * (model - models[-1]))
    else:
      x = x_pred
    models, lams = (models + [model])[-order:], (lams + [lam[j]])[-order:]
  return denoise(x, sigmas[-2])


@pytest.mark.parametrize('order, variant', [
    pytest.param(o, v, marks=() if (o, v) in ((2, 'bh2'), (3, 'bh1')) else pytest.mark.slow)
    for o in unipc.ORDERS for v in unipc.VARIANTS], ids=[f'{o}-{v}' for o in unipc.ORDERS for v in unipc.VARIANTS])
def test_unipc_is_the_official_multistep_loop(order, variant):
  """The driver's weight tables (corrector folded into the next step) give the loop's samples."""
  spectrum, mu = np.array([0.05, 0.5, 3.]), 0.3  # three independent Gaussian coordinates
  denoise = lambda x, s: mu + spectrum / (spectrum + s ** 2) * (x - mu)
  sigmas = np.concatenate([np.geomspace(80., 0.01, 6), [0.]])
  x_t = np.array([40., -60., 100.])
  want = _uni_pc_loop(x_t, sigmas, order, variant, denoise)

  def score(x, t):
    return -(x - mu) / (jnp.asarray(spectrum, jnp.float32) + VE.edm_sigma(t)[:, None, None, None] ** 2)

  out, nfe = Sampler(unipc.UniPCSolver(VE, sigmas, order, variant), (1, 1, 1, 3))(
      jax.random.PRNGKey(0), score, x_init=jnp.asarray(x_t, jnp.float32).reshape(1, 1, 1, 3))
  assert nfe == 6
  # float32 against float64 from |x_T| = 100: measured differences up to 2e-4
  np.testing.assert_allclose(np.asarray(out).ravel(), want, rtol=0, atol=1e-5 * np.abs(x_t).max())
