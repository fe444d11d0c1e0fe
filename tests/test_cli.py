"""End-to-end tests of main.py (subprocesses, as a user runs it)."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT

TINY_GAUSSIAN = ['--config', str(ROOT / 'configs/gaussian/natural_32.py'), '--config.data.image_size=8',
                 '--config.eval.batch_size=8', '--config.eval.num_samples=12', '--config.sampling.num_chunks=2']


def _main(*args, cwd=None, check=True):
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(ROOT / '.jax_cache'))
  proc = subprocess.run([sys.executable, str(ROOT / 'main.py'), f'--jax_cache={ROOT / ".jax_cache"}', *args],
                        cwd=cwd or ROOT, env=env, capture_output=True, text=True, timeout=600)
  if check and proc.returncode != 0:
    raise AssertionError(f'main.py failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}')
  return proc


def test_sample_writes_rounds_grid_and_report(tmp_path):
  _main(*TINY_GAUSSIAN, '--mode=sample', f'--workdir={tmp_path}', '--speed_up=200')
  out = tmp_path / 'eval'
  assert sorted(p.name for p in out.iterdir()) == ['grid.png', 'report.json', 'run.json', 'samples_0_0.npz',
                                                 'samples_1_0.npz']
  with np.load(out / 'samples_0_0.npz') as f:
    assert f['samples'].shape == (8, 8, 8, 3) and f['samples'].dtype == np.uint8
    assert f['samples_float'].dtype == np.float32 and np.all(np.isfinite(f['samples_float']))
  report = json.loads((out / 'report.json').read_text())
  assert report['num_samples'] == 12 and report['settings']['num_steps'] == 10
  assert report['nfe_per_sample'] == 20 and report['settings']['preconditioned'] is False
  assert set(report['metrics']) == {'log_variance_error', 'frechet_distance', 'kl_per_dim'}
  assert Image.open(out / 'grid.png').size[0] > 8


def test_sample_with_official_masks_and_cli_overrides(tmp_path):
  from pds_jax import preconditioning
  rs = np.random.RandomState(0)
  freq, space = rs.uniform(1, 5, (8, 8, 3)), rs.uniform(0.1, 1, (8, 8, 3))
  preconditioning.save_statistics(freq, space, str(tmp_path / 'freq.npy'), str(tmp_path / 'space.npy'))
  _main(*TINY_GAUSSIAN, '--mode=sample', f'--workdir={tmp_path}', '--speed_up=400', '--alpha=2',
        f'--freq_mask_path={tmp_path / "freq.npy"}', f'--space_mask_path={tmp_path / "space.npy"}',
        '--config.sampling.pds_variant=marginal_preserving', '--eval_folder=pds')
  settings = json.loads((tmp_path / 'pds' / 'report.json').read_text())['settings']
  assert settings['preconditioned'] and settings['alpha'] == 2 and settings['num_steps'] == 5
  assert settings['pds_variant'] == 'marginal_preserving'


def test_compare_prints_both_errors(tmp_path):
  proc = _main(*TINY_GAUSSIAN, '--mode=compare', f'--workdir={tmp_path}', '--speed_up=200')
  assert 'vanilla  steps=   10' in proc.stdout and 'pds      steps=   10' in proc.stdout
  report = json.loads((tmp_path / 'compare' / 'report.json').read_text())
  assert report['pds']['settings']['preconditioned'] and not report['vanilla']['settings']['preconditioned']
  # three titled panels (vanilla, PDS, data), each at least 360 px wide, and the metric against NFE
  assert Image.open(tmp_path / 'compare' / 'vanilla_vs_pds.png').size[0] >= 3 * 360
  assert Image.open(tmp_path / 'compare' / 'metric_vs_nfe.png').size[0] >= 400


def test_compare_sweeps_compare_num_steps_from_the_same_seeds_as_sample(tmp_path):
  _main(*TINY_GAUSSIAN, '--mode=compare', f'--workdir={tmp_path}', '--speed_up=200',
        '--config.sampling.compare_num_steps=(2, 4)')
  report = json.loads((tmp_path / 'compare' / 'report.json').read_text())
  assert set(report) == {'vanilla', 'pds', 'vanilla_2', 'pds_2', 'vanilla_4', 'pds_4', 'noise_floor'}
  for n in (2, 4):
    assert report[f'vanilla_{n}']['settings']['num_steps'] == n and report[f'vanilla_{n}']['nfe_per_sample'] == 2 * n
    assert report[f'pds_{n}']['settings']['preconditioned'] and report[f'pds_{n}']['settings']['alpha'] == 500. / n ** 2  # α(N)
  # the sweep's vanilla run at N = 4 is `--mode sample` at num_steps 4: the same keys give the same samples
  _main(*TINY_GAUSSIAN, '--mode=sample', f'--workdir={tmp_path}', '--config.sampling.num_steps=4',
        '--config.eval.num_samples=8')
  with np.load(tmp_path / 'compare' / 'samples_vanilla_4.npz') as a, np.load(tmp_path / 'eval' / 'samples_0_0.npz') as b:
    np.testing.assert_array_equal(a['samples_float'], b['samples_float'])
  assert Image.open(tmp_path / 'compare' / 'metric_vs_nfe.png').size[0] >= 400
  proc = _main(*TINY_GAUSSIAN, '--mode=compare', f'--workdir={tmp_path / "bad"}',
               '--config.sampling.compare_num_steps=(0, 4)', check=False)
  assert proc.returncode == 2 and 'compare_num_steps = (0, 4): step counts must be integers >= 1' in proc.stderr
  assert not (tmp_path / 'bad').exists()


@pytest.mark.parametrize('args,message', [
    (['--speed_up=0'], 'speed_up = 0.0 must be > 0'),
    (['--speed_up=5000'], 'must be > 0 and <= model.num_scales'),
    (['--alpha=0.5', '--freq_mask_path={mask}'], 'alpha must be a finite number >= 1'),
    (['--freq_mask_path={bad_mask}'], r'does not match the model: expected \(C, H, W\) = \(3, 8, 8\)'),
    (['--freq_mask_path={tmp}/missing.npy'], 'missing.npy: mask file not found'),
    (['--config.sampling.predictor=heun'], "Unknown predictor 'heun'"),
])
def test_bad_input_is_a_clear_error_before_any_compute(tmp_path, args, message):
  np.save(tmp_path / 'mask.npy', np.ones((3, 8, 8), np.float32))
  np.save(tmp_path / 'bad_mask.npy', np.ones((3, 16, 16), np.float32))
  args = [a.format(mask=tmp_path / 'mask.npy', bad_mask=tmp_path / 'bad_mask.npy', tmp=tmp_path) for a in args]
  proc = _main(*TINY_GAUSSIAN, '--mode=sample', f'--workdir={tmp_path / "run"}', *args, check=False)
  assert proc.returncode == 2, proc.stderr
  assert 'pds_jax: error:' in proc.stderr
  import re
  assert re.search(message, proc.stderr), proc.stderr
  assert not (tmp_path / 'run' / 'eval').exists() or not any((tmp_path / 'run' / 'eval').iterdir())


@pytest.mark.parametrize('args,message', [
    (['--mode=dance'], 'flag --mode=dance: value should be one of .*sample'),
    (['--mode=sample', '--config.sampling.speedup=3'],
     r'--config.sampling.speedup: unknown config field \(config.sampling has .*speed_up'),
    (['--mode=sample', '--config.samplin.snr=1'], r'--config.samplin.snr: unknown config field \(config has .*sampling'),
    (['--mode=sample', '--config.sampling.snr=abc'], r'--config.sampling.snr=abc: not a valid float \(the field holds 0.16\)'),
    (['--mode=sample', '--config.eval.batch_size=1.5'], '--config.eval.batch_size=1.5: not a valid int'),
    (['--mode=sample', '--config.sampling.alpha=x'], r'--config.sampling.alpha=x: not a valid float \(the field holds None\)'),
    (['--mode=sample', '--nosuchflag=1'], "Unknown command line flag 'nosuchflag'"),
    (['--mode=sample', 'stray'], r"unexpected arguments \['stray'\]"),
    (['--mode=sample', '--sample_dirs=a'], '--sample_dirs is read by --mode eval only; --mode sample would ignore it'),
    (['--mode=stats', '--speed_up=2'], '--speed_up is read by --mode sample / compare / inpaint / colorize only'),
    (['--mode=sample', '--pytorch_checkpoint=x.pth'], '--pytorch_checkpoint is read by --mode convert only'),
    (['--mode=sample', '--config.sampling.method=heun', '--speed_up=2'], "--speed_up sets the steps of sampling.method pc"),
])
def test_every_flag_and_config_problem_is_one_line_and_exit_code_2(tmp_path, args, message):
  proc = _main(*TINY_GAUSSIAN, f'--workdir={tmp_path / "run"}', *args, check=False)
  assert proc.returncode == 2, proc.stderr
  import re
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert re.search(message, proc.stderr) and lines[-1].startswith('pds_jax: error: '), proc.stderr
  assert 'Traceback' not in proc.stderr and not (tmp_path / 'run').exists()


@pytest.mark.parametrize('content, message', [
    (None, 'config file not found'), ('def get_config(:\n', 'does not load: SyntaxError'),
    ('x = 1\n', 'has no get_config'), ('def get_config():\n  raise KeyError("dataset")\n', "get_config\\(\\) failed: KeyError")])
def test_missing_or_broken_config_files_are_named(tmp_path, content, message):
  path = tmp_path / 'cfg.py'
  if content is not None:
    path.write_text(content)
  proc = _main('--config', str(path), '--mode=sample', f'--workdir={tmp_path / "run"}', check=False)
  assert proc.returncode == 2 and f'pds_jax: error: --config {path}' in proc.stderr, proc.stderr
  import re
  assert re.search(message, proc.stderr) and 'Traceback' not in proc.stderr, proc.stderr


def test_non_writable_output_folder(tmp_path):
  if os.geteuid() == 0:
    target = '/proc/pds_jax_cannot_write_here'  # root can write anywhere chmod allows
  else:
    (tmp_path / 'ro').mkdir(mode=0o500)
    target = str(tmp_path / 'ro')
  proc = _main(*TINY_GAUSSIAN, '--mode=sample', f'--workdir={target}', check=False)
  assert proc.returncode == 2 and 'output folder' in proc.stderr


def test_sample_from_a_score_sde_checkpoint_with_pds(tmp_path, fixtures_dir):
  """A legacy score_sde checkpoint, sampled with PDS through the CLI (nf shrunk to 8 as in the fixture)."""
  fixture = fixtures_dir / 'score_sde' / 've_cifar10_ncsnpp_continuous'
  shutil.copytree(fixture / 'checkpoints', tmp_path / 'checkpoints')
  from pds_jax import preconditioning
  freq = np.random.RandomState(0).uniform(1, 9, (32, 32, 3))
  preconditioning.save_statistics(freq, None, str(tmp_path / 'freq.npy'))
  _main('--config', str(ROOT / 'configs/ve/cifar10_ncsnpp_continuous.py'), '--config.model.nf=8',
        '--config.eval.batch_size=2', '--config.eval.num_samples=2', '--mode=sample', f'--workdir={tmp_path}',
        '--speed_up=500', f'--freq_mask_path={tmp_path / "freq.npy"}')
  report = json.loads((tmp_path / 'eval' / 'report.json').read_text())
  assert report['settings']['model'] == 'ncsnpp' and report['settings']['checkpoint_step'] == 1
  assert report['settings']['num_steps'] == 2 and report['nfe_per_sample'] == 4
  with np.load(tmp_path / 'eval' / 'samples_0_0.npz') as f:
    assert f['samples'].shape == (2, 32, 32, 3) and np.all(np.isfinite(f['samples_float']))


def test_convert_a_score_sde_pytorch_checkpoint(tmp_path, fixtures_dir):
  pytest.importorskip('torch')
  pth = fixtures_dir / 'score_sde_pytorch' / 've_cifar10_ncsnpp_continuous' / 'checkpoint.pth'
  config = ['--config', str(ROOT / 'configs/ve/cifar10_ncsnpp_continuous.py'), '--config.model.nf=8']
  proc = _main(*config, '--mode=convert', f'--workdir={tmp_path}', f'--pytorch_checkpoint={pth}')
  written = tmp_path / 'checkpoints' / 'checkpoint_1'
  assert written.is_file() and str(written) in proc.stdout
  from configs.ve.cifar10_ncsnpp_continuous import get_config
  from pds_jax import checkpoints
  cfg = get_config()
  cfg.model.nf = 8
  assert int(checkpoints.restore_checkpoint(str(tmp_path), cfg).step) == 1
  proc = _main(*config, '--mode=convert', f'--workdir={tmp_path}', check=False)
  assert proc.returncode == 2 and '--pytorch_checkpoint' in proc.stderr


@pytest.mark.parametrize('method, extra, nfe', [
    ('ode', ['--config.sampling.ode_rtol=1e-3', '--config.sampling.ode_atol=1e-3'], None),
    ('dpm_solver', ['--config.sampling.num_steps=6'], 6), ('heun', ['--config.sampling.num_steps=4'], 7)])
def test_sample_with_every_method_reports_its_nfe(tmp_path, method, extra, nfe):
  _main(*TINY_GAUSSIAN, '--mode=sample', f'--workdir={tmp_path}', f'--config.sampling.method={method}', *extra)
  report = json.loads((tmp_path / 'eval' / 'report.json').read_text())
  assert report['settings']['method'] == method and report['num_samples'] == 12
  if nfe is None:  # adaptive: the mean over the samples, 6 per attempted step + 1 + 1 for noise removal
    assert report['nfe_per_sample'] > 8 and report['settings']['nfe'] is None
  else:
    assert report['nfe_per_sample'] == nfe == report['settings']['nfe']
  assert np.isfinite(report['metrics']['kl_per_dim'])


def test_pds_masks_with_a_deterministic_method_are_refused_before_sampling(tmp_path):
  np.save(tmp_path / 'freq.npy', np.random.RandomState(0).uniform(1, 5, (3, 8, 8)))
  proc = _main(*TINY_GAUSSIAN, '--mode=sample', f'--workdir={tmp_path}', '--config.sampling.method=heun',
               f'--freq_mask_path={tmp_path / "freq.npy"}', check=False)
  assert proc.returncode == 2 and "'heun' is a deterministic ODE solver" in proc.stderr
  assert 'Traceback' not in proc.stderr and not (tmp_path / 'eval' / 'report.json').exists()
