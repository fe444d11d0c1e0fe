"""Scale: sharded and pmap sampling on forced CPU devices, two hosts, and resume after SIGKILL."""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from conftest import ROOT
from test_cli import TINY_GAUSSIAN

FOUR_DEVICES = '--xla_force_host_platform_device_count=4'


def _env(devices=1):
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(ROOT / '.jax_cache'), JAX_PLATFORMS='cpu')
  env['XLA_FLAGS'] = FOUR_DEVICES if devices == 4 else ''
  return env


def _main_args(workdir, *extra):
  return [sys.executable, str(ROOT / 'main.py'), f'--jax_cache={ROOT / ".jax_cache"}', *TINY_GAUSSIAN,
          '--mode=sample', f'--workdir={workdir}', '--speed_up=200', *extra]


def _run(args, devices=1, timeout=600):
  proc = subprocess.run(args, env=_env(devices), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def _shards(folder):
  """Round index -> float samples of every shard in `folder` (whatever host wrote it)."""
  out = {}
  for name in os.listdir(folder):
    if name.startswith('samples_') and name.endswith('.npz'):
      with np.load(os.path.join(folder, name)) as f:
        out[int(name.split('_')[1])] = f['samples_float']
  return out


def test_sharded_and_pmap_sampling_equal_single_device(tmp_path):
  script = textwrap.dedent('''
      import jax, numpy as np
      from pds_jax import gaussian, parallel, preconditioning, sampling, sde_lib
      assert jax.local_device_count() == 4
      ref = gaussian.GaussianReference.power_law((8, 8, 3))
      sde = sde_lib.VESDE(0.01, 10., 12)
      stats = preconditioning.compute_statistics(np.clip(np.asarray(ref.sample(jax.random.PRNGKey(1), 50)), 0, 1))
      precond = preconditioning.from_statistics(*stats, alpha=2.)
      keys = sampling.sample_keys(7, 16, 8)
      kwargs = dict(eps=1e-5, snr=0.16)
      single, _ = sampling.PCSampler(sde, (8, 8, 8, 3), **kwargs)(keys, ref.score_fn(sde), precond)
      assert len(single.sharding.device_set) == 1
      sharded, _ = sampling.PCSampler(sde, (8, 8, 8, 3), mesh=parallel.batch_mesh(), **kwargs)(
          keys, ref.score_fn(sde), precond)
      assert len(sharded.sharding.device_set) == 4
      gspmd, _ = sampling.PCSampler(sde, (8, 8, 8, 3), **kwargs)(
          parallel.place_keys(keys, 'sharding'), ref.score_fn(sde), precond)
      assert len(gspmd.sharding.device_set) == 4
      pmapped, _ = sampling.PCSampler(sde, (8, 8, 8, 3), pmap=True, **kwargs)(keys, ref.score_fn(sde), precond)
      half, _ = sampling.PCSampler(sde, (4, 8, 8, 3), **kwargs)(keys[:4], ref.score_fn(sde), precond)
      np.save(%r, np.stack([single, sharded, pmapped, gspmd]))
      np.save(%r, half)
  ''' % (str(tmp_path / 'out.npy'), str(tmp_path / 'half.npy')))
  _run([sys.executable, '-c', script], devices=4)
  single, sharded, pmapped, gspmd = np.load(tmp_path / 'out.npy')
  # Only the Langevin batch-mean norms are reduced in another order across devices.
  # Samples here are ~1e3 after 12 steps; rounding is relative to that scale (~1e-7 per reduction).
  scale = np.abs(single).max()
  np.testing.assert_allclose(sharded, single, rtol=0, atol=1e-5 * scale)
  np.testing.assert_allclose(pmapped, single, rtol=0, atol=1e-5 * scale)
  np.testing.assert_allclose(gspmd, single, rtol=0, atol=1e-5 * scale)
  np.testing.assert_array_equal(sharded, pmapped)  # the same per-device program
  # Per-sample keys: another batch composition changes only the Langevin step size, not the noise.
  half = np.load(tmp_path / 'half.npy')
  assert np.corrcoef(half.ravel(), single[:4].ravel())[0, 1] > 0.99


@pytest.mark.parametrize('parallel', ['sharding', 'pmap'])
def test_cli_sample_set_is_the_same_on_one_and_four_devices(tmp_path, parallel):
  _run(_main_args(tmp_path / 'one'))
  _run(_main_args(tmp_path / 'four', f'--config.eval.parallel={parallel}'), devices=4)
  one, four = _shards(tmp_path / 'one' / 'eval'), _shards(tmp_path / 'four' / 'eval')
  assert sorted(one) == sorted(four) == [0, 1]
  for r in one:
    np.testing.assert_allclose(four[r], one[r], rtol=0, atol=1e-5 * np.abs(one[r]).max())
  report = json.loads((tmp_path / 'four' / 'eval' / 'report.json').read_text())
  assert report['settings']['devices_per_host'] == 4 and report['settings']['parallel'] == parallel


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_hosts_together_produce_the_single_host_set(tmp_path):
  args = ['--config.eval.num_samples=40']
  _run(_main_args(tmp_path / 'single', *args))
  port = _free_port()
  hosts = [subprocess.Popen(_main_args(tmp_path / 'multi', *args, f'--coordinator_address=127.0.0.1:{port}',
                                       '--num_processes=2', f'--process_id={i}'),
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
           for i in range(2)]
  for proc in hosts:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
  folder = tmp_path / 'multi' / 'eval'
  assert {n for n in os.listdir(folder) if n.startswith('samples_')} == {
      'samples_0_0.npz', 'samples_1_1.npz', 'samples_2_0.npz', 'samples_3_1.npz', 'samples_4_0.npz'}
  single, multi = _shards(tmp_path / 'single' / 'eval'), _shards(folder)
  for r in single:
    np.testing.assert_array_equal(multi[r], single[r])  # one host computes a whole round: bit-identical
  merged = json.loads((folder / 'report.json').read_text())
  assert merged['settings']['hosts'] == 2 and merged['num_samples'] == 40
  assert merged['metrics'] == json.loads((tmp_path / 'single' / 'eval' / 'report.json').read_text())['metrics']


def test_a_killed_run_resumes_to_the_identical_set(tmp_path):
  args = ['--config.eval.num_samples=96', '--speed_up=20']  # 12 rounds of 100 steps
  _run(_main_args(tmp_path / 'whole', *args))
  folder = tmp_path / 'killed' / 'eval'
  proc = subprocess.Popen(_main_args(tmp_path / 'killed', *args), env=_env(), cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 300
  while time.monotonic() < deadline and proc.poll() is None:
    if folder.is_dir() and len([n for n in os.listdir(folder) if n.startswith('samples_')]) >= 2:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  done = [n for n in os.listdir(folder) if n.startswith('samples_')]
  assert 2 <= len(done) < 12, done  # killed in the middle
  _run(_main_args(tmp_path / 'killed', *args))
  whole, resumed = _shards(tmp_path / 'whole' / 'eval'), _shards(folder)
  assert sorted(whole) == sorted(resumed) == list(range(12))
  for r in whole:
    np.testing.assert_array_equal(resumed[r], whole[r])


def test_shards_of_another_run_are_refused(tmp_path):
  _run(_main_args(tmp_path))
  proc = subprocess.run(_main_args(tmp_path, '--config.sampling.snr=0.2'), env=_env(), capture_output=True,
                        text=True, timeout=600, cwd=ROOT)
  assert proc.returncode == 2 and "settings differ in ['snr']" in proc.stderr


def test_bad_multi_host_flags_and_device_divisibility(tmp_path):
  proc = subprocess.run(_main_args(tmp_path, '--num_processes=2'), env=_env(), capture_output=True, text=True,
                        timeout=600, cwd=ROOT)
  assert proc.returncode == 2 and 'needs all of --coordinator_address' in proc.stderr
  proc = subprocess.run(_main_args(tmp_path, '--config.eval.batch_size=6'), env=_env(4), capture_output=True,
                        text=True, timeout=600, cwd=ROOT)
  assert proc.returncode == 2 and 'not divisible by the 4 local devices' in proc.stderr


def test_a_full_disk_leaves_no_half_written_shard(tmp_path, monkeypatch):
  import errno
  from pds_jax import io_utils, shards
  io_utils.write_npz(str(tmp_path / 'samples_0_0.npz'), samples=np.zeros((2, 2), np.uint8))
  before = (tmp_path / 'samples_0_0.npz').read_bytes()

  def savez_until_full(f, **arrays):
    f.write(b'PK\x03\x04 half a shard')
    raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(np, 'savez_compressed', savez_until_full)
  for name in ('samples_0_0.npz', 'samples_1_0.npz'):
    with pytest.raises(OSError, match='No space left'):
      io_utils.write_npz(str(tmp_path / name), samples=np.ones((2, 2), np.uint8))
  assert sorted(os.listdir(tmp_path)) == ['samples_0_0.npz']  # no temp file, no half shard
  assert (tmp_path / 'samples_0_0.npz').read_bytes() == before
  assert shards.finished_rounds(str(tmp_path)) == {0: str(tmp_path / 'samples_0_0.npz')}


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  args = [sys.executable, str(ROOT / 'main.py'), f'--jax_cache={ROOT / ".jax_cache"}', '--config',
          str(ROOT / 'configs/ve/cifar10_ncsnpp_continuous.py'), '--config.model.nf=8', '--mode=sample',
          f'--workdir={tmp_path / "empty"}']
  proc = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert proc.returncode == 2 and str(tmp_path / 'empty') in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow  # ~60 s: nine programs compiled for 4 forced CPU devices
def test_likelihood_and_conditional_sampling_on_devices_equal_single_device(tmp_path):
  """get_likelihood_fn and get_pc_inpainter / colorizer with a mesh (shard_map) and pmap, on 4 CPU devices."""
  script = textwrap.dedent('''
      import jax, numpy as np
      from pds_jax import controllable_generation as cg, gaussian, likelihood, parallel, preconditioning, sampling, sde_lib
      assert jax.local_device_count() == 4
      ref = gaussian.GaussianReference.power_law((8, 8, 3))
      sde = sde_lib.VESDE(0.01, 10., 120)
      keys = sampling.sample_keys(7, 0, 8)
      x = ref.sample(jax.random.PRNGKey(0), 8)
      out = {}
      for name, devices in (('single', {}), ('mesh', {'mesh': parallel.batch_mesh()}), ('pmap', {'pmap': True})):
        bpd, z, nfe = likelihood.get_likelihood_fn(sde, lambda x: x, **devices)(keys, ref.score_fn(sde), x)
        stats = preconditioning.compute_statistics(np.clip(np.asarray(ref.sample(jax.random.PRNGKey(1), 50)), 0, 1))
        pre = preconditioning.from_statistics(stats[0], None, alpha=5.)
        mask = (np.arange(64).reshape(8, 8) %% 3 == 0).astype(np.float32)
        inp, _ = cg.get_pc_inpainter(sde, 'reverse_diffusion', 'langevin', lambda x: x, 0.16, speed_up=10,
                                     preconditioner=pre, **devices)(keys, ref.score_fn(sde), x, mask)
        col, _ = cg.get_pc_colorizer(sde, 'reverse_diffusion', 'langevin', lambda x: x, 0.16, speed_up=10,
                                     **devices)(keys, ref.score_fn(sde), cg.to_grayscale(x))
        out[name] = np.concatenate([np.asarray(bpd).ravel(), np.asarray(z).ravel(), np.asarray(inp).ravel(),
                                    np.asarray(col).ravel()])
      np.save(%r, np.stack([out['single'], out['mesh'], out['pmap']]))
  ''' % str(tmp_path / 'out.npy'))
  _run([sys.executable, '-c', script], devices=4)
  single, mesh, pmapped = np.load(tmp_path / 'out.npy')
  # Per-image ODE solves and per-sample noise: only the Langevin batch-mean norms are reduced in another order.
  scale = np.abs(single).max()
  np.testing.assert_allclose(mesh, single, rtol=0, atol=1e-5 * scale)
  np.testing.assert_allclose(pmapped, single, rtol=0, atol=1e-5 * scale)
  np.testing.assert_array_equal(mesh, pmapped)
