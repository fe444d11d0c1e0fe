"""The benchmark scripts run (their --quick smoke settings) and write JSON + PNG: they cannot rot."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPTS = ['quality_vs_steps', 'overhead', 'model_step', 'scaling', 'default_model_steps', 'init_aware_toys',
           'init_aware_images',
           pytest.param('compile', marks=pytest.mark.slow),  # compiles with the cache disabled
           pytest.param('controllable', marks=pytest.mark.slow)]  # ~1 min: nine conditional samplers compiled


@pytest.mark.parametrize('name', SCRIPTS)
def test_benchmark_quick_setting_writes_results(name, tmp_path):
  proc = subprocess.run([sys.executable, '-m', f'benchmarks.{name}', '--quick', f'--out_dir={tmp_path}'],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((tmp_path / f'{name}_quick.json').read_text())
  assert result['benchmark'] == name and result['setting']['quick'] is True
  assert (tmp_path / f'{name}_quick.png').stat().st_size > 1000
  assert '|' in proc.stdout  # the markdown table
