"""Tests for configs/: every config loads with the sampler's fields, and our models build score_sde's trees."""
import gzip
import importlib
import json
import pathlib

import jax
import ml_collections
import pytest
from flax import traverse_util

from configs.default_pds import add_controllable_fields, add_likelihood_fields, add_pds_fields

ROOT = pathlib.Path(__file__).resolve().parents[1]
# score_sde's parameter trees (path -> shape), made by running the original model code with
# `jax.eval_shape` on flax 0.12.8; see the file's "meta" entry.
TREES_FILE = pathlib.Path(__file__).parent / 'data' / 'score_sde_param_trees.json.gz'
FIXTURES = ROOT.parent / 'shared' / 'fixtures' / 'score_sde'


def _config_modules() -> list[str]:
  """Every module under configs/ that defines a config (not the shared defaults)."""
  paths = (ROOT / 'configs').rglob('*.py')
  names = ['.'.join(p.relative_to(ROOT).with_suffix('').parts) for p in paths
           if p.stem != '__init__' and not p.stem.startswith('default_')]
  return sorted(names)


def _load_references() -> dict:
  with gzip.open(TREES_FILE, 'rt') as f:
    return json.load(f)


CONFIG_MODULES = _config_modules()
REFERENCES = _load_references()
TREES = REFERENCES['trees']
# One of each architecture family and size, kept in the fast run; the rest are marked slow.
FAST_TREES = (
    'configs.ve.cifar10_ncsnpp_continuous',   # NCSN++, fourier embedding, input residual
    'configs.vp.cifar10_ddpmpp_continuous',   # DDPM++, positional embedding, no FIR
    'configs.ve.ffhq_ncsnpp_continuous',      # NCSN++ 1024px, output/input skip, 8 levels
    'configs.vp.ddpm.cifar10',                # DDPM
    'configs.vp.ddpm.cifar10_unconditional',  # DDPM without time embedding
    'configs.ve.ncsnv2.cifar10',              # NCSNv2 (64px)
    'configs.ve.ncsnv2.bedroom',              # NCSNv2 (128px)
    'configs.ve.ncsn.cifar10',                # NCSN (v1)
)
# Reference settings of the official PDS configs (docs METHOD §2).
PDS_SETTINGS = {
    'configs.pds.cifar10_ncsnpp_deep_continuous': dict(image_size=32, sigma_max=50, num_scales=1000, snr=0.16),
    'configs.pds.bedroom_ncsnpp_continuous': dict(image_size=256, sigma_max=378, num_scales=2000, snr=0.075),
    'configs.pds.church_ncsnpp_continuous': dict(image_size=256, sigma_max=380, num_scales=2000, snr=0.075),
    'configs.pds.ffhq_ncsnpp_continuous': dict(image_size=1024, sigma_max=1348, num_scales=2000, snr=0.15),
}


def _get_config(name: str) -> ml_collections.ConfigDict:
  return importlib.import_module(name).get_config()


@pytest.mark.parametrize('name', CONFIG_MODULES)
def test_config_has_sampler_fields(name):
  config = _get_config(name)
  assert isinstance(config, ml_collections.ConfigDict), name
  assert config.training.sde in ('vesde', 'vpsde', 'subvpsde'), name
  assert isinstance(config.training.continuous, bool), name
  assert isinstance(config.model.num_scales, int) and config.model.num_scales > 0, name
  assert isinstance(config.sampling.predictor, str), name
  assert isinstance(config.sampling.corrector, str), name
  assert config.sampling.snr > 0, name
  assert config.sampling.n_steps_each >= 1, name
  assert isinstance(config.sampling.noise_removal, bool), name
  assert config.eval.dtype == 'float32', name
  pds = ml_collections.ConfigDict()
  add_pds_fields(pds)
  missing = set(pds.keys()) - set(config.sampling.keys())
  assert not missing, f'{name}: config.sampling lacks the PDS fields {sorted(missing)}'
  reference = ml_collections.ConfigDict()
  add_likelihood_fields(reference)
  add_controllable_fields(reference)
  for section in ('likelihood', 'inpaint', 'colorize'):
    assert section in config and set(reference[section].keys()) <= set(config[section].keys()), (name, section)


def test_every_score_sde_config_is_here():
  assert set(TREES) <= set(CONFIG_MODULES), sorted(set(TREES) - set(CONFIG_MODULES))
  score_sde_tree = [n for n in CONFIG_MODULES if n.split('.')[1] in ('ve', 'vp', 'subvp')]
  assert sorted(TREES) == score_sde_tree
  assert len(TREES) == 39


@pytest.mark.parametrize('name', sorted(PDS_SETTINGS))
def test_pds_config_matches_official_settings(name):
  config = _get_config(name)
  expected = PDS_SETTINGS[name]
  assert config.data.image_size == expected['image_size']
  assert not config.data.centered
  assert config.model.name == 'ncsnpp'
  assert (config.training.sde, config.training.continuous) == ('vesde', True)
  assert config.model.sigma_min == 0.01
  assert config.model.sigma_max == expected['sigma_max']
  assert config.model.num_scales == expected['num_scales']
  assert config.sampling.snr == expected['snr']
  assert (config.sampling.predictor, config.sampling.corrector) == ('reverse_diffusion', 'langevin')
  assert config.sampling.n_steps_each == 1
  assert config.sampling.noise_removal and not config.sampling.probability_flow
  assert config.model.to_dict() == _get_config(name.replace('.pds.', '.ve.')).model.to_dict()


@pytest.mark.parametrize('fixture', ['ve_cifar10_ncsnpp_continuous', 've_ncsnv2_cifar10', 'vp_cifar10_ddpmpp_continuous'])
def test_reference_tree_matches_fixture_manifest(fixture):
  """The fixtures' checkpoints (nf shrunk, legacy GroupNorm) have the reference tree's paths."""
  meta = json.loads((FIXTURES / fixture / 'meta.json').read_text())
  manifest = json.loads((FIXTURES / fixture / 'manifest.json').read_text())
  name = 'configs.' + meta['original_config'].removeprefix('configs/').removesuffix('.py').replace('/', '.')
  assert sorted(manifest['params']) == sorted(TREES[name])
  assert sorted(manifest['groupnorm_params']) == REFERENCES['legacy_groupnorm_leaves'][name]
  for path in manifest['groupnorm_params']:
    assert path.split('/')[-2].startswith('GroupNorm_'), path
    assert manifest['params'][path][:3] == [1, 1, 1] and len(TREES[name][path]) == 1, path


def _model_tree(config: ml_collections.ConfigDict) -> dict[str, list[int]]:
  """Path -> shape of the parameters pds_jax builds, without computing them."""
  from pds_jax.models import utils as mutils
  _, params = jax.eval_shape(lambda rng: mutils.init_model(rng, config)[1:], jax.random.PRNGKey(0))
  flat = traverse_util.flatten_dict(params, sep='/')
  return {path: list(leaf.shape) for path, leaf in flat.items()}


def _tree_diff(expected: dict, actual: dict, limit: int = 20) -> list[str]:
  lines = [f'missing {p} {expected[p]}' for p in sorted(set(expected) - set(actual))]
  lines += [f'extra {p} {actual[p]}' for p in sorted(set(actual) - set(expected))]
  lines += [f'shape {p}: expected {expected[p]}, got {actual[p]}'
            for p in sorted(set(expected) & set(actual)) if expected[p] != actual[p]]
  return lines[:limit] + ([f'... {len(lines) - limit} more'] if len(lines) > limit else [])


@pytest.mark.parametrize('name', [
    n if n in FAST_TREES else pytest.param(n, marks=pytest.mark.slow) for n in sorted(TREES)])
def test_model_tree_matches_score_sde(name):
  expected = TREES[name]
  actual = _model_tree(_get_config(name))
  diff = _tree_diff(expected, actual)
  assert not diff, f'{name}: pds_jax tree differs from score_sde ({TREES_FILE.name}):\n' + '\n'.join(diff)
