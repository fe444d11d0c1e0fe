"""End-to-end tests of --mode fid_stats and of --mode eval with config.eval.fid_stats_path (random Inception
weights, a 6-image .npy dataset, a 4-image sample folder)."""
import json
import re

import numpy as np
import pytest

from conftest import ROOT
from test_cli import _main
from test_fid_stats import tiny_images, write_random_inception_weights

TINY = ['--config', str(ROOT / 'configs/patches/natural_patches_ncsnpp_small.py'), '--config.data.dataset=npy',
        '--config.data.image_size=16', '--config.eval.inception_batch_size=4', '--config.eval.kid_subsets=2',
        '--config.eval.is_splits=2']


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  """data.npy (8 images), Inception weights, and a --mode sample style folder of 4 samples.

  --mode eval scores against eval.num_reference = 4 of the images and takes its noise floor from 4 others.
  """
  root = tmp_path_factory.mktemp('fid')
  np.save(root / 'data.npy', tiny_images(8, seed=0))
  weights = write_random_inception_weights(root / 'inception.npz')
  samples = root / 'samples'
  samples.mkdir()
  np.savez(samples / 'samples_0_0.npz', samples=tiny_images(4, seed=1))
  (samples / 'report.json').write_text(json.dumps({'settings': {'num_steps': 1, 'preconditioned': False},
                                                   'num_samples': 4, 'nfe_per_sample': 1, 'metrics': None}))
  args = [*TINY, f'--config.data.path={root / "data.npy"}', f'--config.eval.inception_path={weights}',
          '--config.eval.num_reference=4']
  return {'root': root, 'args': args, 'samples': samples}


@pytest.fixture(scope='module')
def stats_file(files):
  """--mode fid_stats over the 4 images --mode eval draws as its reference for 4 samples."""
  proc = _main(*files['args'], '--mode=fid_stats', f'--workdir={files["root"] / "run"}',
               '--config.eval.fid_stats_num_images=4')
  path = files['root'] / 'run' / 'fid_stats' / 'npy_data_16_stats.npz'
  assert f'4 images of the train split -> {path}' in proc.stdout, proc.stdout
  return path


def test_fid_stats_writes_pool_3_mu_sigma_as_score_sde(stats_file):
  with np.load(stats_file) as f:
    assert sorted(f.files) == ['mu', 'pool_3', 'sigma']
    pool, mu, sigma = f['pool_3'], f['mu'], f['sigma']
  assert pool.shape == (4, 2048) and pool.dtype == np.float32 and np.all(np.isfinite(pool)) and pool.std() > 0
  np.testing.assert_allclose(mu, pool.astype(np.float64).mean(axis=0), rtol=1e-12, atol=1e-15)
  np.testing.assert_allclose(sigma, np.cov(pool.astype(np.float64), rowvar=False), rtol=1e-9, atol=1e-12)
  assert not [p.name for p in stats_file.parent.iterdir() if p.name.endswith('.tmp')]


def test_eval_with_the_stats_file_gives_the_fid_of_recomputed_reference_features(files, stats_file):
  fids = {}
  for name, extra in (('file', [f'--config.eval.fid_stats_path={stats_file}']), ('recomputed', [])):
    _main(*files['args'], '--mode=eval', f'--workdir={files["root"] / name}', f'--sample_dirs={files["samples"]}',
          *extra)
    metrics = json.loads((files['root'] / name / 'eval' / 'metrics.json').read_text())[str(files['samples'])]['metrics']
    fids[name] = metrics['fid']
    if name == 'file':
      assert metrics['fid_stats'] == {'path': str(stats_file), 'num_images': 4}
      assert set(metrics) >= {'swd', 'fd_features', 'kid', 'kid_inception', 'is'}
  assert fids['file'] > 0 and fids['file'] == pytest.approx(fids['recomputed'], rel=1e-6)


@pytest.mark.parametrize('mode, arrays, extra, message', [
    ('eval', None, [], r'missing_stats\.npz: FID statistics file not found'),
    ('eval', {'features': np.zeros((4, 2048))}, [], r'x_stats\.npz: holds neither pool_3 .* nor mu / sigma'),
    ('eval', {'pool_3': np.zeros((4, 64))}, [], r'x_stats\.npz: pool_3 has shape \(4, 64\).*feature dimension mismatch'),
    ('eval', {'pool_3': np.ones((4, 2048))}, ['--config.eval.inception_path='],
     r'fid_stats_path = .*x_stats\.npz.* set config\.eval\.inception_path too'),
    ('fid_stats', None, ['--config.eval.inception_path='], r'--mode fid_stats .* needs config\.eval\.inception_path'),
])
def test_fid_stats_problems_are_one_line_errors_naming_the_file(tmp_path, files, mode, arrays, extra, message):
  path = tmp_path / ('x_stats.npz' if arrays is not None else 'missing_stats.npz')
  if arrays is not None:
    np.savez(path, **arrays)
  stats_flag = [f'--config.eval.fid_stats_path={path}', f'--sample_dirs={files["samples"]}'] if mode == 'eval' else []
  proc = _main(*TINY, f'--config.data.path={files["root"] / "data.npy"}', '--config.eval.inception_path=unused.pth',
               f'--mode={mode}', f'--workdir={tmp_path / "run"}', *stats_flag, *extra, check=False)
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert proc.returncode == 2 and lines[-1].startswith('pds_jax: error: '), proc.stderr
  assert re.search(message, lines[-1]) and 'Traceback' not in proc.stderr, proc.stderr
  assert not (tmp_path / 'run').exists()
