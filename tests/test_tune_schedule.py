"""Searched time steps (`pds_jax.samplers.tune`, `--mode tune_schedule`): the DP is exact, a tuned
schedule beats the fixed ones on the exact Gaussian, the CLI writes a file `schedule=tuned` reads,
and mismatched files and unsupported methods fail with errors that name what is wrong."""
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import ROOT
from pds_jax import gaussian, sampling, sde_lib
from pds_jax.samplers import tune
from test_cli import _main


# ----------------------------------------------------------------------------- the DP


def _brute_force(n, steps, total):
  paths = ([0, *inner, n - 1] for inner in itertools.combinations(range(1, n - 1), steps - 1))
  return min(total(p) for p in paths)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 8), data=st.data())
def test_dp_finds_the_least_cost_path(n, data):
  steps = data.draw(st.integers(1, n - 1))
  seed = data.draw(st.integers(0, 2 ** 16))
  rng = np.random.default_rng(seed)
  cost = rng.exponential(size=(n, n))
  path, total = tune.optimal_path(cost, steps)
  assert len(path) == steps + 1 and path[0] == 0 and path[-1] == n - 1 and np.all(np.diff(path) > 0)
  assert np.isclose(total, tune.path_cost(path, cost))
  assert np.isclose(total, _brute_force(n, steps, lambda p: tune.path_cost(p, cost)))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 8), data=st.data())
def test_multistep_dp_finds_the_least_cost_path(n, data):
  steps = data.draw(st.integers(1, n - 1))
  rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16)))
  first, cost3 = rng.exponential(size=(n, n)), rng.exponential(size=(n, n, n))
  path, total = tune.optimal_path_multistep(first, cost3, steps)
  assert len(path) == steps + 1 and path[0] == 0 and path[-1] == n - 1 and np.all(np.diff(path) > 0)
  assert np.isclose(total, tune.path_cost(path, first, cost3))
  assert np.isclose(total, _brute_force(n, steps, lambda p: tune.path_cost(p, first, cost3)))


def test_dp_refuses_more_steps_than_the_fine_grid_has():
  with pytest.raises(ValueError, match='need 1 <= steps <= 4'):
    tune.optimal_path(np.ones((5, 5)), 5)


# ----------------------------------------------------------------------------- the exact Gaussian


def _gaussian(size=8):
  from configs.gaussian.default_gaussian_configs import get_gaussian_config
  config = get_gaussian_config(size, 1., sde='vesde')
  reference = gaussian.GaussianReference.power_law((size, size, 3), mean=config.data.pixel_mean,
                                                   pixel_std=config.data.pixel_std)
  config.model.sigma_max = round(gaussian.song_ermon_sigma_max(reference, n=500), 1)
  sde, eps = sde_lib.get_sde(config)
  s = config.sampling
  s.tune_fine_steps, s.tune_teacher_steps, s.tune_num_samples = 30, 240, 8
  return config, sde, eps, reference.score_fn(sde)


def _held_out_error(config, sde, eps, score_fn, schedule, path, x_t, reference_samples):
  config.sampling.schedule, config.sampling.schedule_path = schedule, path
  fn = sampling.get_sampling_fn(config, sde, x_t.shape, lambda x: x, eps)
  samples, _ = fn(sampling.sample_keys(3, 0, x_t.shape[0]), score_fn, x_init=x_t)
  return float(jnp.sqrt(jnp.mean((samples - reference_samples) ** 2)))


@pytest.mark.parametrize('fields', [pytest.param({'method': 'dpm_solver'}, marks=pytest.mark.slow),  # ~80 s
                                    {'method': 'euler'}])
def test_tuned_schedule_beats_the_fixed_ones_on_held_out_seeds(tmp_path, fields):
  """At 5 nodes the tuned grid's error against the exact flow (a 400-step Heun solve) on seeds the
  search never saw is at most every fixed schedule's."""
  config, sde, eps, score_fn = _gaussian()
  for name, value in fields.items():
    config.sampling[name] = value
  config.sampling.num_steps = 5
  fn = sampling.get_sampling_fn(config, sde, (1, 8, 8, 3), lambda x: x, eps)
  spec = tune.search(config.sampling, fn.sampler, score_fn, eps, seed=0)
  assert spec['global_error']['tuned'] <= min(spec['global_error'][s] for s in tune.FIXED_SCHEDULES)
  path = str(tmp_path / 'tuned.json')
  with open(path, 'w') as f:
    json.dump(spec, f)
  # held out: 64 other x_T, the exact flow approximated by Heun on 400 log-uniform nodes
  x_t = sde.prior_sampling(jax.random.PRNGKey(123), (64, 8, 8, 3))
  fine = dict(config.sampling)
  config.sampling.method, config.sampling.num_steps, config.sampling.schedule = 'heun', 400, 'logsnr'
  reference = sampling.get_sampling_fn(config, sde, x_t.shape, lambda x: x, eps)(
      sampling.sample_keys(3, 0, 64), score_fn, x_init=x_t)[0]
  config.sampling.method, config.sampling.num_steps = fine['method'], 5
  errors = {s: _held_out_error(config, sde, eps, score_fn, s, path, x_t, reference)
            for s in tune.FIXED_SCHEDULES + ('tuned',)}
  assert errors['tuned'] <= min(errors[s] for s in tune.FIXED_SCHEDULES), errors


# ----------------------------------------------------------------------------- errors


def test_unsupported_methods_and_step_counts_are_refused():
  config, sde, eps, score_fn = _gaussian()
  for method, match in (('ancestral', 'draws noise at every step'), ('pc', 'has no σ grid')):
    config.sampling.method = method
    config.sampling.num_steps = 5
    fn = sampling.get_sampling_fn(config, sde, (1, 8, 8, 3), lambda x: x, eps)
    with pytest.raises(ValueError, match=match):
      tune.search(config.sampling, fn.sampler, score_fn, eps, seed=0)
  config.sampling.method, config.sampling.num_steps = 'heun', 40
  fn = sampling.get_sampling_fn(config, sde, (1, 8, 8, 3), lambda x: x, eps)
  with pytest.raises(ValueError, match='raise config.sampling.tune_fine_steps'):
    tune.search(config.sampling, fn.sampler, score_fn, eps, seed=0)
  config.sampling.tune_cost = 'bogus'
  config.sampling.num_steps = 5
  fn = sampling.get_sampling_fn(config, sde, (1, 8, 8, 3), lambda x: x, eps)
  with pytest.raises(ValueError, match='tune_cost'):
    tune.search(config.sampling, fn.sampler, score_fn, eps, seed=0)


def test_mismatched_schedule_files_name_the_file(tmp_path):
  config, sde, eps, _ = _gaussian()
  sigma_max = float(sde.edm_sigma(np.float64(1.)))
  path = tmp_path / 'dpm_solver_5.json'
  path.write_text(json.dumps({'method': 'dpm_solver', 'nfe': 5, 'sigmas': [sigma_max, 2., 0.5, 0.1, 0.01, 0.]}))
  config.sampling.schedule, config.sampling.schedule_path = 'tuned', str(path)
  build = lambda: sampling.get_sampling_fn(config, sde, (1, 8, 8, 3), lambda x: x, eps)
  config.sampling.method, config.sampling.num_steps = 'dpm_solver', 5
  assert np.allclose(build().sampler.solver.sigmas, [sigma_max, 2., 0.5, 0.1, 0.01, 0.])
  config.sampling.method = 'heun'
  with pytest.raises(ValueError, match=f"{path}: a schedule tuned for method 'dpm_solver'"):
    build()
  config.sampling.method, config.sampling.num_steps = 'dpm_solver', 6
  with pytest.raises(ValueError, match=f'{path}: 5 nodes'):
    build()
  config.sampling.schedule_path = str(tmp_path / 'missing.json')
  with pytest.raises(ValueError, match='missing.json: schedule file not found'):
    build()


def test_a_schedule_tuned_from_a_fitted_init_is_read_under_the_auto_init(tmp_path):
  """On a VE model 'auto' starts the ODE solvers from the fitted q_T at σ_T, and the search tunes from there:
  the file's first node is σ_T, not σ_max, and sampling with it must accept it (the 'auto' decision itself
  must not read the tuned file at σ_max)."""
  from pds_jax.init_aware import inits
  config, sde, eps, _ = _gaussian()
  images = np.asarray(gaussian.GaussianReference.power_law((8, 8, 3)).sample(jax.random.PRNGKey(0), 64))
  init = (inits.SpectralGaussianInit.from_images(images, 2.), 2.)
  path = tmp_path / 'dpm_solver_5.json'
  path.write_text(json.dumps({'method': 'dpm_solver', 'nfe': 5, 'sigmas': [2., 0.5, 0.1, 0.03, 0.01, 0.]}))
  s = config.sampling
  s.method, s.num_steps, s.schedule, s.schedule_path = 'dpm_solver', 5, 'tuned', str(path)
  for kind in ('auto', 'spectral_gaussian'):
    s.init = kind
    fn = sampling.get_sampling_fn(config, sde, (1, 8, 8, 3), lambda x: x, eps, init=init)
    assert fn.settings['sigma_t'] == 2. and fn.settings['schedule'] == 'tuned', kind
    np.testing.assert_allclose(fn.sampler.solver.sigmas, [2., 0.5, 0.1, 0.03, 0.01, 0.])
  s.init = 'prior'  # from σ_max the file does not fit: named
  with pytest.raises(ValueError, match='the schedule starts at sigma 2'):
    sampling.get_sampling_fn(config, sde, (1, 8, 8, 3), lambda x: x, eps, init=init)


# ----------------------------------------------------------------------------- the CLI


GAUSSIAN_8 = ['--config', str(ROOT / 'configs/gaussian/natural_32.py'), '--config.data.image_size=8',
              '--config.eval.batch_size=8', '--config.eval.num_samples=8', '--config.sampling.num_chunks=1',
              '--config.sampling.method=dpm_solver', '--config.sampling.num_steps=4',
              '--config.sampling.tune_fine_steps=16', '--config.sampling.tune_teacher_steps=64',
              '--config.sampling.tune_num_samples=4', '--config.sampling.tune_refine_rounds=1']


@pytest.mark.slow  # two fresh processes (~40 CPU-s each on a loaded machine)
def test_cli_writes_the_schedule_and_sample_reads_it(tmp_path):
  out = _main(*GAUSSIAN_8, '--mode=tune_schedule', f'--workdir={tmp_path}').stdout
  path = tmp_path / 'schedule' / 'dpm_solver_4.json'
  spec = json.loads(path.read_text())
  assert f'wrote {path}' in out and 'tuned / best fixed' in out
  assert spec['method'] == 'dpm_solver' and spec['nfe'] == 4 and spec['num_steps'] == 4
  sigmas = np.asarray(spec['sigmas'])
  assert sigmas[-1] == 0 and np.all(np.diff(sigmas) < 0) and len(sigmas) == 5
  assert spec['model'] == {'model': 'gaussian_reference'} and spec['teacher']['num_samples'] == 4
  _main(*GAUSSIAN_8, '--mode=sample', f'--workdir={tmp_path}', '--config.sampling.schedule=tuned',
        f'--config.sampling.schedule_path={path}')
  report = json.loads((tmp_path / 'eval' / 'report.json').read_text())
  assert report['nfe_per_sample'] == 4 and report['settings']['schedule'] == 'tuned'
  assert np.isclose(report['settings']['sigma_max'], sigmas[0])
  proc = _main(*GAUSSIAN_8, '--mode=sample', f'--workdir={tmp_path}', '--config.sampling.schedule=tuned',
               f'--config.sampling.schedule_path={path}', '--config.sampling.num_steps=5', '--eval_folder=bad',
               check=False)
  assert proc.returncode == 2 and f'{path}: 4 nodes' in proc.stderr
