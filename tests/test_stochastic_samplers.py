"""Tests for the stochastic σ-grid samplers: edm_stochastic, restart and DPM-Solver++ SDE.

References: (1) transcriptions of the published loops (EDM's Algorithm 2 as k-diffusion's
`sample_heun`, the official `restart_sampler`, k-diffusion's `sample_dpmpp_2m_sde`) fed the driver's
per-sample noise, counting their denoiser calls; (2) on the exact Gaussian N(μ, Σ) (pds_jax.gaussian)
every method is a linear Gaussian chain per Fourier mode (variance λ), so the output variance of each
mode is an exact recursion, and the samples' per-mode variances are checked against it with bounds
derived from the sample count.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import same_samples_on_devices
from pds_jax import gaussian, sampling, sde_lib
from pds_jax.preconditioning import Preconditioner
from pds_jax.samplers import dpm_solver, edm, edm_stochastic, grid, methods, restart
from pds_jax.samplers.driver import NonFiniteSampleError, Sampler

SHAPE = (4, 4, 1)
REF = gaussian.GaussianReference.power_law(SHAPE, mean=0.3, pixel_std=0.5)
LAM = np.asarray(REF.spectrum, np.float64)
VE = sde_lib.VESDE(0.01, 50.)
SIGMAS = grid.karras_sigmas(3., 2e-3, 8, 7.)


def _x_t(sigma_t, n=8, seed=0):
  """Exact draws of x̃ at σ_T: N(μ, Σ + σ_T² I)."""
  return gaussian.GaussianReference(REF.mean, REF.spectrum + sigma_t ** 2).sample(jax.random.PRNGKey(seed), n)


def _run(solver, x_t, rng=None, precond=None):
  rng = jax.random.PRNGKey(0) if rng is None else rng
  return Sampler(solver, x_t.shape)(rng, REF.score_fn(VE), precond, x_init=x_t)


def _edm(sigmas=SIGMAS, churn=40., tmin=0.05, tmax=50., noise=1.003):
  return edm_stochastic.EDMStochasticSolver(VE, sigmas, churn, tmin, tmax, noise)


def _restart(sigmas=SIGMAS, j=4, t_max=1., nodes=3, k=2):
  restart_sigmas = grid.karras_sigmas(t_max, sigmas[j], nodes, 7., append_zero=False)
  restart_sigmas[-1] = sigmas[j]
  return restart.RestartSolver(VE, sigmas, j, restart_sigmas, k)


class _Counted:
  """The exact denoiser with a count of its calls (the NFE of a reference loop)."""

  def __init__(self):
    self.calls = 0
    self.denoise = grid.denoiser_from_score(REF.score_fn(VE), VE)

  def __call__(self, x, sigma):
    self.calls += 1
    return self.denoise(x, jnp.float32(sigma))


def _noises(keys):
  """The driver's noise stream: keys split off x_T, then one split per step (as every stochastic solver)."""
  keys = sampling.split(keys)[0]
  while True:
    keys, step_keys = sampling.split(keys)
    yield step_keys


# ----------------------------------------------------------------------------- against the published loops


def _heun(model, x, t_cur, t_next, last: bool):
  """One step of EDM's Algorithm 1 from t_cur to t_next (Euler alone when `last`), in float32 as the loops."""
  d_cur = (x - model(x, t_cur)) / np.float32(t_cur)
  x_next = x + np.float32(t_next - t_cur) * d_cur
  if not last:
    d_prime = (x_next - model(x_next, t_next)) / np.float32(t_next)
    x_next = x + np.float32(t_next - t_cur) * (0.5 * d_cur + 0.5 * d_prime)
  return x_next


def test_edm_stochastic_is_edm_algorithm_2():
  """k-diffusion's sample_heun (Karras et al. Algorithm 2), transcribed, with the driver's noise."""
  x_t, keys = _x_t(3.), sampling.sample_keys(0, 0, 8)
  churn, tmin, tmax, s_noise = 40., 0.05, 2., 1.003
  out, nfe = _run(_edm(churn=churn, tmin=tmin, tmax=tmax, noise=s_noise), x_t, keys)
  model, noise, x = _Counted(), _noises(keys), x_t
  n = len(SIGMAS) - 1
  for i in range(n):
    gamma = min(churn / n, 2 ** 0.5 - 1) if tmin <= SIGMAS[i] <= tmax else 0.
    sigma_hat = SIGMAS[i] * (gamma + 1)
    eps = sampling.normal(next(noise), x.shape) * s_noise
    if gamma > 0:
      x = x + eps * np.float32((sigma_hat ** 2 - SIGMAS[i] ** 2) ** 0.5)
    x = _heun(model, x, sigma_hat, SIGMAS[i + 1], last=SIGMAS[i + 1] == 0)
  assert nfe == model.calls == 2 * n - 1
  np.testing.assert_allclose(out, x, rtol=0, atol=2e-5)
  assert float(jnp.max(jnp.abs(out - _run(edm.HeunSolver(VE, SIGMAS), x_t, keys)[0]))) > 1e-2  # churn mattered


def test_restart_is_the_official_restart_sampler():
  """`restart_sampler` of Newbeeer/diffusion_restart_sampling (generate_restart.py, S_churn = 0), transcribed."""
  x_t, keys = _x_t(3.), sampling.sample_keys(1, 0, 8)
  j, t_max, nodes, k = 4, 1., 3, 2
  out, nfe = _run(_restart(j=j, t_max=t_max, nodes=nodes, k=k), x_t, keys)
  model, noise, x = _Counted(), _noises(keys), x_t
  num_steps = len(SIGMAS) - 1

  for i in range(num_steps):
    next(noise)  # a main step adds no noise but consumes its key
    x = _heun(model, x, SIGMAS[i], SIGMAS[i + 1], last=i == num_steps - 1)
    if i + 1 == j:
      for _ in range(k):
        steps = grid.karras_sigmas(t_max, SIGMAS[j], nodes, 7., append_zero=False)
        for m, (t_cur, t_next) in enumerate(zip(steps[:-1], steps[1:])):
          z = sampling.normal(next(noise), x.shape)
          if m == 0:
            x = x + z * np.float32((steps[0] ** 2 - steps[-1] ** 2) ** 0.5)
          x = _heun(model, x, t_cur, t_next, last=False)
  assert nfe == model.calls == 2 * num_steps - 1 + 2 * k * (nodes - 1) == 23
  np.testing.assert_allclose(out, x, rtol=0, atol=2e-5)


@pytest.mark.parametrize('eta', [1., 0.4])
def test_dpm_solver_pp_2m_sde_is_k_diffusions_sample_dpmpp_2m_sde(eta):
  x_t, keys = _x_t(3.), sampling.sample_keys(2, 0, 8)
  out, nfe = _run(dpm_solver.DPMSolverPPSDE(VE, SIGMAS, 2, eta), x_t, keys)
  model, noise, x = _Counted(), _noises(keys), x_t
  old_denoised = h_last = None
  for i in range(len(SIGMAS) - 1):
    denoised = model(x, SIGMAS[i])
    z = sampling.normal(next(noise), x.shape)
    if SIGMAS[i + 1] == 0:
      x = denoised
    else:
      h = np.log(SIGMAS[i]) - np.log(SIGMAS[i + 1])
      eta_h = eta * h
      x = np.float32(SIGMAS[i + 1] / SIGMAS[i] * np.exp(-eta_h)) * x + np.float32(-np.expm1(-h - eta_h)) * denoised
      if old_denoised is not None:
        x = x + np.float32(0.5 * -np.expm1(-h - eta_h) * h / h_last) * (denoised - old_denoised)
      x = x + z * np.float32(SIGMAS[i + 1] * np.sqrt(-np.expm1(-2 * eta_h)))
      h_last = h
    old_denoised = denoised
  assert nfe == model.calls == len(SIGMAS) - 1
  np.testing.assert_allclose(out, x, rtol=0, atol=5e-5)


def _score_sde_langevin(x, t, key, snr, n_steps):
  """score_sde's `LangevinCorrector.update_fn` (VE: α = 1), transcribed: batch-mean norms, n_steps steps."""
  for _ in range(n_steps):
    key, step_key = sampling.split(key)
    grad = REF.score_fn(VE)(x, jnp.full(x.shape[:1], t))
    noise = sampling.normal(step_key, x.shape)
    grad_norm = jnp.linalg.norm(grad.reshape((x.shape[0], -1)), axis=-1).mean()
    noise_norm = jnp.linalg.norm(noise.reshape((x.shape[0], -1)), axis=-1).mean()
    step = (snr * noise_norm / grad_norm) ** 2 * 2
    x = x + step * grad + jnp.sqrt(2 * step) * noise
  return x


def test_langevin_steps_on_the_grid_are_score_sde_pc_with_a_dpm_solver_pp_2m_sde_predictor():
  """PC's order at each node σ_i <= langevin_sigma_max: score_sde's Langevin corrector at t(σ_i), then the
  k-diffusion 2M SDE step; the driver's noise stream (one key for the corrector, then one for the step)."""
  x_t, keys = _x_t(3.), sampling.sample_keys(3, 0, 8)
  snr, n_steps, sigma_max = 0.16, 2, 1.
  levels = (SIGMAS[:-1] <= sigma_max)
  langevin = grid.GridLangevin(levels, snr, n_steps)
  out, nfe = _run(dpm_solver.DPMSolverPPSDE(VE, SIGMAS, 2, 1., langevin=langevin), x_t, keys)
  model, noise, x = _Counted(), _noises(keys), x_t
  old_denoised = h_last = None
  for i in range(len(SIGMAS) - 1):
    if levels[i]:
      x = _score_sde_langevin(x, VE.edm_time(jnp.float32(SIGMAS[i])), next(noise), snr, n_steps)
    denoised = model(x, SIGMAS[i])
    z = sampling.normal(next(noise), x.shape)
    if SIGMAS[i + 1] == 0:
      x = denoised
      continue
    h = np.log(SIGMAS[i] / SIGMAS[i + 1])
    x = np.float32(SIGMAS[i + 1] / SIGMAS[i] * np.exp(-h)) * x + np.float32(-np.expm1(-2 * h)) * denoised
    if old_denoised is not None:
      x = x + np.float32(0.5 * -np.expm1(-2 * h) * h / h_last) * (denoised - old_denoised)
    x = x + z * np.float32(SIGMAS[i + 1] * np.sqrt(-np.expm1(-2 * h)))
    h_last, old_denoised = h, denoised
  assert 0 < levels.sum() < len(levels) and nfe == model.calls + n_steps * levels.sum() == 8 + 2 * levels.sum()
  np.testing.assert_allclose(out, x, rtol=0, atol=5e-5)
  plain, _ = _run(dpm_solver.DPMSolverPPSDE(VE, SIGMAS, 2, 1.), x_t, keys)
  assert float(jnp.max(jnp.abs(out - plain))) > 1e-2  # the corrector mattered


@pytest.mark.parametrize('sde', [VE, sde_lib.VPSDE(0.1, 20.)], ids=['ve', 'vp'])
def test_the_grid_langevin_corrector_keeps_the_noised_law_at_its_node(sde):
  """From exact draws of p_σ (x̃ ~ N(μ, Σ + σ² I)), 40 corrector steps at node σ keep every mode's variance (the
  VP model variable x = m x̃ included); at node 2σ they move it towards p_2σ, which the bounds see."""
  sigma, n = 1., N_DRAWS
  x_t = _x_t(sigma, n=n, seed=7)
  solver = edm.EulerSolver(sde, [sigma, 0.])  # the corrector reads only its SDE and device axis
  corrector = grid.GridLangevin([True], 0.16, 40)
  state = grid.GridState(x=x_t, rng=jax.random.PRNGKey(8))

  def run(at):
    return jax.jit(lambda s: corrector.correct(solver, REF.score_fn(sde), Preconditioner(), s, 0, jnp.float32(at)))(
        state).x

  want = LAM + sigma ** 2
  _check_variances(run(sigma), want, n)  # ULA's bias at snr 0.16 is ~snr² = 2.6 %, inside the bounds
  moved = np.asarray(gaussian.fourier_variances(run(2 * sigma), REF.mean)) / want - 1
  assert moved.mean() > 6 * np.sqrt(2. / n), moved


# ----------------------------------------------------------------------------- special cases


def test_edm_stochastic_without_churn_is_heun_bit_for_bit():
  x_t, keys = _x_t(3.), sampling.sample_keys(0, 0, 8)
  heun, nfe = _run(edm.HeunSolver(VE, SIGMAS), x_t, keys)
  for solver in (_edm(churn=0.), _edm(churn=40., tmin=10., tmax=20.)):  # no churn, or no node in [S_tmin, S_tmax]
    out, nfe2 = _run(solver, x_t, keys)
    np.testing.assert_array_equal(out, heun)
    assert nfe2 == nfe == solver.static_nfe == 15


def test_restart_without_iterations_is_heun_bit_for_bit():
  x_t, keys = _x_t(3.), sampling.sample_keys(0, 0, 8)
  heun, _ = _run(edm.HeunSolver(VE, SIGMAS), x_t, keys)
  out, nfe = _run(_restart(k=0), x_t, keys)
  np.testing.assert_array_equal(out, heun)
  assert nfe == 15


@pytest.mark.parametrize('order', [2, 3])
def test_dpm_solver_pp_sde_without_noise_is_dpm_solver_pp(order):
  x_t = _x_t(3.)
  plain, nfe = _run(dpm_solver.DPMSolverPP(VE, SIGMAS, order), x_t)
  sde, nfe2 = _run(dpm_solver.DPMSolverPPSDE(VE, SIGMAS, order, 0.), x_t)
  np.testing.assert_allclose(sde, plain, rtol=0, atol=1e-6)
  assert nfe == nfe2 == 8


def test_the_churn_is_capped_at_the_models_largest_noise_level():
  solver = _edm(sigmas=grid.karras_sigmas(50., 0.01, 6, 7.), churn=80., tmin=0., tmax=1e9)
  assert solver.sigma_hat.max() == 50. and solver.sigma_hat[1] > solver.sigma_from[1]


# ----------------------------------------------------------------------------- the output law on the exact Gaussian


def _heun_gain(lam, s, s_next):
  """Per-mode factor of a Heun step s → s_next on x̃ - μ (the denoiser is μ + λ / (λ + σ²)(x̃ - μ))."""
  if s_next == 0:
    return lam / (lam + s ** 2)
  d = s / (lam + s ** 2)
  d_next = s_next / (lam + s_next ** 2) * (1 + (s_next - s) * d)
  return 1 + (s_next - s) * 0.5 * (d + d_next)


def _noise_heun_variances(solver, lam, noise=True):
  """Exact per-mode output variance of a NoiseHeunSolver from x̃_T ~ N(μ, Σ + σ_from[0]² I) (without its noise)."""
  v = lam + solver.sigma_from[0] ** 2
  for s, s_hat, s_next, std in zip(solver.sigma_from, solver.sigma_hat, solver.sigma_to, solver.jump_std):
    v = _heun_gain(lam, s_hat, s_next) ** 2 * (v + noise * (std * solver.s_noise) ** 2)
  return v


def _dpm_sde_variances(sigmas, lam, eta, c=1., noise=True):
  """Exact per-mode output variance of DPM-Solver++(2M) SDE (+ PDS with K = c² I, M = c I) from p_{σ_0}.

  Per mode y = x̃ - μ, the denoiser is ρ y with ρ = λ / (λ + σ²); the state (y_i, y_{i-1}) is a linear
  Gaussian chain with 2 × 2 covariances.
  """
  cov = np.zeros(lam.shape + (2, 2))
  cov[..., 0, 0] = lam + sigmas[0] ** 2
  h_last = None
  for i in range(len(sigmas) - 1):
    s, s_next = sigmas[i], sigmas[i + 1]
    rho = lam / (lam + s ** 2)
    rho_old = lam / (lam + sigmas[i - 1] ** 2) if i else 0.
    if s_next == 0:
      a, b, std = rho, np.zeros_like(lam), 0.
    else:
      h = np.log(s / s_next)

      def coefficients(e):
        """(a, b): y' = a y_i + b y_{i-1} of the noise-free step with noise parameter e."""
        a = s_next / s * np.exp(-e * h) - np.expm1(-(1 + e) * h) * rho
        if h_last is None:
          return a, np.zeros_like(lam)
        corr = 0.5 * -np.expm1(-(1 + e) * h) * h / h_last
        return a + corr * rho, -corr * rho_old

      a, b = coefficients(eta)
      a0, b0 = coefficients(0.)
      a, b = a0 + c ** 2 * (a - a0), b0 + c ** 2 * (b - b0)
      std = c * s_next * np.sqrt(-np.expm1(-2 * eta * h))
      h_last = h
    t = np.zeros(lam.shape + (2, 2))
    t[..., 0, 0], t[..., 0, 1], t[..., 1, 0] = a, b, 1.
    cov = t @ cov @ np.swapaxes(t, -1, -2)
    cov[..., 0, 0] += noise * std ** 2
  return cov[..., 0, 0]


N_DRAWS = 4000


def _check_variances(samples, want, n=N_DRAWS):
  """Per-mode sample variances (known mean) against the exact ones: a variance of n draws has relative sd
  sqrt(2 / n) (real modes; sqrt(1 / n) for complex ones): 5 sd per mode, 3 sd for the mean over modes."""
  got = np.asarray(gaussian.fourier_variances(samples, REF.mean), np.float64)
  rel = got / want - 1
  sd = np.sqrt(2. / n)
  assert np.abs(rel).max() < 5 * sd and abs(rel.mean()) < 3 * sd, rel
  np.testing.assert_allclose(np.asarray(samples).mean(0), np.asarray(REF.mean), atol=5 * np.sqrt(LAM.max() / n))


@pytest.mark.parametrize('make', [lambda: _edm(sigmas=grid.karras_sigmas(3., 2e-3, 8, 7.), churn=80.),
                                  lambda: _restart(sigmas=grid.karras_sigmas(3., 2e-3, 10, 7.), j=5, t_max=1.5, k=3)],
                         ids=['edm_stochastic', 'restart'])
def test_noise_heun_samplers_have_the_exact_output_law(make):
  solver = make()
  want = _noise_heun_variances(solver, LAM)
  # the noise changes the law by more than twice the bound on the mean below: the test can see it
  assert np.abs(want / _noise_heun_variances(solver, LAM, noise=False) - 1).mean() > 6 * np.sqrt(2. / N_DRAWS)
  out, _ = _run(solver, _x_t(3., n=N_DRAWS, seed=3), jax.random.PRNGKey(4))
  _check_variances(out, want)


@pytest.mark.parametrize('eta, c', [(1., 1.), pytest.param(0.5, 1., marks=pytest.mark.slow), (1., 1.3)],
                         ids=['eta1', 'eta0.5', 'eta1_pds'])
def test_dpm_solver_pp_2m_sde_has_the_exact_output_law(eta, c):
  sigmas = grid.karras_sigmas(3., 2e-3, 10, 7.)
  want = _dpm_sde_variances(sigmas, LAM, eta, c)
  without_noise = _dpm_sde_variances(sigmas, LAM, eta, c, noise=False)
  assert np.abs(want / without_noise - 1).mean() > 6 * np.sqrt(2. / N_DRAWS)  # the test can see the noise
  precond = None if c == 1 else Preconditioner(freq_mask=jnp.full(SHAPE, c, jnp.float32))
  out, _ = _run(dpm_solver.DPMSolverPPSDE(VE, sigmas, 2, eta), _x_t(3., n=N_DRAWS, seed=5), jax.random.PRNGKey(6),
                precond)
  _check_variances(out, want)


def test_dpm_solver_pp_sde_with_pds_keeps_the_target_law_as_steps_grow():
  """K = M Mᵀ on the Langevin part keeps p_σ (the derivation in DPMSolverPPSDE): the exact chain's error vanishes."""
  for c in (0.7, 1.3):
    errors = [np.abs(np.log(_dpm_sde_variances(grid.karras_sigmas(3., 2e-3, n, 7.), LAM, 1., c) / LAM)).max()
              for n in (25, 50, 100, 200)]
    assert np.all(np.diff(errors) < 0) and errors[-1] < 0.02, (c, errors)
    assert -1.4 < np.polyfit(np.log([50, 100, 200]), np.log(errors[1:]), 1)[0] < -0.6, errors  # error → 0


# ----------------------------------------------------------------------------- PDS


def test_dpm_solver_pp_sde_pds_identity_is_bit_for_bit_plain_and_a_mask_changes_it():
  x_t, keys = _x_t(3.), sampling.sample_keys(0, 0, 8)
  solver = dpm_solver.DPMSolverPPSDE(VE, SIGMAS, 2, 1.)
  plain, _ = _run(solver, x_t, keys)
  identity, _ = _run(solver, x_t, keys, Preconditioner())
  np.testing.assert_array_equal(identity, plain)
  masked, _ = _run(solver, x_t, keys, Preconditioner(freq_mask=jnp.full(SHAPE, 1.3, jnp.float32)))
  assert float(jnp.max(jnp.abs(masked - plain))) > 1e-3


@pytest.mark.parametrize('make', [_edm, _restart], ids=['edm_stochastic', 'restart'])
def test_noise_then_ode_samplers_refuse_pds_masks_with_the_reason(make):
  with pytest.raises(ValueError, match='PDS is not defined for it: its noise must take'):
    _run(make(), _x_t(3.), precond=Preconditioner(freq_mask=jnp.full(SHAPE, 1.3, jnp.float32)))
  _run(make(), _x_t(3.), precond=Preconditioner())  # the identity is the plain method


# ----------------------------------------------------------------------------- the driver's contract


@pytest.mark.slow
def test_per_sample_keys_make_items_independent_of_the_batch():
  x_t, keys = _x_t(3., n=4), sampling.sample_keys(0, 0, 4)
  for solver in (_edm(), _restart(), dpm_solver.DPMSolverPPSDE(VE, SIGMAS, 3, 1.)):
    full, _ = _run(solver, x_t, keys)
    part, _ = _run(solver, x_t[2:], keys[2:])
    np.testing.assert_allclose(full[2:], part, atol=1e-6, err_msg=solver.name)


@pytest.mark.parametrize('make', [_edm, _restart, lambda: dpm_solver.DPMSolverPPSDE(VE, SIGMAS, 2, 1.)],
                         ids=['edm_stochastic', 'restart', 'dpm_solver++_sde'])
def test_non_finite_states_are_reported_with_their_step(make):
  solver = make()
  threshold = 0.05  # σ: the score is Inf below it

  def exploding_score(x, t):
    return jnp.where(VE.edm_sigma(t)[:, None, None, None] < threshold, jnp.inf, REF.score(x, t, VE))

  with pytest.raises(NonFiniteSampleError, match=re.escape(solver.name) + ': .* at step') as info:
    Sampler(solver, (8,) + SHAPE)(sampling.sample_keys(0, 0, 8), exploding_score, x_init=_x_t(3.))
  times = solver.step_times()
  first = int(np.argmax(times < float(VE.edm_time(np.float64(threshold)))))
  assert info.value.step in (first - 1, first), (info.value.step, times)  # Heun's correction evaluates ahead
  assert info.value.t == pytest.approx(times[info.value.step])


def _config(method, **fields):
  """The 8×8 natural-Gaussian config of test_driver, sampling from the prior."""
  from test_driver import _config as config_of
  config = config_of(method, **fields)
  config.sampling.init = 'prior'
  return config


def _build(method, **fields):
  """get_sampling_fn for `method` (test_driver's helper)."""
  from test_driver import _build as build
  return build(_config(method, **fields))


_METHODS = {'edm_stochastic': ({'num_steps': 6}, 11), 'restart': ({'num_steps': 6}, 11 + 8),
            'dpm_solver': ({'num_steps': 6, 'dpm_solver_variant': 'dpm_solver++_sde', 'solver_order': 3}, 6),
            # 6 nodes of Karras ρ 7 from 50 to 0.01: 50, 17.3, 4.94, 1.07, 0.15, 0.01; Langevin on the last 4, twice
            'dpm_solver+langevin': ({'num_steps': 6, 'dpm_solver_variant': 'dpm_solver++_sde', 'langevin_steps': 2,
                                     'langevin_sigma_max': 5., 'schedule': 'karras'}, 6 + 2 * 4),
            'ancestral+langevin': ({'num_steps': 6, 'langevin_steps': 1}, 6 + 6)}


@pytest.mark.parametrize('method', sorted(_METHODS))
def test_get_sampling_fn_builds_the_method_from_its_fields_with_exact_nfe(method):
  fields, nfe = _METHODS[method]
  fn = _build(method.split('+')[0], **fields)
  samples, got = fn(sampling.sample_keys(0, 0, 4), lambda x, t: -x)
  assert got == nfe == fn.nfe and np.all(np.isfinite(samples))
  assert fn.settings.get('langevin_nodes') == ((nfe - 6) // fields['langevin_steps'] if 'langevin' in method else None)


@pytest.mark.parametrize('method, fields, message', [
    ('edm_stochastic', {'s_churn': -1.}, 'sampling.s_churn = -1.0 must be >= 0'),
    ('edm_stochastic', {'s_tmin': 2., 's_tmax': 1.}, 'sampling.s_tmin = 2.0 must be <= sampling.s_tmax'),
    ('restart', {'restart_tmax': 1e4}, 'config.sampling.restart_tmax = 10000.0 must lie in'),
    ('restart', {'restart_steps': 1}, 'config.sampling.restart_steps = 1 must be an integer >= 2'),
    ('restart', {'restart_k': -1}, 'sampling.restart_k = -1 must be an integer >= 0'),
    ('dpm_solver', {'dpm_solver_variant': 'dpm_solver++_sde', 'eta': -0.5}, 'sampling.eta = -0.5 must be >= 0'),
    ('dpm_solver', {'dpm_solver_variant': 'dpm++sde'}, "dpm_solver_variant = 'dpm\\+\\+sde'; choose one of"),
    ('dpm_solver', {'langevin_steps': 1}, "langevin_steps = 1 needs the stochastic dpm_solver_variant 'dpm_solver\\+\\+_sde'"),
    ('ancestral', {'langevin_steps': -1}, 'sampling.langevin_steps = -1 must be an integer >= 0'),
    ('ancestral', {'langevin_steps': 1, 'snr': 0.}, 'need sampling.snr > 0'),
    ('ancestral', {'langevin_steps': 1, 'langevin_sigma_max': 1e-3}, 'langevin_sigma_max = 0.001 is below every node'),
])
def test_bad_fields_are_refused_naming_the_field(method, fields, message):
  with pytest.raises(ValueError, match=message):
    _build(method, num_steps=6, **fields)


@pytest.mark.slow
def test_the_stochastic_samplers_give_the_same_samples_on_one_and_four_devices(tmp_path):
  nfe = same_samples_on_devices(tmp_path, 'test_stochastic_samplers', 'device_cases')
  assert set(nfe) == {'edm_stochastic', 'restart', 'dpm_solver++_sde', 'dpm_solver++_sde+langevin'}


def device_cases():
  sigmas = grid.karras_sigmas(50., 2e-3, 8, 7.)  # from the prior at σ(T) = 50; 8 steps, as many as samples
  solvers = {'edm_stochastic': _edm(sigmas), 'restart': _restart(sigmas, j=5, t_max=1.),
             'dpm_solver++_sde': dpm_solver.DPMSolverPPSDE(VE, sigmas, 3, 1.),
             # the corrector's batch-mean norms are means over every device's samples (pmean)
             'dpm_solver++_sde+langevin': dpm_solver.DPMSolverPPSDE(
                 VE, sigmas, 2, 1., langevin=grid.GridLangevin(sigmas[:-1] < 5., 0.16, 1))}
  return {name: (solver, REF.score_fn(VE), SHAPE) for name, solver in solvers.items()}


def test_the_config_path_refuses_pds_for_dpm_solver_pp_sde_with_the_reason():
  config = _config('dpm_solver', num_steps=6, dpm_solver_variant='dpm_solver++_sde')
  sde, eps = sde_lib.get_sde(config)
  solver = methods.resolve(config.sampling).build(sde, eps, methods.Start(sde.T, float(sde.edm_sigma(sde.T))))
  assert isinstance(solver, dpm_solver.DPMSolverPPSDE) and not solver.preconditioned_by_pds
  with pytest.raises(ValueError, match='registered without PDS'):
    solver.check_preconditioner(Preconditioner(freq_mask=jnp.full((8, 8, 3), 1.3, jnp.float32)))
