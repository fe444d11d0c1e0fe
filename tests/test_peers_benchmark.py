"""benchmarks/peers.py runs its smoke setting and its fairness checks hold (k-diffusion: an optional benchmark dependency)."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def _require_k_diffusion():
  pytest.importorskip('torch')
  pytest.importorskip('torchsde')  # k_diffusion/sampling.py imports it
  pytest.importorskip('torchdiffeq')
  from benchmarks import peers
  try:
    peers.load_k_diffusion()
  except ImportError as e:
    pytest.skip(f'k-diffusion is absent: {e}')


def test_peers_quick_setting_writes_results_and_passes_fairness_checks(tmp_path):
  _require_k_diffusion()
  proc = subprocess.run([sys.executable, '-m', 'benchmarks.peers', '--target=gaussian64_ve', '--quick',
                         '--peers=k_diffusion', f'--out_dir={tmp_path}'],
                        cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((tmp_path / 'peers_gaussian64_ve_quick.json').read_text())
  assert result['benchmark'] == 'peers_gaussian64_ve' and result['setting']['quick'] is True
  fairness = result['fairness']
  # the peers' torch float32 denoiser is the exact one (float64 arbiter), and pds_jax's draws are the shared x_T
  assert fairness['denoiser_torch_vs_float64_max_abs'] < 1e-5
  assert fairness['denoiser_torch_vs_pds_jax_max_abs_over_max_abs_x'] < 1e-5
  assert fairness['pds_jax_own_x_T_vs_shared_max_abs'] < 1e-5
  # k-diffusion's Euler and pds_jax's Euler on the same Karras grid integrate the same ODE from the same x_T
  assert fairness['k_diffusion_euler_vs_pds_jax_euler_karras_20']['max_abs'] < 1e-4
  rows = result['rows']
  kd = [r for r in rows if r['family'] == 'k-diffusion']
  assert kd and all(r['error'] is None and r['nfe'] <= r['budget'] for r in kd)
  assert any(r['family'] == 'pds_jax' for r in rows)
  assert set(result['summary']['by_budget']) == {'5', '10'}
  assert result['summary']['by_budget']['10']['peer']['kl_per_dim'] > 0
  assert '| NFE ≤ |' in proc.stdout
