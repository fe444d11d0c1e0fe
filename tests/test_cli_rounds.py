"""The modes that write round shards, as a user types them (issue 22, points 2, 3, 4 and 7).

A failed call leaves nothing that changes the next one, `--mode sample` says what it did, Ctrl-C is
one line and resumable, and `--mode likelihood` computes only the images asked for, by file name.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from test_cli import TINY_GAUSSIAN, _main

DEFAULT_MODEL = ['--config', str(ROOT / 'configs/default_model.py')]


def _photos(folder, count, size=12):
  """`count` small RGB photos img_<i>.png in `folder`."""
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  for i in range(count):
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f'img_{i}.png')
  return folder


# ----------------------------------------------------------------------------- 2: a failed call blocks nothing


def test_every_bad_image_in_one_error_and_the_corrected_rerun_runs(tmp_path):
  photos = _photos(tmp_path / 'photos', 3)
  good = (photos / 'img_0.png').read_bytes()
  (photos / 'img_3.png').write_bytes(good[:len(good) // 2])  # a truncated download
  (photos / 'notes.jpg').write_text('not a picture')
  command = [*TINY_GAUSSIAN, '--mode=inpaint', f'--workdir={tmp_path / "run"}', f'--input_dir={photos}',
             '--speed_up=200']
  proc = _main(*command, check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('pds_jax: error: ') and '2 of the 5 images cannot be read' in last, last
  assert 'img_3.png' in last and 'notes.jpg' in last and 'Traceback' not in proc.stderr
  assert not (tmp_path / 'run').exists()  # no run.json, no empty folder
  (photos / 'img_3.png').unlink()
  (photos / 'notes.jpg').unlink()
  _main(*command)  # the same command, after removing the bad files
  report = json.loads((tmp_path / 'run' / 'inpaint' / 'report.json').read_text())
  devices = report['settings']['devices_per_host']
  assert report['num_images'] == 3 and report['settings']['batch_size'] == -(-3 // devices) * devices  # not 8


def test_a_refused_run_leaves_no_output_folder(tmp_path):
  np.save(tmp_path / 'freq.npy', np.random.RandomState(0).uniform(1, 5, (3, 8, 8)))
  proc = _main(*TINY_GAUSSIAN, '--mode=sample', f'--workdir={tmp_path / "run"}', '--config.sampling.method=dpm_solver',
               '--config.sampling.num_steps=6', f'--freq_mask_path={tmp_path / "freq.npy"}', check=False)
  assert proc.returncode == 2 and 'deterministic ODE solver' in proc.stderr, proc.stderr[-2000:]
  assert not (tmp_path / 'run').exists()


# ----------------------------------------------------------------------------- 3: sample says what it did


def test_sample_ends_with_its_nfe_wall_time_and_the_grid_path(tmp_path):
  proc = _main(*TINY_GAUSSIAN, '--mode=sample', f'--workdir={tmp_path}', '--speed_up=200')
  lines = proc.stdout.strip().splitlines()
  assert '12 samples in 2 rounds of 8: 2 to run here' in lines, proc.stdout  # the job's size, before it starts
  assert re.fullmatch(r'12 samples \(pc, 10 steps\): 20 NFE per sample, wall time [0-9.]+ s \(2 rounds run now\)',
                      lines[-2]), lines[-2]
  assert lines[-1].startswith(f'wrote {tmp_path}/eval/grid.png'), lines[-1]


# ----------------------------------------------------------------------------- 4: Ctrl-C


def test_ctrl_c_is_one_line_and_the_same_command_resumes(tmp_path):
  args = [f'--jax_cache={ROOT / ".jax_cache"}', *TINY_GAUSSIAN, '--mode=sample', f'--workdir={tmp_path}',
          '--config.eval.num_samples=48', '--speed_up=20']
  # A suite started in the background of a non-interactive shell runs with SIGINT ignored (POSIX), and so would
  # main.py: it gets Python's Ctrl-C handler back, as from a terminal (in the child's Python, not a pre-exec hook:
  # forking the multithreaded JAX process is unsafe).
  restore = ('import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); '
             "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
  command = [sys.executable, '-c', restore, str(ROOT / 'main.py'), *args]
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(ROOT / '.jax_cache'))
  proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  folder = tmp_path / 'eval'
  deadline = time.monotonic() + 300
  while time.monotonic() < deadline and proc.poll() is None:
    if folder.is_dir() and any(n.startswith('samples_') for n in os.listdir(folder)):
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 130, err[-3000:]
  assert 'Traceback' not in err and 'KeyboardInterrupt' not in err, err[-3000:]
  done = sorted(n for n in os.listdir(folder) if n.startswith('samples_'))
  assert 1 <= len(done) < 6 and sorted(os.listdir(folder)) == ['run.json', *done]  # no temp file, no report
  assert err.strip().splitlines()[-1] == (f'pds_jax: interrupted after {len(done)} of 6 rounds; rerun the same '
                                          'command to resume'), err[-2000:]
  # the estimate follows the first shard: a signal between the two leaves it out
  assert '48 samples in 6 rounds of 8: 6 to run here' in out and ('first round:' in out or len(done) == 1)
  rerun = _main(*args[1:])
  assert f'48 samples in 6 rounds of 8: {6 - len(done)} to run here, {len(done)} already in {folder}' in rerun.stdout
  assert json.loads((folder / 'report.json').read_text())['num_samples'] == 48


# ----------------------------------------------------------------------------- 7: likelihood of a few own images


def test_likelihood_on_fewer_than_10_images_names_the_fix(tmp_path):
  photos = _photos(tmp_path / 'my_images', 5)
  proc = _main(*DEFAULT_MODEL, '--mode=likelihood', f'--workdir={tmp_path / "run"}', '--config.data.dataset=folder',
               f'--config.data.path={photos}/', check=False)
  last = proc.stderr.strip().splitlines()[-1]
  assert proc.returncode == 2 and last.startswith('pds_jax: error: '), proc.stderr[-2000:]
  assert f'{photos}/eval: the eval split holds no images' in last and '//' not in last
  assert last.endswith('--config.eval.bpd_dataset=train.'), last
  assert not (tmp_path / 'run').exists()


@pytest.mark.slow  # ~40 s: bits/dim of the shipped NCSN++ at a loose tolerance
def test_likelihood_of_two_own_images_computes_only_those_and_keys_them_by_file(tmp_path):
  photos = _photos(tmp_path / 'my_images', 5, size=32)
  proc = _main(*DEFAULT_MODEL, '--mode=likelihood', f'--workdir={tmp_path}', '--config.data.dataset=folder',
               f'--config.data.path={photos}', '--config.eval.bpd_dataset=train', '--config.eval.num_samples=2',
               '--config.likelihood.rtol=1e-2', '--config.likelihood.atol=1e-2')
  report = json.loads((tmp_path / 'likelihood' / 'report.json').read_text())
  devices = report['settings']['devices_per_host']
  batch = -(-2 // devices) * devices  # not a batch of 36
  assert report['settings']['batch_size'] == batch and report['num_images'] == 2
  assert sorted(report['bpd_per_image']) == ['img_0.png', 'img_1.png']
  assert all(0 < v < 16 for v in report['bpd_per_image'].values())
  assert f'2 images in 1 round of {batch}' in proc.stdout and '2/2' in proc.stderr  # progress counted in images
