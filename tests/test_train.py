"""`main.py --mode train`: legacy checkpoints, preemption checkpoints, resume after a kill."""
import json
import os
import signal
import subprocess
import sys
import time

import msgpack
import numpy as np
import pytest

from conftest import ROOT
from test_cli import _main
from pds_jax import checkpoints
from test_losses import tiny_config

TINY_TRAIN = ['--config', str(ROOT / 'configs/patches/natural_patches_ncsnpp_small.py'), '--config.data.image_size=8',
              '--config.model.nf=8', '--config.model.ch_mult=(1, 2)', '--config.model.attn_resolutions=(4,)',
              '--config.model.num_scales=10', '--config.training.batch_size=4', '--config.optim.warmup=4',
              '--config.training.log_freq=2', '--config.training.eval_freq=2',
              '--config.training.snapshot_freq_for_preemption=2']


def _log(workdir):
  return [json.loads(line) for line in (workdir / 'train_log.jsonl').read_text().splitlines()]


@pytest.mark.slow  # ~47 CPU-s
def test_train_writes_legacy_checkpoints_samples_and_logs(tmp_path):
  _main(*TINY_TRAIN, '--mode=train', f'--workdir={tmp_path}', '--config.training.n_iters=6',
        '--config.training.snapshot_freq=4', '--config.training.snapshot_sampling=True')
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['checkpoint_1', 'checkpoint_2']  # steps 4 and 6
  assert os.listdir(tmp_path / 'checkpoints-meta') == ['checkpoint_3']  # only the newest is kept
  state = checkpoints.restore_checkpoint(str(tmp_path), tiny_config())
  assert int(state.step) == 6 and int(state.opt_state.step) == 6
  # A plain msgpack reader (no flax) sees score_sde's field layout.
  raw = msgpack.unpackb((tmp_path / 'checkpoints' / 'checkpoint_2').read_bytes(), raw=False, strict_map_key=False)
  assert list(raw) == ['step', 'optimizer', 'lr', 'model_state', 'ema_rate', 'params_ema', 'rng']
  assert set(raw['optimizer']) == {'target', 'state'} and set(raw['optimizer']['state']) == {'step', 'param_states'}
  log = _log(tmp_path)
  assert [e['step'] for e in log if 'training_loss' in e] == [2, 4, 6]
  assert all(np.isfinite(e.get('training_loss', e.get('eval_loss'))) for e in log)
  with np.load(tmp_path / 'samples' / 'iter_6' / 'sample.npz') as f:
    assert f['sample'].shape == (4, 8, 8, 3) and f['sample'].dtype == np.uint8
  assert json.loads((tmp_path / 'train_summary.json').read_text())['final_step'] == 6


def test_killed_training_resumes_from_its_preemption_checkpoint(tmp_path):
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(ROOT / '.jax_cache'))
  cmd = [sys.executable, str(ROOT / 'main.py'), f'--jax_cache={ROOT / ".jax_cache"}', *TINY_TRAIN, '--mode=train',
         f'--workdir={tmp_path}', '--config.training.n_iters=100000', '--config.training.snapshot_freq=100000']
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  meta = tmp_path / 'checkpoints-meta'
  try:
    deadline = time.time() + 300
    while not (meta.is_dir() and any(int(n.split('_')[1]) >= 3 for n in os.listdir(meta) if not n.startswith('.'))):
      assert proc.poll() is None and time.time() < deadline, 'training did not reach step 6'
      time.sleep(0.2)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  names = [n for n in os.listdir(meta) if n.startswith('checkpoint_')]
  assert len(names) == 1  # the kept checkpoint is whole: the last complete one, never a partial file
  killed_at = int(checkpoints.restore_checkpoint(str(meta), tiny_config()).step)
  assert killed_at >= 6
  _main(*TINY_TRAIN, '--mode=train', f'--workdir={tmp_path}', f'--config.training.n_iters={killed_at + 4}',
        '--config.training.snapshot_freq=2')
  summary = json.loads((tmp_path / 'train_summary.json').read_text())
  assert summary['initial_step'] == killed_at and summary['final_step'] == killed_at + 4
  steps = [e['step'] for e in _log(tmp_path) if 'training_loss' in e]
  assert steps == sorted(set(steps)) and steps[-1] == killed_at + 4  # no duplicate lines from the rerun steps
  assert int(checkpoints.restore_checkpoint(str(tmp_path), tiny_config()).step) == killed_at + 4


def test_train_refuses_frequencies_that_skip_logs(tmp_path):
  proc = _main(*TINY_TRAIN, '--mode=train', f'--workdir={tmp_path}', '--config.training.n_jitted_steps=4',
               check=False)
  assert proc.returncode == 2 and 'log_freq = 2 must be a multiple of config.training.n_jitted_steps' in proc.stderr
