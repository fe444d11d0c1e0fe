"""The benchmark scripts run (their --quick smoke settings) and write JSON + PNG: they cannot rot."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT

# Each smoke run compiles its samplers in a fresh process: 26-86 CPU-seconds with a cold cache.
pytestmark = pytest.mark.slow

SCRIPTS = ['quality_vs_steps', 'overhead', 'model_step', 'scaling', 'default_model_steps', 'init_aware_toys',
           'init_aware_images', 'step_profile', 'compile', 'controllable', 'inception_cores']


@pytest.mark.parametrize('name', SCRIPTS)
def test_benchmark_quick_setting_writes_results(name, tmp_path):
  proc = subprocess.run([sys.executable, '-m', f'benchmarks.{name}', '--quick', f'--out_dir={tmp_path}'],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((tmp_path / f'{name}_quick.json').read_text())
  assert result['benchmark'] == name and result['setting']['quick'] is True
  assert (tmp_path / f'{name}_quick.png').stat().st_size > 1000
  assert '|' in proc.stdout  # the markdown table


@pytest.mark.parametrize('target', ['gaussian64_vp', 'resolution', 'shipped', 'alpha_few'])
def test_sampler_leaderboard_quick_setting_writes_results(target, tmp_path):
  proc = subprocess.run([sys.executable, '-m', 'benchmarks.samplers', f'--target={target}', '--quick',
                         f'--out_dir={tmp_path}'], cwd=ROOT, capture_output=True, text=True,
                        timeout=1800)  # shipped: every row (27) at two points, each compiled: > 15 min at load 4
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((tmp_path / f'samplers_{target}_quick.json').read_text())
  assert result['benchmark'] == f'samplers_{target}' and result['setting']['quick'] is True
  assert (tmp_path / f'samplers_{target}_quick.png').stat().st_size > 1000
  assert '|' in proc.stdout
  if target == 'gaussian64_vp':  # every row ran, and the reach table covers each
    assert set(result['results']) == set(result['summary']['kl_per_dim']) - {'target', 'reference_value',
                                                                              'reference_nfe', 'floor'}
