"""End-to-end tests of --mode likelihood, inpaint and colorize (main.py subprocesses, as a user runs them)."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from test_cli import TINY_GAUSSIAN, _main
from test_cli_modes import image_folder  # noqa: F401  (fixture)

GAUSSIAN_8 = TINY_GAUSSIAN  # 8×8×3 exact Gaussian reference, batch 8, 12 images (two rounds), 2 chunks
DEFAULT_MODEL = ['--config', str(ROOT / 'configs/default_model.py'), '--config.eval.batch_size=2',
                 '--config.eval.num_samples=2']


def _npz(path):
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def test_likelihood_on_the_gaussian_reference_is_resumable_and_exact(tmp_path):
  proc = _main(*GAUSSIAN_8, '--mode=likelihood', f'--workdir={tmp_path}')
  out = tmp_path / 'likelihood'
  assert sorted(p.name for p in out.iterdir()) == ['bpd_0_0.npz', 'bpd_1_0.npz', 'report.json', 'run.json']
  report = json.loads((out / 'report.json').read_text())
  assert report['num_images'] == 12 and report['settings']['dequantization'] == 'none'
  assert report['settings']['offset'] == 8. and report['settings']['hutchinson_type'] == 'Rademacher'
  assert abs(report['bpd'] - report['bpd_exact']) < 0.05 and report['bpd_std'] > 0 and report['nfe'] > 30
  assert 'bits/dim' in proc.stdout and 'exact' in proc.stdout
  first = _npz(out / 'bpd_1_0.npz')
  assert first['bpd'].shape == (4,) and list(first['image_index']) == [8, 9, 10, 11]
  (out / 'bpd_1_0.npz').unlink()
  _main(*GAUSSIAN_8, '--mode=likelihood', f'--workdir={tmp_path}')  # resumes: only round 1 again, same keys
  np.testing.assert_array_equal(_npz(out / 'bpd_1_0.npz')['bpd'], first['bpd'])
  proc = _main(*GAUSSIAN_8, '--mode=likelihood', f'--workdir={tmp_path}', '--config.likelihood.hutchinson_type=Gaussian',
               check=False)
  assert proc.returncode == 2 and "settings differ in ['hutchinson_type']" in proc.stderr


@pytest.mark.slow  # ~30 s: Jacobian-vector products of NCSN++ through an adaptive solve
def test_likelihood_dequantizes_8_bit_images_of_the_shipped_model(tmp_path):
  _main(*DEFAULT_MODEL, '--mode=likelihood', f'--workdir={tmp_path}', '--config.likelihood.rtol=1e-3',
        '--config.likelihood.atol=1e-3')
  report = json.loads((tmp_path / 'likelihood' / 'report.json').read_text())
  assert report['settings']['dequantization'] == 'uniform' and report['settings']['images'] == 'natural_patches/eval'
  assert 'bpd_exact' not in report and report['num_images'] == 2
  assert 0 < report['bpd'] < 16  # a density of dequantized 8-bit data: positive bits/dim


def test_inpaint_on_the_gaussian_reference_with_a_builtin_mask(tmp_path):
  _main(*GAUSSIAN_8, '--mode=inpaint', f'--workdir={tmp_path}', '--speed_up=100', '--config.inpaint.mask=random_50')
  out = tmp_path / 'inpaint'
  assert sorted(p.name for p in out.iterdir()) == ['grid.png', 'report.json', 'run.json', 'samples_0_0.npz',
                                                 'samples_1_0.npz']
  shard = _npz(out / 'samples_0_0.npz')
  assert shard['samples'].dtype == np.uint8 and shard['samples'].shape == (8, 8, 8, 3)
  assert shard['observed'].shape == (8, 8, 8, 3) and shard['mask'].shape == (8, 8, 3)
  np.testing.assert_array_equal(shard['samples_float'] * shard['mask'], shard['observed'] * shard['mask'])
  report = json.loads((out / 'report.json').read_text())
  assert report['num_images'] == 12 and report['nfe_per_sample'] == 40 and report['known_max_abs_error'] == 0
  assert report['settings']['mask'] == 'random_50' and report['settings']['known_init'] == 'data'
  assert 0.5 < report['exact_conditional']['error_ratio'] < 3 and report['exact_conditional']['ignore_observation_ratio'] > 1
  assert Image.open(out / 'grid.png').size[0] >= 4 * 96


def test_inpaint_with_the_user_s_mask_files(tmp_path):
  """.png (white = known) and .npy (H, W, C) masks; the known region started at its time-T marginal (#39)."""
  mask = np.zeros((8, 8), np.uint8)
  mask[:, :4] = 255
  Image.fromarray(mask).save(tmp_path / 'mask.png')
  _main(*GAUSSIAN_8, '--mode=inpaint', f'--workdir={tmp_path}', '--speed_up=200', f'--mask_path={tmp_path / "mask.png"}',
        '--config.inpaint.known_init=marginal', '--eval_folder=png_mask')
  assert _npz(tmp_path / 'png_mask' / 'samples_0_0.npz')['mask'][:, :, 0].tolist() == (mask // 255).tolist()
  np.save(tmp_path / 'mask.npy', np.repeat((mask // 255)[..., None], 3, -1).astype(bool))
  _main(*GAUSSIAN_8, '--mode=inpaint', f'--workdir={tmp_path}', '--speed_up=200', f'--mask_path={tmp_path / "mask.npy"}',
        '--eval_folder=npy_mask')
  report = json.loads((tmp_path / 'npy_mask' / 'report.json').read_text())
  assert report['settings']['known_fraction'] == 0.5


def test_colorize_own_images_with_the_shipped_model(tmp_path, image_folder):  # noqa: F811
  _main(*DEFAULT_MODEL, '--mode=colorize', f'--workdir={tmp_path}', '--speed_up=200', f'--input_dir={image_folder}')
  shard = _npz(tmp_path / 'colorize' / 'samples_0_0.npz')
  assert shard['samples'].shape == (2, 32, 32, 3) and shard['gray'].shape == (2, 32, 32, 3)
  np.testing.assert_allclose(shard['samples_float'].mean(-1), shard['gray'][..., 0], atol=5e-5)  # float32 round-off of the colour basis
  report = json.loads((tmp_path / 'colorize' / 'report.json').read_text())
  assert report['settings']['preconditioned'] and report['settings']['images'] == str(image_folder)
  assert 'exact_conditional' not in report and (tmp_path / 'colorize' / 'grid.png').is_file()


@pytest.mark.parametrize('mode,args,message', [
    ('inpaint', ['--mask_path={tmp}/mask_16.npy'], r'mask_16.npy: mask of shape \(16, 16\); expected \(H, W\) = \(8, 8\)'),
    ('inpaint', ['--mask_path={tmp}/mask_half.npy'], r'mask values must be 0 \(missing\) or 1 \(known\)'),
    ('inpaint', ['--mask_path={tmp}/missing.png'], 'missing.png: mask file not found'),
    ('inpaint', ['--mask_path={tmp}/not_an_image.png'], 'not_an_image.png: not a readable image'),
    ('inpaint', ['--config.inpaint.mask=top_half'], r"config.inpaint.mask = 'top_half'; choose one of"),
    ('inpaint', ['--mask_path={tmp}/ones.npy'], 'marks every pixel known'),
    ('inpaint', ['--input_dir={tmp}/nowhere'], 'nowhere: --input_dir is not a folder'),
    ('inpaint', ['--input_dir={tmp}/empty'], r'empty: no image files'),
    ('inpaint', ['--config.inpaint.known_init=clean'], "known_init = 'clean'"),
    ('colorize', ['--mask_path={tmp}/ones.npy'], 'takes no --mask_path'),
    ('colorize', ['--config.sampling.num_steps=10'], 'sets its steps with --speed_up'),
    ('likelihood', ['--config.likelihood.hutchinson_type=exactly'], "hutchinson_type = 'exactly'"),
    ('likelihood', ['--config.likelihood.dequantization=gaussian'], "dequantization = 'gaussian'"),
])
def test_bad_inputs_are_one_line_errors_before_any_output(tmp_path, mode, args, message):
  np.save(tmp_path / 'mask_16.npy', np.ones((16, 16)))
  np.save(tmp_path / 'mask_half.npy', np.full((8, 8), 0.5))
  np.save(tmp_path / 'ones.npy', np.ones((8, 8, 3)))
  (tmp_path / 'not_an_image.png').write_text('hello')
  (tmp_path / 'empty').mkdir()
  args = [a.format(tmp=tmp_path) for a in args]
  proc = _main(*GAUSSIAN_8, f'--mode={mode}', f'--workdir={tmp_path / "run"}', *args, check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('pds_jax: error:') and __import__('re').search(message, last), last
  assert not (tmp_path / 'run').exists() or not any(os.scandir(tmp_path / 'run'))
