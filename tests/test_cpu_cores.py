"""Every CPU core: the batch split over one host CPU device per core (pds_jax.parallel.use_cpu_cores)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from pds_jax import parallel
from test_cli import TINY_GAUSSIAN


@pytest.mark.parametrize('batch, cores, devices', [(8, 2, 2), (9, 2, 1), (1, 2, 1), (2, 4, 2), (6, 4, 3), (7, 4, 1),
                                                   (12, 4, 4), (8, 1, 1)])
def test_device_count_divides_the_batch(batch, cores, devices):
  assert parallel.cpu_device_count(batch, cores) == devices


def test_the_users_choice_is_kept():
  assert parallel.cpu_devices_wanted(8, {}, cores=2) == 2  # the default: one device per core
  assert parallel.cpu_devices_wanted(8, {'PDS_JAX_CPU_DEVICES': 'auto'}, cores=2) == 2
  assert parallel.cpu_devices_wanted(1, {}, cores=2) == 1  # batch 1: one device, as JAX starts
  assert parallel.cpu_devices_wanted(8, {'PDS_JAX_CPU_DEVICES': '1'}, cores=2) == 1  # the opt-out
  assert parallel.cpu_devices_wanted(9, {'PDS_JAX_CPU_DEVICES': 'auto'}, cores=2) == 1  # no partial batches
  assert parallel.cpu_devices_wanted(8, {'PDS_JAX_CPU_DEVICES': '1'}, cores=2) == 1
  assert parallel.cpu_devices_wanted(8, {'PDS_JAX_CPU_DEVICES': '4'}, cores=2) == 4
  assert parallel.cpu_devices_wanted(8, {'PDS_JAX_CPU_DEVICES': 'auto'}, cores=4) == 4
  assert parallel.cpu_devices_wanted(8, {'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}, cores=2) is None
  assert parallel.cpu_devices_wanted(8, {'JAX_NUM_CPU_DEVICES': '3'}, cores=2) is None
  assert parallel.cpu_devices_wanted(8, {'JAX_PLATFORMS': 'cuda,cpu'}, cores=2) is None
  assert parallel.cpu_devices_wanted(8, {'JAX_PLATFORMS': 'cpu', 'PDS_JAX_CPU_DEVICES': 'auto'}, cores=2) == 2
  for bad in ('0', 'two'):
    with pytest.raises(ValueError, match='PDS_JAX_CPU_DEVICES'):
      parallel.cpu_devices_wanted(8, {'PDS_JAX_CPU_DEVICES': bad}, cores=2)


def _sample(workdir, cpu_devices, *extra):
  """main.py --mode sample with PDS_JAX_CPU_DEVICES = cpu_devices (None: unset, the default)."""
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(ROOT / '.jax_cache'), JAX_PLATFORMS='cpu', XLA_FLAGS='')
  env.pop('JAX_NUM_CPU_DEVICES', None)
  env.pop('PDS_JAX_CPU_DEVICES', None)
  if cpu_devices is not None:
    env['PDS_JAX_CPU_DEVICES'] = str(cpu_devices)
  args = [sys.executable, str(ROOT / 'main.py'), f'--jax_cache={ROOT / ".jax_cache"}', *TINY_GAUSSIAN,
          '--mode=sample', f'--workdir={workdir}', '--speed_up=200', *extra]
  proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  folder = workdir / 'eval'
  shards = {}
  for name in sorted(os.listdir(folder)):
    if name.startswith('samples_') and name.endswith('.npz'):
      with np.load(folder / name) as f:
        shards[name] = (f['samples_float'], f['samples'])
  report = json.loads((folder / 'report.json').read_text())
  return shards, report


@pytest.mark.slow
def test_cli_samples_identical_with_and_without_the_cpu_core_split(tmp_path):
  """Per-sample keys: with the predictor alone every sample is computed on its own, so splitting the batch
  over the CPU devices gives the same bits. (With the Langevin corrector the batch-mean norms are reduced in
  another order across devices: float32 rounding, checked in test_parallel.) The default (unset) splits
  the batch of 8 over one device per core; 2 devices are also forced, so a 1-core machine checks a split."""
  predictor_only = '--config.sampling.corrector=none'
  one, one_report = _sample(tmp_path / 'one', 1, predictor_only)
  default, default_report = _sample(tmp_path / 'default', None, predictor_only)
  two, two_report = _sample(tmp_path / 'two', 2, predictor_only)
  assert one_report['settings']['devices_per_host'] == 1 and two_report['settings']['devices_per_host'] == 2
  assert default_report['settings']['devices_per_host'] == parallel.cpu_device_count(8, len(os.sched_getaffinity(0)))
  assert sorted(default) == sorted(one)
  for name in one:
    np.testing.assert_array_equal(default[name][0], one[name][0])
  assert sorted(one) == sorted(two) and len(one) == 2  # 12 samples in rounds of 8
  for name in one:
    np.testing.assert_array_equal(two[name][0], one[name][0])
    np.testing.assert_array_equal(two[name][1], one[name][1])


@pytest.mark.slow
def test_step_profile_one_core_against_all_cores_quick(tmp_path):
  """`--cores` runs both setups and reports each side's speed-up and the per-image cost against batch 1."""
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(ROOT / '.jax_cache'), JAX_PLATFORMS='cpu', XLA_FLAGS='')
  env.pop('PDS_JAX_CPU_DEVICES', None)
  proc = subprocess.run([sys.executable, '-m', 'benchmarks.step_profile', '--quick', '--cores',
                         f'--out_dir={tmp_path}'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((tmp_path / 'step_profile_cores_quick.json').read_text())
  assert result['benchmark'] == 'step_profile_cores' and (tmp_path / 'step_profile_cores_quick.png').exists()
  cores = len(os.sched_getaffinity(0))
  one_core, all_cores = result['runs']['one_core'][0], result['runs']['all_cores'][0]
  assert one_core['setting']['jax_local_devices'] == 1 and one_core['environment']['cpu_affinity'] == [
      sorted(os.sched_getaffinity(0))[0]]
  assert all_cores['setting']['jax_local_devices'] == cores
  rows = {(row['batch'], row['what']): row for row in result['rows']}
  assert rows[(2, 'forward')]['jax_devices'] == (2 if cores >= 2 else 1)
  assert rows[(1, 'forward')]['jax_devices'] == 1
  for row in rows.values():
    assert row['jax']['speedup'] > 0
  assert rows[(1, 'forward')]['jax']['per_image_vs_batch_1']['all_cores'] == 1.
  assert 'pds_jax speed-up' in proc.stdout
