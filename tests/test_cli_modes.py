"""End-to-end tests of the stats, eval, fit_init and init-aware sample modes of main.py, on a
folder of the user's own images and on the exact Gaussian reference."""
import json

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from pds_jax import preconditioning
from test_cli import _main
from test_train import TINY_TRAIN

GAUSSIAN_16 = ['--config', str(ROOT / 'configs/gaussian/natural_32.py'), '--config.data.image_size=16',
               '--config.eval.batch_size=8', '--config.eval.num_samples=16', '--config.sampling.num_chunks=1']


@pytest.fixture
def image_folder(tmp_path):
  """20 photos of assorted sizes: smooth colour gradients with a stripe, as PNG and JPEG."""
  folder = tmp_path / 'my_images'
  (folder / 'sub').mkdir(parents=True)
  rng = np.random.default_rng(0)
  for i in range(20):
    h, w = rng.integers(20, 60, size=2)
    yy, xx = np.mgrid[:h, :w] / max(h, w)
    img = np.stack([xx, yy, (xx + yy) / 2], -1) * rng.uniform(0.5, 1., 3)
    img[h // 3: h // 3 + 2] = 1.
    path = folder / ('sub' if i % 2 else '') / f'img_{i}.{"png" if i % 3 else "jpg"}'
    Image.fromarray((img * 255).astype(np.uint8)).save(path)
  return folder


@pytest.mark.slow  # ~60 CPU-s: stats, a short training run and sampling, each a fresh process
def test_stats_train_on_a_folder_of_own_images(tmp_path, image_folder):
  folder_args = ['--config.data.dataset=folder', f'--config.data.path={image_folder}']
  _main(*TINY_TRAIN, *folder_args, '--mode=stats', f'--workdir={tmp_path}')
  freq, space = tmp_path / 'stats' / 'freq_folder_my_images_8.npy', tmp_path / 'stats' / 'space_folder_my_images_8.npy'
  assert np.load(freq).shape == (3, 8, 8) and (tmp_path / 'stats' / 'freq_folder_my_images_8.png').is_file()
  precond = preconditioning.load(str(freq), str(space), alpha=5., shape=(8, 8, 3))
  assert precond.condition_number() > 1.
  _main(*TINY_TRAIN, *folder_args, '--mode=train', f'--workdir={tmp_path}', '--config.training.n_iters=2',
        '--config.training.snapshot_freq=2')
  assert (tmp_path / 'checkpoints' / 'checkpoint_1').is_file()


def test_stats_on_an_empty_folder_names_it(tmp_path):
  (tmp_path / 'empty').mkdir()
  proc = _main(*TINY_TRAIN, '--config.data.dataset=folder', f'--config.data.path={tmp_path / "empty"}',
               '--mode=stats', f'--workdir={tmp_path}', check=False)
  assert proc.returncode == 2 and str(tmp_path / 'empty') in proc.stderr


def test_eval_scores_several_runs_and_plots_metric_vs_nfe(tmp_path):
  for k in (100, 25):
    _main(*GAUSSIAN_16, '--mode=sample', f'--workdir={tmp_path}', f'--speed_up={k}', f'--eval_folder=run_{k}')
  _main(*GAUSSIAN_16, '--mode=eval', f'--workdir={tmp_path}', '--config.eval.kid_subsets=10',
        f'--sample_dirs={tmp_path / "run_100"},{tmp_path / "run_25"}')
  metrics = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())
  few, many = (metrics[str(tmp_path / f'run_{k}')] for k in (100, 25))
  assert few['settings']['num_steps'] == 20 and many['settings']['num_steps'] == 80
  for run in (few, many):
    assert set(run['metrics']) >= {'swd', 'fd_features', 'kid', 'exact_gaussian'}
    assert run['metrics']['num_samples'] == 16
  # more steps are closer to the exact target on the exact metric
  assert many['metrics']['exact_gaussian']['frechet_distance'] < few['metrics']['exact_gaussian']['frechet_distance']
  for name in ('swd_avg', 'fd_features', 'kid'):
    assert (tmp_path / 'eval' / f'{name}_vs_nfe.png').stat().st_size > 1000


def test_eval_refuses_a_folder_without_samples(tmp_path):
  proc = _main(*GAUSSIAN_16, '--mode=eval', f'--workdir={tmp_path}', f'--sample_dirs={tmp_path}', check=False)
  assert proc.returncode == 2 and 'report.json' in proc.stderr


def test_fit_init_then_init_aware_sampling_with_pds(tmp_path):
  out = _main(*GAUSSIAN_16, '--mode=fit_init', f'--workdir={tmp_path}', '--config.init_aware.num_images=300').stdout
  manifest = json.loads((tmp_path / 'init' / 'init.json').read_text())
  assert manifest['init'] == 'spectral_gaussian' and manifest['shape'] == [16, 16, 3]
  # σ_T from the principal-direction rule (the default), then the spectral init (the exact p_T of Gaussian
  # data, fitted on 270 images) is clearly better than N(0, σ_T² I) on held-out data
  assert manifest['sigma_t_rule']['rule'] == 'principal' and 0.1 < manifest['sigma_t'] < 5.
  assert manifest['spectral_gaussian']['val_nll_per_dim'] < manifest['gaussian_baseline']['val_nll_per_dim'] - .2
  assert 'validation NLL' in out
  # the init_aware alias with its PC sampler: PDS applies to the stochastic sampler after the init
  _main(*GAUSSIAN_16, '--mode=compare', f'--workdir={tmp_path}', '--config.sampling.method=init_aware',
        '--config.sampling.init_sampler=pc', '--config.sampling.init_nodes=10')
  report = json.loads((tmp_path / 'compare' / 'report.json').read_text())
  assert report['pds']['settings']['preconditioned'] and report['vanilla']['settings']['init'] == 'spectral_gaussian'
  assert report['vanilla']['nfe_per_sample'] == 20 and report['vanilla']['settings']['method'] == 'pc'
  floor = report['noise_floor']['frechet_distance']
  assert report['vanilla']['metrics']['frechet_distance'] < 10 * floor + 1.
  # any method from the init; EDM Heun (9 Heun steps + the last Euler step to σ = 0), without PDS masks
  _main(*GAUSSIAN_16, '--mode=sample', f'--workdir={tmp_path}', '--config.sampling.method=heun',
        '--config.sampling.init=spectral_gaussian', '--config.sampling.num_steps=10', '--eval_folder=heun')
  report = json.loads((tmp_path / 'heun' / 'report.json').read_text())
  assert report['nfe_per_sample'] == 19 and report['settings']['sigma_t'] == manifest['sigma_t']
  assert report['metrics']['frechet_distance'] < 10 * floor + 1.
  # compare's PDS run with a deterministic solver is refused before anything is sampled
  proc = _main(*GAUSSIAN_16, '--mode=compare', f'--workdir={tmp_path}', '--config.sampling.method=init_aware',
               '--eval_folder=refused', check=False)
  assert proc.returncode == 2 and 'deterministic ODE solver' in proc.stderr and not (tmp_path / 'refused').exists()


def test_init_aware_errors_name_the_problem(tmp_path):
  proc = _main(*GAUSSIAN_16, '--mode=sample', f'--workdir={tmp_path}', '--config.sampling.method=init_aware',
               check=False)
  assert proc.returncode == 2 and 'init.json' in proc.stderr and 'fit_init' in proc.stderr
  proc = _main(*GAUSSIAN_16, '--mode=fit_init', f'--workdir={tmp_path}', '--config.init_aware.sigma_t=0.001',
               '--config.init_aware.num_images=20', check=False)
  assert proc.returncode == 2 and 'sigma_T = 0.001' in proc.stderr


def test_fit_init_flow_then_sample_from_it(tmp_path):
  tiny_flow = ['--config.sampling.init=flow', '--config.init_aware.sigma_t=2.0', '--config.init_aware.num_images=64',
               '--config.init_aware.epochs=2', '--config.init_aware.batch_size=16',
               '--config.init_aware.tarflow.channels=16', '--config.init_aware.tarflow.layers_per_block=1',
               '--config.init_aware.tarflow.head_dim=8', '--config.data.image_size=8']
  out = _main(*GAUSSIAN_16, *tiny_flow, '--mode=fit_init', f'--workdir={tmp_path}').stdout
  manifest = json.loads((tmp_path / 'init' / 'init.json').read_text())
  assert manifest['init'] == 'flow' and manifest['sigma_t'] == 2.0 and (tmp_path / 'init' / 'flow.msgpack').is_file()
  assert np.isfinite(manifest['flow']['val_nll_per_dim']) and 'validation NLL' in out
  _main(*GAUSSIAN_16, *tiny_flow, '--mode=sample', f'--workdir={tmp_path}', '--config.sampling.method=init_aware',
        '--config.sampling.init_nodes=4', '--config.eval.num_samples=8')
  report = json.loads((tmp_path / 'eval' / 'report.json').read_text())
  assert report['settings']['init'] == 'flow' and report['nfe_per_sample'] == 7
  # a flow fitted to 8x8 data refuses a 16x16 model, naming both shapes
  proc = _main(*GAUSSIAN_16, *tiny_flow[:-1], '--mode=sample', f'--workdir={tmp_path}',
               '--config.sampling.method=init_aware', check=False)
  assert proc.returncode == 2 and '(8, 8, 3)' in proc.stderr and '(16, 16, 3)' in proc.stderr
