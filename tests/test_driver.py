"""Tests for pds_jax.samplers.driver (the one sampling driver) and `sampling.get_sampling_fn`'s dispatch:
every method gets chunked runs, snapshots, NaN detection with the step, per-sample keys, device
independence and the same NFE accounting."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import gaussian8_config, same_samples_on_devices
from pds_jax import gaussian, sampling, sampling_run, sde_lib
from pds_jax.samplers import dpm_solver, edm, grid, ode
from pds_jax.samplers.driver import NonFiniteSampleError, Sampler
from pds_jax.init_aware import inits, store
from pds_jax.preconditioning import Preconditioner

SHAPE = (4, 8, 8, 2)
REF = gaussian.GaussianReference.power_law(SHAPE[1:], mean=0.3, pixel_std=0.5)
SDE = sde_lib.VESDE(0.01, 10., 12)
GRID = grid.karras_sigmas(10., float(SDE.edm_sigma(np.float64(1e-5))), 6, 7.)


def _solvers():
  """One small instance of every method on SDE (x_T from the prior)."""
  return {'pc': sampling.PCSolver(SDE, eps=1e-5), 'ode': ode.ODESolver(SDE, 1e-5, rtol=1e-3, atol=1e-3),
          'euler': edm.EulerSolver(SDE, GRID), 'heun': edm.HeunSolver(SDE, GRID),
          'ancestral': edm.AncestralSolver(SDE, GRID), 'dpm_solver': dpm_solver.DPMSolver(SDE, GRID, 3),
          'dpm_solver++': dpm_solver.DPMSolverPP(SDE, GRID, 2)}


@pytest.mark.parametrize('name', sorted(_solvers()))
def test_chunked_runs_are_bit_identical_and_snapshot_between_chunks(name):
  solver = _solvers()[name]
  sampler = Sampler(solver, SHAPE)
  keys = sampling.sample_keys(0, 0, SHAPE[0])
  whole, nfe = sampler(keys, REF.score_fn(SDE))
  seen = []
  chunked, nfe2 = sampler(keys, REF.score_fn(SDE), num_chunks=3, progress=True,
                          callback=lambda step, x: seen.append((step, x.shape)))
  np.testing.assert_array_equal(whole, chunked)
  assert nfe == nfe2 and nfe > 0
  assert seen[-1][0] == solver.num_steps and all(s == SHAPE for _, s in seen)
  assert len(seen) == min(3, solver.num_steps)
  if solver.static_nfe is not None:
    assert nfe == solver.static_nfe


@pytest.mark.parametrize('name', sorted(_solvers()))
def test_non_finite_states_are_reported_with_their_step(name):
  solver = _solvers()[name]
  threshold = 0.5

  def exploding_score(x, t):
    return jnp.where(t[:, None, None, None] < threshold, jnp.inf, REF.score(x, t, SDE))

  with pytest.raises(NonFiniteSampleError, match=re.escape(name) + ': .* at step') as info:
    Sampler(solver, SHAPE)(sampling.sample_keys(0, 0, SHAPE[0]), exploding_score)
  times = solver.step_times()
  first = int(np.argmax(times < threshold))  # the first step that starts below the threshold
  # a step that evaluates ahead (Heun's correction, DPM-Solver's stages, the ODE's solve) fails one step earlier
  assert info.value.step in (first - 1, first), (info.value.step, times)


def _lowered_scan_text(solver, pre):
  sampler = Sampler(solver, SHAPE)
  carry = sampler.initial_carry(jax.random.PRNGKey(0), pre)
  return sampler.lower_scan(REF.score_fn(solver.sde), pre, carry).as_text()


@pytest.mark.parametrize('make', [
    lambda n: sampling.PCSolver(SDE.with_num_scales(n), eps=1e-5),
    lambda n: sampling.PCSolver(sde_lib.VPSDE(0.1, 20., n), 'ancestral_sampling', 'langevin', eps=1e-3),
    lambda n: sampling.PCSolver(SDE.with_num_scales(n), eps=1e-5, t_start=0.6),
    lambda n: dpm_solver.DPMSolverPP(SDE, grid.karras_sigmas(10., 0.01, n, 7., append_zero=True), 2),
], ids=['pc_ve', 'pc_vp_ancestral', 'pc_truncated', 'dpm_solver++'])
def test_the_lowered_scan_does_not_grow_with_the_number_of_steps(make):
  """The per-step arrays (time grid, discrete σ / β, σ grid) are jit arguments, not constants: N enters
  the program as the scan's trip count and a few scalars only (issue 15)."""
  pre = Preconditioner(freq_mask=jnp.ones(SHAPE[1:]) * 1.5)
  small, large = (_lowered_scan_text(make(n), pre) for n in (6, 1500))
  number = re.compile(r'-?\d+(\.\d+)?([eE][+-]?\d+)?')
  assert number.sub('#', small) == number.sub('#', large)  # the same program up to its numbers
  assert abs(len(large) - len(small)) < 200, (len(small), len(large))
  constants = [line for line in large.splitlines() if 'stablehlo.constant' in line]
  assert not [c for c in constants if re.search(r'tensor<1[45]\d\dx', c)], constants


@pytest.mark.parametrize('num_steps,eps,t_start', [(7, 1e-5, None), (333, 0.05, None), (2000, 1e-5, None),
                                                   (1000, 1e-3, 0.55), (2, 0.1, None)])
def test_pc_time_grid_table_is_the_in_graph_linspace_bit_for_bit(num_steps, eps, t_start):
  solver = sampling.PCSolver(SDE.with_num_scales(num_steps), eps=eps, t_start=t_start)
  T, run_eps, n = solver.run_sde.T, solver.run_eps, solver.run_sde.N
  body = lambda c, i: (c, jnp.linspace(T, run_eps, n)[i])  # score_sde's step, in a jitted scan
  in_graph = jax.jit(lambda: jax.lax.scan(body, 0, jnp.arange(n))[1])()
  np.testing.assert_array_equal(np.asarray(solver.time_grid), np.asarray(in_graph))


def test_pc_per_sample_keys_make_a_sample_independent_of_its_batch_for_every_noise_draw():
  """Only the Langevin step size couples samples (a batch mean); without the corrector nothing does."""
  solver = sampling.PCSolver(SDE, 'reverse_diffusion', 'none', eps=1e-5)
  keys = sampling.sample_keys(3, 0, 4)
  full, _ = Sampler(solver, SHAPE)(keys, REF.score_fn(SDE))
  part, _ = Sampler(solver, (2,) + SHAPE[1:])(keys[2:], REF.score_fn(SDE))
  np.testing.assert_allclose(full[2:], part, rtol=0, atol=1e-5)


def test_an_init_is_drawn_per_sample_at_sigma_t_and_mapped_to_the_sde_variable():
  vp = sde_lib.VPSDE(N=12)
  init = inits.SpectralGaussianInit.from_images(np.asarray(REF.sample(jax.random.PRNGKey(0), 200)), 1.5)
  t_start = float(vp.edm_time(np.float64(1.5)))
  solver = edm.HeunSolver(vp, grid.karras_sigmas(1.5, 0.05, 4, 7., append_zero=False))
  assert solver.t_start == pytest.approx(t_start)
  keys = sampling.sample_keys(1, 0, 4)
  seen = []
  Sampler(solver, SHAPE, init=init)(keys, REF.score_fn(vp), callback=lambda step, x: seen.append(x), num_chunks=3)
  # the driver draws x̃_T ~ q_T with key i for item i and hands the solver x = m(t_T) x̃_T
  x_t = jax.vmap(lambda k: init.sample(k, 1)[0])(sampling.split(keys)[1])
  state = solver.init(None, vp.edm_scale(jnp.float32(t_start)) * x_t)
  np.testing.assert_allclose(state.x, x_t, rtol=1e-5, atol=1e-5)


def test_sampler_takes_x_init_of_its_shape_only():
  with pytest.raises(ValueError, match=r'x_init has shape \(2, 8, 8, 2\)'):
    Sampler(_solvers()['heun'], SHAPE)(jax.random.PRNGKey(0), REF.score_fn(SDE), x_init=jnp.zeros((2, 8, 8, 2)))


# ----------------------------------------------------------------------------- devices


def device_cases():
  return {name: (solver, REF.score_fn(SDE), SHAPE[1:]) for name, solver in _solvers().items()}


def test_every_method_gives_the_same_samples_on_one_and_four_devices(tmp_path):
  # only the PC Langevin step size (a batch mean, pmean over devices) sees reductions in another order
  nfe = same_samples_on_devices(tmp_path, 'test_driver', 'device_cases', atol=lambda name: 1e-5 if name == 'pc' else 1e-6)
  assert set(nfe) == set(_solvers())


# ----------------------------------------------------------------------------- get_sampling_fn


def _config(method, **sampling_fields):
  return gaussian8_config(num_scales=100, method=method, num_chunks=1, **sampling_fields)


def _build(config, preconditioner=None, workdir=None, batch=4):
  sde, eps = sde_lib.get_sde(config)
  init = sampling_run.load_init(config, workdir, (batch, 8, 8, 3))
  return sampling.get_sampling_fn(config, sde, (batch, 8, 8, 3), lambda x: x, eps, preconditioner, init=init)


@pytest.mark.parametrize('method, fields, nfe', [
    ('pc', {}, 200), ('pc', {'num_steps': 7}, 14), ('euler', {'num_steps': 5}, 5), ('heun', {'num_steps': 5}, 9),
    ('heun', {}, 35), ('ancestral', {'num_steps': 6}, 6), ('dpm_solver', {'num_steps': 5, 'solver_order': 3}, 5),
    ('dpm_solver', {'num_steps': 5, 'solver_order': 3, 'dpm_solver_variant': 'dpm_solver'}, 13),
    ('dpm_solver', {'num_steps': 5, 'dpm_solver_variant': 'dpm_solver'}, 9),
    ('dpm_solver', {'num_steps': 5, 'noise_removal': False}, 4), ('ode', {}, None)])
def test_get_sampling_fn_dispatches_on_the_method(method, fields, nfe):
  fn = _build(_config(method, **fields))
  assert fn.settings['method'] == method and fn.nfe == nfe and fn.settings['nfe'] == nfe
  if method != 'pc':
    assert fn.settings['sigma_max'] == pytest.approx(25.) if method != 'ode' else fn.settings['ode_method'] == 'RK45'


def test_get_sampling_fn_runs_every_method_on_a_vp_model():
  reference = gaussian.GaussianReference.power_law((8, 8, 3), mean=-0.1, pixel_std=0.5)
  for method in ('ode', 'heun', 'dpm_solver', 'ancestral'):
    config = _config(method, num_steps=12)
    config.training.sde = 'vpsde'
    sde, _ = sde_lib.get_sde(config)
    fn = _build(config)
    samples, nfe = fn(sampling.sample_keys(0, 0, 4), reference.score_fn(sde))
    assert samples.shape == (4, 8, 8, 3) and np.isfinite(np.asarray(samples)).all()
    assert nfe == fn.nfe and (method == 'ode' or nfe == fn.settings['nfe'])
    assert fn.settings['sde'] == 'VPSDE' and (method == 'ode' or fn.settings['sigma_max'] > 150)


def test_get_sampling_fn_errors_name_the_field():
  with pytest.raises(ValueError, match="sampling.method = 'dpm'"):
    _build(_config('dpm'))
  with pytest.raises(ValueError, match='num_steps = 0'):
    _build(_config('heun', num_steps=0))
  with pytest.raises(ValueError, match="dpm_solver_variant = 'unipc'"):
    _build(_config('dpm_solver', dpm_solver_variant='unipc'))
  with pytest.raises(ValueError, match="init = 'tarflow'"):
    _build(_config('heun', init='tarflow'))
  masks = Preconditioner(freq_mask=jnp.full((8, 8, 3), 1.2))
  with pytest.raises(ValueError, match="'heun' is a deterministic ODE solver.*'pc' and 'ancestral'"):
    _build(_config('heun'), masks)
  assert _build(_config('ancestral'), masks).settings['preconditioned']


def test_init_from_fit_init_folder_for_any_method(tmp_path):
  config = _config('heun', init='spectral_gaussian', num_steps=6)
  with pytest.raises(ValueError, match='init.json: not found.*fit_init'):
    _build(config, workdir=str(tmp_path))
  images = np.asarray(gaussian.GaussianReference.power_law((8, 8, 3)).sample(jax.random.PRNGKey(0), 100))
  init = inits.SpectralGaussianInit.from_images(images, 2.)
  store.save_init(str(tmp_path / 'init'), 'spectral_gaussian', init, 2., (8, 8, 3), {})
  for method in ('heun', 'pc', 'ode', 'dpm_solver', 'ancestral'):
    fn = _build(_config(method, init='spectral_gaussian', num_steps=6), workdir=str(tmp_path))
    assert fn.settings['init'] == 'spectral_gaussian' and fn.settings['sigma_t'] == 2.
    assert fn.sampler.solver.t_start == pytest.approx(np.log(2. / 0.01) / np.log(25. / 0.01))
  assert _build(_config('heun', init='spectral_gaussian', num_steps=6), workdir=str(tmp_path)).settings['sigma_max'] == pytest.approx(2.)
  # the init_aware alias: today's init-aware sampler (init 'prior' reads as the spectral Gaussian)
  alias = _build(_config('init_aware', init_nodes=10), workdir=str(tmp_path))
  assert alias.settings['method'] == 'heun' and alias.settings['alias'] == 'init_aware' and alias.nfe == 19
  assert alias.settings['sigma_min'] == pytest.approx(0.002)
  pc_alias = _build(_config('init_aware', init_sampler='pc', init_nodes=10), workdir=str(tmp_path))
  assert pc_alias.settings['method'] == 'pc' and pc_alias.nfe == 20 and pc_alias.settings['eps'] == 1e-5
