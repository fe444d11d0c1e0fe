"""The method registry (pds_jax.samplers.methods): a solver registered from this file alone samples through the
CLI; config.sampling is resolved once; masks of the shipped config are dropped for methods without PDS."""
import inspect
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, gaussian8_config
from pds_jax import gaussian, sampling, sde_lib
from pds_jax.samplers import grid, methods
from pds_jax.samplers.grid import GRID_FIELDS, SigmaGridSolver, sigma_grid
from pds_jax.samplers.methods import register_method

TINY_GAUSSIAN = ['--config', str(ROOT / 'configs/gaussian/natural_32.py'), '--config.data.image_size=8',
                 '--config.eval.batch_size=4', '--config.eval.num_samples=4', '--config.sampling.num_chunks=1']


def toy_solver_module():
  """A toy method defined here: explicit midpoint in log σ on the σ grid (2 NFE per step)."""

  class MidpointSolver(SigmaGridSolver):
    name = 'toy_midpoint'

    def evaluations(self, i):
      return 2

    def grid_step(self, denoise, preconditioner, state, i, sigma, sigma_next):
      slope = lambda x, s: (x - denoise(x, s)) / s
      mid = jnp.sqrt(sigma * sigma_next)
      x_mid = state.x + (mid - sigma) * slope(state.x, sigma)
      return state._replace(x=state.x + (sigma_next - sigma) * slope(x_mid, mid))

  @register_method('toy_midpoint', fields=GRID_FIELDS, default_steps=5)
  def _toy_midpoint(fields, ctx):
    return MidpointSolver(ctx.sde, sigma_grid(fields, ctx, 'toy_midpoint'))

  return MidpointSolver


def _run_cli_with_toy(*args) -> subprocess.CompletedProcess:
  """main.py's entry point in a fresh interpreter that first runs this file's toy registration."""
  source = textwrap.dedent(inspect.getsource(toy_solver_module))
  program = '\n'.join([
      'import sys', f'sys.path.insert(0, {str(ROOT)!r})',
      'from pds_jax.samplers.grid import GRID_FIELDS, SigmaGridSolver, sigma_grid',
      'from pds_jax.samplers.methods import register_method', 'import jax.numpy as jnp',
      source, 'toy_solver_module()', 'import main', 'from absl import app',
      f'sys.argv = ["main.py", *{list(args)!r}]', 'app.run(main.main, flags_parser=main.parse_flags)'])
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(ROOT / '.jax_cache'))
  return subprocess.run([sys.executable, '-c', program], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)


def test_a_solver_registered_in_a_test_file_samples_through_the_cli(tmp_path):
  proc = _run_cli_with_toy(*TINY_GAUSSIAN, '--mode=sample', f'--workdir={tmp_path}',
                           '--config.sampling.method=toy_midpoint', '--config.sampling.num_steps=4')
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((tmp_path / 'eval' / 'report.json').read_text())
  assert report['settings']['method'] == 'toy_midpoint' and report['settings']['schedule'] == 'logsnr'
  assert report['nfe_per_sample'] == 2 * 3 + 1  # 3 midpoint steps to σ_min, then the denoising step
  with np.load(tmp_path / 'eval' / 'samples_0_0.npz') as f:
    assert f['samples_float'].shape == (4, 8, 8, 3) and np.isfinite(f['samples_float']).all()


def test_an_unknown_method_is_one_line_naming_the_registered_ones(tmp_path):
  proc = _run_cli_with_toy(*TINY_GAUSSIAN, '--mode=sample', f'--workdir={tmp_path}',
                           '--config.sampling.method=toy_midpont')
  assert proc.returncode == 2 and "sampling.method = 'toy_midpont'" in proc.stderr and 'toy_midpoint' in proc.stderr
  assert 'Traceback' not in proc.stderr and not (tmp_path / 'eval').exists()


def test_registration_is_unique_and_fields_are_declared_once():
  with pytest.raises(ValueError, match="'heun' is already registered"):
    register_method('heun')(lambda fields, ctx: None)
  with pytest.raises(ValueError, match='declared twice with different defaults'):
    methods.declare_field('rho', 3., float, 'another ρ')
  assert methods.declare_field('rho', 7., float, 'the same default') == 'rho'
  assert {'pc', 'ode', 'euler', 'heun', 'ancestral', 'dpm_solver'} <= set(methods.method_names())
  assert set(methods.pds_methods()) >= {'pc', 'ancestral'} and 'heun' not in methods.pds_methods()


_config = gaussian8_config


def test_resolve_translates_the_init_aware_alias_once():
  resolved = methods.resolve(_config(method='init_aware', init_sampler='heun', init_nodes=7).sampling)
  assert resolved.method.name == 'heun' and resolved.num_steps == 7 and resolved.alias == 'init_aware'
  assert resolved.init == 'spectral_gaussian' and resolved.fields['rho'] == _config().sampling.init_rho
  assert methods.resolve(_config(method='heun').sampling).init == 'auto'  # the default, resolved with the files
  with pytest.raises(ValueError, match="init_sampler = 'dpm'"):
    methods.resolve(_config(method='init_aware', init_sampler='dpm').sampling)
  with pytest.raises(ValueError, match='needs its q_T'):
    config = _config(method='heun', init='spectral_gaussian')
    sde, eps = sde_lib.get_sde(config)
    sampling.get_sampling_fn(config, sde, (2, 8, 8, 3), lambda x: x, eps)


@pytest.mark.parametrize('schedule', ['karras', 'logsnr', 'time_uniform'])
def test_schedules_span_sigma_max_to_sigma_min(schedule):
  config = _config(method='dpm_solver', num_steps=6, schedule=schedule)
  for sde_name in ('vesde', 'vpsde'):
    config.training.sde = sde_name
    sde, eps = sde_lib.get_sde(config)
    sigmas = sampling.get_sampling_fn(config, sde, (2, 8, 8, 3), lambda x: x, eps).sampler.solver.sigmas
    assert len(sigmas) == 7 and sigmas[-1] == 0 and np.all(np.diff(sigmas) < 0)
    assert sigmas[0] == pytest.approx(float(sde.edm_sigma(np.float64(1.))), rel=1e-6)
    assert sigmas[-2] == pytest.approx(float(sde.edm_sigma(np.float64(eps))), rel=1e-6)
  lam = -np.log(grid.logsnr_sigmas(80., 0.002, 6))
  np.testing.assert_allclose(np.diff(lam), np.diff(lam)[0])


def test_tuned_schedule_errors_name_the_file(tmp_path):
  config = _config(method='dpm_solver', num_steps=4, schedule='tuned')
  sde, eps = sde_lib.get_sde(config)
  build = lambda: sampling.get_sampling_fn(config, sde, (2, 8, 8, 3), lambda x: x, eps)
  with pytest.raises(ValueError, match='needs config.sampling.schedule_path'):
    build()
  path = tmp_path / 'dpm_solver_4.json'
  config.sampling.schedule_path = str(path)
  with pytest.raises(ValueError, match='dpm_solver_4.json: schedule file not found'):
    build()
  sigma_max = float(sde.edm_sigma(np.float64(1.)))
  path.write_text(json.dumps({'method': 'heun', 'nfe': 4, 'sigmas': [sigma_max, 1., 0.1, 0.01, 0.]}))
  with pytest.raises(ValueError, match="tuned for method 'heun'"):
    build()
  path.write_text(json.dumps({'method': 'dpm_solver', 'nfe': 3, 'sigmas': [sigma_max, 1., 0.01, 0.]}))
  with pytest.raises(ValueError, match='3 nodes'):
    build()
  path.write_text(json.dumps({'method': 'dpm_solver', 'nfe': 4, 'sigmas': [sigma_max, 1., 0.1, 0.01, 0.]}))
  assert list(build().sampler.solver.sigmas) == [sigma_max, 1., 0.1, 0.01, 0.]


def test_solvers_are_pytrees_whose_grids_are_leaves():
  sde = sde_lib.VESDE(0.01, 10., 50)
  solver = sampling.PCSolver(sde, eps=1e-5)
  leaves = jax.tree_util.tree_leaves(solver)
  assert any(leaf.shape == (50,) for leaf in leaves)  # the time grid and the SDE's discrete σ's
  config = _config(method='heun', num_steps=5)
  heun = sampling.get_sampling_fn(config, *sde_lib.get_sde(config)[:1], (2, 8, 8, 3), lambda x: x, 1e-5)
  assert heun.sampler.solver.sigmas.shape == (6,)
  assert any(leaf is heun.sampler.solver.sigmas for leaf in jax.tree_util.tree_leaves(heun.sampler.solver))


def test_config_masks_are_dropped_for_a_method_without_pds_and_flag_masks_are_refused(tmp_path):
  from pds_jax import preconditioning
  freq = np.random.RandomState(0).uniform(1, 5, (8, 8, 3))
  preconditioning.save_statistics(freq, None, str(tmp_path / 'freq.npy'), None)
  config_file = tmp_path / 'with_masks.py'
  config_file.write_text(textwrap.dedent(f'''
      from configs.gaussian.natural_32 import get_config as base
      def get_config():
        config = base()
        config.data.image_size = 8
        config.sampling.freq_mask_path = {str(tmp_path / 'freq.npy')!r}
        return config
      '''))
  common = ['--config', str(config_file), '--config.eval.batch_size=4', '--config.eval.num_samples=4',
            '--config.sampling.method=heun', '--config.sampling.num_steps=3']
  ok = _run_cli_with_toy(*common, '--mode=sample', f'--workdir={tmp_path / "a"}')
  assert ok.returncode == 0, ok.stderr[-3000:]
  assert 'sampling.method heun has no PDS: sampling without the config\'s freq_mask_path' in ok.stderr
  assert json.loads((tmp_path / 'a' / 'eval' / 'report.json').read_text())['settings']['preconditioned'] is False
  refused = _run_cli_with_toy(*common, '--mode=sample', f'--workdir={tmp_path / "b"}',
                              f'--freq_mask_path={tmp_path / "freq.npy"}')
  assert refused.returncode == 2 and "'heun' is a deterministic ODE solver" in refused.stderr


def test_auto_init_starts_ode_like_ve_solvers_from_the_fitted_q_t(tmp_path, caplog):
  from pds_jax import sampling_run
  from pds_jax.init_aware import inits, store
  images = np.asarray(gaussian.GaussianReference.power_law((8, 8, 3)).sample(jax.random.PRNGKey(0), 64))
  store.save_init(str(tmp_path / 'init'), 'spectral_gaussian', inits.SpectralGaussianInit.from_images(images, 2.),
                  2., (8, 8, 3), {})

  def build(method, sde_name='vesde', workdir=tmp_path, **fields):
    config = _config(method=method, num_steps=4, **fields)
    config.training.sde = sde_name
    sde, eps = sde_lib.get_sde(config)
    init = sampling_run.load_init(config, str(workdir), (2, 8, 8, 3))
    return sampling.get_sampling_fn(config, sde, (2, 8, 8, 3), lambda x: x, eps, init=init).settings

  assert build('heun')['init'] == 'spectral_gaussian' and build('heun')['sigma_t'] == 2.
  assert build('dpm_solver')['init_rule'] == 'auto' and build('dpm_solver')['sigma_t'] == 2.
  assert build('pc')['init'] == 'prior' and build('ancestral')['init'] == 'prior'  # re-noising: the prior
  sde_variant = build('dpm_solver', dpm_solver_variant='dpm_solver++_sde')
  assert sde_variant['init'] == 'prior'
  for ode_like in ('edm_stochastic', 'restart'):  # noise samples from the prior (docs/results.md)
    assert build(ode_like)['init'] == 'spectral_gaussian', ode_like
  assert build('heun', 'vpsde')['init'] == 'prior'
  sampling._WARNED.discard('euler')
  with caplog.at_level('WARNING'):
    assert build('euler', workdir=tmp_path / 'none')['init'] == 'prior'
    assert build('euler', workdir=tmp_path / 'none')['init'] == 'prior'
  assert caplog.text.count('samples this VE model from its prior along the probability-flow ODE') == 1  # once
  assert 'use ancestral or pc, or dpm_solver with dpm_solver_variant=dpm_solver++_sde' in caplog.text
