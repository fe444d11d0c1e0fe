"""Issue 22, a new user's first hour, as the user types it: fit_init never writes into the package,
eval is comparable with compare, convert explains a width mismatch and remembers its overrides, and
the smaller items (unsetting σ_T, the fit's verdict, --help defaults, no libtpu line, figure layout)."""
import hashlib
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import ROOT
from test_cli import _main
from test_cli_modes import GAUSSIAN_16

SHIPPED = ['--config', str(ROOT / 'configs/default_model.py')]
ASSETS = ROOT / 'pds_jax' / 'assets'


def _tree_digest(folder) -> dict:
  return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(folder.rglob('*')) if p.is_file()}


def test_fit_init_writes_only_under_workdir_init_and_sampling_reads_it_from_there(tmp_path):
  before = _tree_digest(ASSETS)
  proc = _main(*SHIPPED, '--mode=fit_init', f'--workdir={tmp_path / "run"}', '--config.init_aware.sigma_t=1.0',
               '--config.init_aware.num_images=40')
  written = tmp_path / 'run' / 'init' / 'init.json'
  assert f'wrote {written}' in proc.stdout and json.loads(written.read_text())['sigma_t'] == 1.0
  assert _tree_digest(ASSETS) == before  # the shipped init (sampling.init_path) is untouched
  assert 'libtpu' not in proc.stderr  # the INFO line of every run is gone
  # a workdir inside the package is refused before any compute
  proc = _main(*SHIPPED, '--mode=fit_init', f'--workdir={ASSETS / "natural_patches_32"}',
               '--config.init_aware.num_images=40', check=False)
  assert proc.returncode == 2 and 'inside the installed package' in proc.stderr
  assert _tree_digest(ASSETS) == before
  # sampling from that workdir reads its own init (sigma_T 1); another workdir reads the shipped one (3.5)
  tiny = ['--mode=sample', '--config.sampling.init=spectral_gaussian', '--config.sampling.num_steps=2',
          '--config.eval.batch_size=4', '--config.eval.num_samples=4', '--config.sampling.num_chunks=1']
  for workdir, sigma_t in ((tmp_path / 'run', 1.0), (tmp_path / 'other', 3.5)):
    _main(*SHIPPED, *tiny, f'--workdir={workdir}')
    assert json.loads((workdir / 'eval' / 'report.json').read_text())['settings']['sigma_t'] == sigma_t
  assert _tree_digest(ASSETS) == before


def test_sigma_t_can_be_unset_and_the_fit_says_whether_it_beats_its_baseline(tmp_path):
  proc = _main(*SHIPPED, '--mode=fit_init', f'--workdir={tmp_path}', '--config.init_aware.sigma_t=None',
               '--config.init_aware.num_images=200')
  manifest = json.loads((tmp_path / 'init' / 'init.json').read_text())
  assert manifest['sigma_t_rule']['rule'] == 'principal' and manifest['sigma_t'] != 3.5  # the config's 3.5 is unset
  assert 'its baseline N(0, sigma_T^2 I)' in proc.stdout
  wins = manifest['beats_baseline']
  nll_better = manifest['spectral_gaussian']['val_nll_per_dim'] < manifest['gaussian_baseline']['val_nll_per_dim']
  assert wins['val_nll_per_dim'] == nll_better
  # None only unsets fields whose default is None
  proc = _main(*SHIPPED, '--mode=fit_init', f'--workdir={tmp_path}', '--config.sampling.rho=None', check=False)
  assert proc.returncode == 2 and 'config.sampling.rho' in proc.stderr and 'Traceback' not in proc.stderr


def test_help_shows_the_documented_defaults_of_alpha_and_speed_up():
  proc = _main('--help', check=False)
  text = ' '.join(proc.stdout.split())
  assert "(default: '5.0')" not in text and "(default: '1.0')" not in text
  alpha = text[text.index('--alpha:'):text.index('--config')]
  assert 'max(5, N / 5, 500 / N^2)' in alpha
  speed_up = text[text.index('--speed_up:'):]
  assert "config's sampling.speed_up" in speed_up[:300]


def test_eval_scores_against_compares_reference_with_a_floor_and_reads_compare_folders(tmp_path):
  _main(*GAUSSIAN_16, '--mode=compare', f'--workdir={tmp_path}', '--speed_up=100')
  _main(*GAUSSIAN_16, '--mode=sample', f'--workdir={tmp_path}', '--config.sampling.method=ode',
        '--config.sampling.ode_rtol=1e-2', '--config.sampling.ode_atol=1e-2', '--eval_folder=ode')
  proc = _main(*GAUSSIAN_16, '--mode=eval', f'--workdir={tmp_path}', '--config.eval.kid_subsets=10',
               '--config.eval.num_reference=64', f'--sample_dirs={tmp_path / "compare"},{tmp_path / "ode"}')
  metrics = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())
  runs = {k: v for k, v in metrics.items() if k.startswith(str(tmp_path))}
  assert set(runs) == {str(tmp_path / 'compare' / 'samples_vanilla.npz'), str(tmp_path / 'compare' / 'samples_pds.npz'),
                       str(tmp_path / 'ode')}
  # the reference is not shrunk to the 8 or 16 samples, and the floor (real images) is stored and printed
  assert metrics['num_reference'] == 64 and all(r['metrics']['num_reference'] == 64 for r in runs.values())
  assert metrics['noise_floor']['num_samples'] == 16 and metrics['noise_floor']['swd']['avg'] > 0
  assert 'reference: 64 images' in proc.stdout and 'noise floor (16 real images' in proc.stdout
  ode = runs[str(tmp_path / 'ode')]
  assert ode['settings']['method'] == 'ode' and ode['nfe_per_sample'] > 8  # plotted at its NFE, not at "2 steps"
  for name in ('swd_avg', 'fd_features', 'kid'):
    assert Image.open(tmp_path / 'eval' / f'{name}_vs_nfe.png').size[0] >= 400


def test_convert_with_the_wrong_width_says_which_nf_and_remembers_the_overrides(tmp_path, fixtures_dir):
  pytest.importorskip('torch')
  pth = fixtures_dir / 'score_sde_pytorch' / 've_cifar10_ncsnpp_continuous' / 'checkpoint.pth'
  config = ['--config', str(ROOT / 'configs/ve/cifar10_ncsnpp_continuous.py')]
  proc = _main(*config, '--mode=convert', f'--workdir={tmp_path}', f'--pytorch_checkpoint={pth}', check=False)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  lines = proc.stderr.strip().splitlines()
  error = next(i for i, line in enumerate(lines) if line.startswith('pds_jax: error:'))
  assert "is 1/16 of the config's width (model.nf 128): is model.nf 8?" in lines[error]
  assert len(lines) - error <= 22 and 'more (' in lines[-1]  # at most 20 problems, then their count
  proc = _main(*config, '--config.model.nf=8', '--mode=convert', f'--workdir={tmp_path}', f'--pytorch_checkpoint={pth}')
  stored = json.loads((tmp_path / 'checkpoints' / 'config_overrides.json').read_text())
  assert stored['overrides'] == {'model.nf': 8} and 'config_overrides.json' in proc.stdout
  # later commands on the workdir need no --config.model.nf
  proc = _main(*config, '--config.eval.batch_size=2', '--config.eval.num_samples=2', '--mode=sample',
               f'--workdir={tmp_path}', '--speed_up=500')
  assert json.loads((tmp_path / 'eval' / 'report.json').read_text())['num_samples'] == 2
  assert '--config.model.nf=8' in proc.stderr


def test_panel_titles_are_never_cut_and_grids_of_3_and_4_columns_share_one_scale():
  from pds_jax.figures import _font, titled_grid, titled_panels
  images = np.random.default_rng(0).random((4, 32, 32, 3)).astype(np.float32)
  caption = 'inpaint · 1000 steps · NFE 2000 · PDS alpha 5 (official)\nknown region at T: data · mask: center_square'
  panels = {k: titled_panels([(caption, titled_grid([(str(i), images) for i in range(k)]))]) for k in (3, 4)}
  text = ImageDraw.Draw(Image.new('RGB', (1, 1))).textlength(caption.split('\n')[0], font=_font(15))
  for out in panels.values():
    assert out.shape[1] >= text + 2 * 10  # the longest title line fits inside the padding
    assert (out[:, -10:] == 255).all()  # nothing drawn into the right margin
  assert panels[3].shape[0] == panels[4].shape[0]  # colorize (3 columns) is not enlarged 2x against inpaint (4)


def test_width_summary_names_the_ratio_and_the_likely_nf():
  from pds_jax.checkpoints import width_summary
  narrow = [((3, 3, 3, 128), (3, 3, 3, 8)), ((256, 512), (16, 32))]
  assert width_summary(narrow, 5, 128) == ("every mis-shaped tensor (2 of 5) is 1/16 of the config's width "
                                           '(model.nf 128): is model.nf 8? (--config.model.nf=8)')
  assert 'is 2x the config\'s width (model.nf 64): is model.nf 128?' in width_summary([((64,), (128,))], 1, 64)
  assert width_summary([((3, 3, 3, 128), (3, 3, 3, 8)), ((64,), (32,))], 2, 128) is None  # two ratios: no width story
  assert width_summary([((3, 3), (3, 3, 1))], 1, 128) is None
