"""Tests for pds_jax/checkpoints.py: legacy score_sde files, atomic saving, errors, PyTorch conversion."""
import functools
import json
import os
import pathlib
import sys

import jax
import ml_collections
import msgpack
import numpy as np
import pytest
from flax import serialization, traverse_util

from pds_jax import checkpoints
from pds_jax.checkpoints import CheckpointError, CheckpointMismatchError, CheckpointNotFoundError

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / 'shared' / 'fixtures'
SCORE_SDE = FIXTURES / 'score_sde'
TORCH_FIXTURE = FIXTURES / 'score_sde_pytorch' / 've_cifar10_ncsnpp_continuous'
NAMES = ['ve_cifar10_ncsnpp_continuous', 'vp_cifar10_ddpmpp_continuous', 've_ncsnv2_cifar10']
NCSNPP = 've_cifar10_ncsnpp_continuous'
LEGACY_FIELDS = ['step', 'optimizer', 'lr', 'model_state', 'ema_rate', 'params_ema', 'rng']


def _config(name: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(json.loads((SCORE_SDE / name / 'config.json').read_text()))


def _file(name: str) -> pathlib.Path:
  return SCORE_SDE / name / 'checkpoints' / 'checkpoint_1'


@functools.lru_cache(maxsize=None)
def _restored(name: str) -> checkpoints.State:
  return checkpoints.restore_checkpoint(str(_file(name)), _config(name))


def _plain_read(path) -> dict:
  """A checkpoint read with msgpack alone: ext type 1 is [shape, dtype name, raw bytes]."""
  def ext_hook(code, data):
    assert code == 1, code
    shape, dtype, buffer = msgpack.unpackb(data)
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)
  return msgpack.unpackb(pathlib.Path(path).read_bytes(), ext_hook=ext_hook, raw=False,
                         strict_map_key=False)


def _flat(tree) -> dict:
  return traverse_util.flatten_dict(tree) if tree else {}


def _modern(path, x):
  """What the loader must give for a stored leaf: GroupNorm (1, 1, 1, C) -> (C,), all else as is."""
  return x.reshape(-1) if path[-2].startswith('GroupNorm_') and path[-1] in ('scale', 'bias') else x


def _assert_tree_equal(actual, expected_flat: dict, what: str):
  actual_flat = _flat(actual)
  assert actual_flat.keys() == expected_flat.keys(), what
  for path, x in expected_flat.items():
    a = np.asarray(actual_flat[path])
    assert a.shape == x.shape and a.dtype == x.dtype, (what, path, a.shape, x.shape)
    np.testing.assert_array_equal(a, x, err_msg=f'{what} {path}')


def _assert_states_equal(a: checkpoints.State, b: checkpoints.State):
  flat_a = traverse_util.flatten_dict(serialization.to_state_dict(a), keep_empty_nodes=True)
  flat_b = traverse_util.flatten_dict(serialization.to_state_dict(b), keep_empty_nodes=True)
  assert flat_a.keys() == flat_b.keys()
  for path in flat_a:
    np.testing.assert_array_equal(np.asarray(flat_a[path]), np.asarray(flat_b[path]), err_msg=str(path))


# --- restoring legacy files -------------------------------------------------------------------

@pytest.mark.parametrize('name', NAMES)
def test_restore_matches_plain_msgpack_read(name):
  raw = _plain_read(_file(name))
  state = _restored(name)
  modern = lambda tree: {p: _modern(p, x) for p, x in _flat(tree).items()}
  _assert_tree_equal(state.params_ema, modern(raw['params_ema']), 'params_ema')
  _assert_tree_equal(state.params, modern(raw['optimizer']['target']), 'params')
  param_states = _flat(raw['optimizer']['state']['param_states'])
  for moment in ('grad_ema', 'grad_sq_ema'):
    stored = {p[:-1]: _modern(p[:-1], x) for p, x in param_states.items() if p[-1] == moment}
    _assert_tree_equal(getattr(state.opt_state, moment), stored, moment)
  assert int(state.opt_state.step) == int(raw['optimizer']['state']['step']) == 1
  assert int(state.step) == int(raw['step']) == 1
  assert float(state.lr) == float(raw['lr']) and float(state.ema_rate) == float(raw['ema_rate'])
  np.testing.assert_array_equal(state.rng, raw['rng'])
  assert state.model_state == {}
  # params_ema = params + noise in the fixtures: a loader that picks the wrong tree fails here.
  ema, params = _flat(state.params_ema), _flat(state.params)
  assert all(not np.array_equal(ema[p], params[p]) for p in ema)


@pytest.mark.parametrize('name', NAMES)
def test_restore_reshapes_group_norm_and_only_group_norm(name):
  manifest = json.loads((SCORE_SDE / name / 'manifest.json').read_text())
  meta = json.loads((SCORE_SDE / name / 'meta.json').read_text())
  restored = {'/'.join(p): tuple(x.shape) for p, x in _flat(_restored(name).params_ema).items()}
  group_norm = set(manifest['groupnorm_params'])
  assert len(group_norm) == meta['num_groupnorm_leaves']
  for path, stored_shape in manifest['params'].items():
    expected = (stored_shape[-1],) if path in group_norm else tuple(stored_shape)
    assert restored[path] == expected, path
  # 1x1 conv kernels (NCSN++) and NCSNv2's InstanceNorm++ parameters keep their 4-D shapes.
  assert any(len(s) == 4 and s[:2] == (1, 1) for s in restored.values())


@pytest.mark.parametrize('form', ['file', 'checkpoints_folder', 'workdir'])
def test_restore_accepts_file_checkpoints_folder_and_workdir(form):
  path = {'file': _file(NCSNPP), 'checkpoints_folder': _file(NCSNPP).parent,
          'workdir': SCORE_SDE / NCSNPP}[form]
  _assert_states_equal(checkpoints.restore_checkpoint(str(path), _config(NCSNPP)), _restored(NCSNPP))


def test_restore_picks_the_highest_number_not_the_last_name(tmp_path):
  state = _restored(NCSNPP)
  for step in (2, 10, 9):
    checkpoints.save_checkpoint(str(tmp_path / 'checkpoints'), state.replace(step=np.int32(step)),
                                step=step, keep=None)
  (tmp_path / 'checkpoints' / 'checkpoint_11.bak').write_bytes(b'x')
  (tmp_path / 'checkpoints' / '.checkpoint_12.abc.tmp').write_bytes(b'half a file')
  assert checkpoints.latest_checkpoint(str(tmp_path)) == str(tmp_path / 'checkpoints' / 'checkpoint_10')
  assert int(checkpoints.restore_checkpoint(str(tmp_path), _config(NCSNPP)).step) == 10


# --- saving -----------------------------------------------------------------------------------

@pytest.mark.parametrize('name', NAMES)
def test_save_writes_the_legacy_layout_and_round_trips(name, tmp_path):
  state = _restored(name)
  path = checkpoints.save_checkpoint(str(tmp_path), state, step=3)
  assert path == str(tmp_path / 'checkpoint_3')
  saved, original = _plain_read(path), _plain_read(_file(name))
  assert list(saved) == LEGACY_FIELDS  # field order, as flax 0.3.1 wrote it
  assert set(saved['optimizer']) == {'target', 'state'}
  assert set(saved['optimizer']['state']) == {'step', 'param_states'}
  # Same tree, shapes (GroupNorm (1, 1, 1, C)), dtypes and values as the file score_sde wrote.
  saved_flat, original_flat = _flat(saved), _flat(original)
  assert saved_flat.keys() == original_flat.keys()
  for p, x in original_flat.items():
    assert saved_flat[p].shape == x.shape and saved_flat[p].dtype == x.dtype, p
    np.testing.assert_array_equal(saved_flat[p], x, err_msg=str(p))
  _assert_states_equal(checkpoints.restore_checkpoint(path, _config(name)), state)


def test_saved_bytes_parse_with_flax_serialization(tmp_path):
  path = checkpoints.save_checkpoint(str(tmp_path), _restored(NCSNPP), step=1)
  raw = serialization.msgpack_restore(pathlib.Path(path).read_bytes())
  group_norm = raw['params_ema']['ResnetBlockBigGANpp_0']['GroupNorm_0']
  assert group_norm['scale'].shape == group_norm['bias'].shape == (1, 1, 1, 8)
  assert set(raw['optimizer']['state']['param_states']['Conv_0']['kernel']) == {'grad_ema', 'grad_sq_ema'}
  assert raw['step'].dtype == np.int32 and raw['rng'].dtype == np.uint32 and raw['lr'].shape == ()


def test_save_keeps_the_last_k_by_number(tmp_path):
  state = _restored(NCSNPP)
  for step in (8, 9, 10, 11):
    checkpoints.save_checkpoint(str(tmp_path), state, step=step, keep=2)
  assert sorted(os.listdir(tmp_path)) == ['checkpoint_10', 'checkpoint_11']
  checkpoints.save_checkpoint(str(tmp_path), state, step=12, keep=None)
  assert sorted(os.listdir(tmp_path)) == ['checkpoint_10', 'checkpoint_11', 'checkpoint_12']
  checkpoints.save_checkpoint(str(tmp_path), state, step=13, keep=1)
  assert os.listdir(tmp_path) == ['checkpoint_13']


@pytest.mark.parametrize('failing', ['fsync', 'replace'])
def test_a_crash_while_saving_leaves_no_partial_file(failing, tmp_path, monkeypatch):
  state = _restored(NCSNPP)
  checkpoints.save_checkpoint(str(tmp_path), state, step=1)
  before = (tmp_path / 'checkpoint_1').read_bytes()

  def crash(*args):
    raise OSError('simulated crash')
  monkeypatch.setattr(os, failing, crash)
  with pytest.raises(OSError, match='simulated crash'):
    checkpoints.save_checkpoint(str(tmp_path), state.replace(step=np.int32(2)), step=2)
  monkeypatch.undo()
  assert os.listdir(tmp_path) == ['checkpoint_1']
  assert (tmp_path / 'checkpoint_1').read_bytes() == before
  assert int(checkpoints.restore_checkpoint(str(tmp_path), _config(NCSNPP)).step) == 1


def test_sampling_only_checkpoint(tmp_path):
  state = _restored(NCSNPP)
  legacy_ema = checkpoints.state_to_legacy_dict(state)['params_ema']
  only_ema = tmp_path / 'ema_only'
  only_ema.write_bytes(serialization.msgpack_serialize({'params_ema': legacy_ema}))
  restored = checkpoints.restore_checkpoint(str(only_ema), _config(NCSNPP))
  assert int(restored.step) == 0
  assert restored.params is None and restored.opt_state is None and restored.rng is None
  _assert_tree_equal(restored.params_ema, _flat(state.params_ema), 'params_ema')
  # Saving it writes the sampling-only layout back, with the step.
  path = checkpoints.save_checkpoint(str(tmp_path / 'ckpts'), restored.replace(step=np.int32(7)), step=7)
  assert list(_plain_read(path)) == ['step', 'params_ema']
  again = checkpoints.restore_checkpoint(path, _config(NCSNPP))
  assert int(again.step) == 7
  _assert_tree_equal(again.params_ema, _flat(state.params_ema), 'params_ema')


# --- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize('content', ['truncated', 'random', 'empty', 'not_a_state'])
def test_unreadable_file_names_the_path(content, tmp_path):
  data = _file(NCSNPP).read_bytes()
  path = tmp_path / 'checkpoint_5'
  path.write_bytes({'truncated': data[:len(data) // 2],
                    'random': np.random.default_rng(0).bytes(4096),
                    'empty': b'',
                    'not_a_state': serialization.msgpack_serialize({'step': np.int32(1)})}[content])
  with pytest.raises(CheckpointError, match=str(path)) as info:
    checkpoints.restore_checkpoint(str(tmp_path), _config(NCSNPP))
  assert isinstance(info.value, ValueError)
  assert ('params_ema' if content == 'not_a_state' else 'truncated') in str(info.value)


def test_missing_checkpoints_name_the_path(tmp_path):
  with pytest.raises(CheckpointNotFoundError, match=f'{tmp_path}.*empty'):
    checkpoints.restore_checkpoint(str(tmp_path), _config(NCSNPP))
  (tmp_path / 'checkpoints').mkdir()
  (tmp_path / 'checkpoint_final').write_bytes(b'')
  with pytest.raises(CheckpointNotFoundError, match='no checkpoint_<N>.*checkpoint_final') as info:
    checkpoints.restore_checkpoint(str(tmp_path), _config(NCSNPP))
  assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)
  with pytest.raises(CheckpointNotFoundError, match=str(tmp_path / 'nowhere')):
    checkpoints.restore_checkpoint(str(tmp_path / 'nowhere'), _config(NCSNPP))


def test_checkpoint_of_a_wider_model_lists_every_mis_shaped_path():
  config = _config(NCSNPP)
  config.model.nf = 16
  with pytest.raises(CheckpointMismatchError) as info:
    checkpoints.restore_checkpoint(str(_file(NCSNPP)), config)
  message = str(info.value)
  assert message.startswith(f'{_file(NCSNPP)}: ')
  assert 'mis-shaped  Conv_0/kernel: expected (3, 3, 3, 16), stored (3, 3, 3, 8)' in message
  assert 'mis-shaped  ResnetBlockBigGANpp_0/GroupNorm_0/scale: expected (16,), stored (8,)' in message
  from pds_jax.models import utils as mutils
  wide = jax.eval_shape(lambda rng: mutils.init_model(rng, config)[2], jax.random.PRNGKey(0))
  stored = _flat(_restored(NCSNPP).params_ema)
  changed = [p for p, x in _flat(wide).items() if x.shape != stored[p].shape]
  assert 500 < len(changed) < len(stored)  # the output conv's bias (3,) does not depend on nf
  ema_lines = [line for line in message.splitlines() if line.startswith('  mis-shaped')]
  assert len(ema_lines) == len(changed)
  assert f'params (optimizer.target): the same {len(ema_lines)} problems as params_ema' in message


@pytest.mark.parametrize('stored, config, lines', [
    ('vp_cifar10_ddpmpp_continuous', NCSNPP,
     ['missing     GaussianFourierProjection_0/W: expected (8,)',
      'missing     Downsample_0/Conv2d_0/weight: expected (3, 3, 3, 8)',
      'mis-shaped  Dense_0/kernel: expected (16, 32), stored (8, 32)']),
    ('ve_ncsnv2_cifar10', 'vp_cifar10_ddpmpp_continuous',
     ['unexpected  InstanceNorm2dPlus_0/alpha: stored (1, 1, 1, 8)',
      'missing     ResnetBlockBigGANpp_0/GroupNorm_0/scale: expected (8,)'])])
def test_checkpoint_of_another_architecture_lists_missing_and_unexpected_paths(stored, config, lines):
  with pytest.raises(CheckpointMismatchError) as info:
    checkpoints.restore_checkpoint(str(SCORE_SDE / stored), _config(config))
  message = str(info.value)
  assert message.startswith(f'{_file(stored)}: ')
  for line in lines:
    assert f'\n  {line}\n' in message, line


# --- score_sde_pytorch files ------------------------------------------------------------------

def test_conversion_without_torch_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, 'torch', None)
  with pytest.raises(ImportError, match=r'pip install \.\[torch\]'):
    checkpoints.convert_pytorch_checkpoint(str(TORCH_FIXTURE / 'checkpoint.pth'), _config(NCSNPP))


@functools.lru_cache(maxsize=None)
def _converted() -> checkpoints.State:
  return checkpoints.convert_pytorch_checkpoint(str(TORCH_FIXTURE / 'checkpoint.pth'), _config(NCSNPP))


def _rel_err_per_sample(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  return np.linalg.norm((a - b).reshape(len(b), -1), axis=1) / np.linalg.norm(b.reshape(len(b), -1), axis=1)


def test_converted_pytorch_checkpoint_reproduces_its_outputs():
  pytest.importorskip('torch')
  from pds_jax.models import utils as mutils
  state, config = _converted(), _config(NCSNPP)
  model = mutils.get_model(config.model.name)(config=config)
  apply = jax.jit(lambda params, x, labels: model.apply({'params': params}, x, labels, train=False))
  nchw_to_nhwc = lambda a: np.transpose(a, (0, 2, 3, 1))
  x = nchw_to_nhwc(np.load(TORCH_FIXTURE / 'x.npy'))
  labels = np.load(TORCH_FIXTURE / 'labels.npy')
  for params, reference in [(state.params_ema, 'model_out_ema.npy'), (state.params, 'model_out_model.npy')]:
    expected = nchw_to_nhwc(np.load(TORCH_FIXTURE / reference))
    err = _rel_err_per_sample(np.asarray(apply(params, x, labels)), expected)
    assert np.all(err < 1e-5), (reference, err)


def test_converted_pytorch_checkpoint_maps_ema_and_adam_by_rule():
  torch = pytest.importorskip('torch')
  ckpt = torch.load(TORCH_FIXTURE / 'checkpoint.pth', map_location='cpu', weights_only=True)
  state = _converted()
  ema, params = _flat(state.params_ema), _flat(state.params)
  # Only the frozen Fourier W is outside the EMA: it comes from 'model'.
  same = [p for p in ema if np.array_equal(ema[p], params[p])]
  assert same == [('GaussianFourierProjection_0', 'W')]
  np.testing.assert_array_equal(params[same[0]], ckpt['model']['module.all_modules.0.W'].numpy())
  # all_modules.1 is the first Linear (Dense_0, transposed), shadow 0 and Adam state 1.
  np.testing.assert_array_equal(ema['Dense_0', 'kernel'], ckpt['ema']['shadow_params'][0].numpy().T)
  adam = ckpt['optimizer']['state'][1]
  np.testing.assert_array_equal(state.opt_state.grad_ema['Dense_0']['kernel'], adam['exp_avg'].numpy().T)
  np.testing.assert_array_equal(state.opt_state.grad_sq_ema['Dense_0']['kernel'],
                                adam['exp_avg_sq'].numpy().T)
  np.testing.assert_array_equal(state.opt_state.grad_ema['GaussianFourierProjection_0']['W'], 0.)
  # all_modules.3 is the first conv (Conv_0): OIHW -> HWIO.
  np.testing.assert_array_equal(params['Conv_0', 'kernel'],
                                ckpt['model']['module.all_modules.3.weight'].numpy().transpose(2, 3, 1, 0))
  assert int(state.step) == ckpt['step'] == 1 and int(state.opt_state.step) == 1
  assert float(state.ema_rate) == np.float32(ckpt['ema']['decay'])


def test_write_converted_checkpoint_round_trips(tmp_path):
  pytest.importorskip('torch')
  path = checkpoints.write_converted_checkpoint(str(TORCH_FIXTURE / 'checkpoint.pth'), _config(NCSNPP),
                                                str(tmp_path))
  assert path == str(tmp_path / 'checkpoints' / 'checkpoint_1')
  _assert_states_equal(checkpoints.restore_checkpoint(str(tmp_path), _config(NCSNPP)), _converted())


def test_converting_for_another_config_names_the_file(tmp_path):
  pytest.importorskip('torch')
  config = _config(NCSNPP)
  config.model.nf = 16
  pth = str(TORCH_FIXTURE / 'checkpoint.pth')
  with pytest.raises(CheckpointMismatchError, match=pth) as info:
    checkpoints.convert_pytorch_checkpoint(pth, config)
  assert ('mis-shaped  all_modules.3.weight (8, 3, 3, 3) -> Conv_0/kernel: expected (3, 3, 3, 16), '
          'converted (3, 3, 3, 8)') in str(info.value)
  truncated = tmp_path / 'checkpoint.pth'
  truncated.write_bytes((TORCH_FIXTURE / 'checkpoint.pth').read_bytes()[:100000])
  with pytest.raises(CheckpointError, match=str(truncated)):
    checkpoints.convert_pytorch_checkpoint(str(truncated), _config(NCSNPP))
