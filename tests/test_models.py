"""Tests for pds_jax/models: score_sde's parameter trees, outputs and score functions.

Fixtures (../shared/fixtures/score_sde/<name>/) hold legacy checkpoints of score_sde models (nf 8)
and the original code's outputs on a seeded batch; ours must agree to 1e-5 relative per sample.
"""
import json
import pathlib

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util
from hypothesis import assume, given, settings, strategies as st

from configs.default_cifar10_configs import get_default_configs
from pds_jax import sde_lib
from pds_jax.models import layers
from pds_jax.models import up_or_down_sampling as uds
from pds_jax.models import utils as mutils

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'fixtures' / 'score_sde'
FIXTURE_NAMES = ['ve_cifar10_ncsnpp_continuous', 'vp_cifar10_ddpmpp_continuous', 've_ncsnv2_cifar10']
RTOL = 1e-5
# bfloat16 keeps 8 significant bits (relative rounding 2^-9 per op); through ~50 layers the
# float32 outputs are reproduced to ~1-2 % (measured 0.7-1.6 % on the fixtures).
BF16_RTOL = 5e-2


def _to_tuples(obj):
  """JSON lists → tuples, as score_sde's configs write ch_mult, attn_resolutions, fir_kernel."""
  if isinstance(obj, dict):
    return {k: _to_tuples(v) for k, v in obj.items()}
  if isinstance(obj, list):
    return tuple(_to_tuples(v) for v in obj)
  return obj


def _fixture_config(name: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(_to_tuples(json.loads((FIXTURES / name / 'config.json').read_text())))


def _manifest(name: str) -> dict:
  return json.loads((FIXTURES / name / 'manifest.json').read_text())


def _load_params(name: str) -> tuple[dict, dict]:
  """(params_ema, optimizer.target) of the fixture checkpoint, legacy (1, 1, 1, C) GroupNorm leaves → (C,)."""
  state = flax.serialization.msgpack_restore((FIXTURES / name / 'checkpoints' / 'checkpoint_1').read_bytes())
  groupnorm = set(_manifest(name)['groupnorm_params'])

  def convert(tree):
    flat = traverse_util.flatten_dict(tree, sep='/')
    return traverse_util.unflatten_dict({k: v.reshape(-1) if k in groupnorm else v for k, v in flat.items()}, sep='/')

  return convert(state['params_ema']), convert(state['optimizer']['target'])


def _per_sample_rel_err(a, b) -> np.ndarray:
  """‖a − b‖ / ‖b‖ for each item of the batch."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  a, b = a.reshape(len(b), -1), b.reshape(len(b), -1)
  return np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)


def _load(name: str, file: str) -> np.ndarray:
  return np.load(FIXTURES / name / file)


_apply = jax.jit(lambda model_fn, x, labels: model_fn(x, labels)[0])
_score = jax.jit(lambda score_fn, x, t: score_fn(x, t))


@pytest.mark.parametrize('name', FIXTURE_NAMES)
def test_init_tree_matches_manifest(name):
  config = _fixture_config(name)
  params = jax.eval_shape(lambda rng: mutils.init_model(rng, config)[2], jax.random.PRNGKey(0))
  actual = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(params, sep='/').items()}
  manifest = _manifest(name)
  groupnorm = set(manifest['groupnorm_params'])
  expected = {k: (v[-1],) if k in groupnorm else tuple(v) for k, v in manifest['params'].items()}
  assert sorted(set(expected) - set(actual)) == [], 'missing parameters'
  assert sorted(set(actual) - set(expected)) == [], 'extra parameters'
  wrong = {k: (expected[k], actual[k]) for k in expected if expected[k] != actual[k]}
  assert not wrong, f'{name}: path: (expected, actual) shapes {wrong}'
  assert sum(int(np.prod(s)) for s in actual.values()) == manifest['param_count']


@pytest.mark.parametrize('name', FIXTURE_NAMES)
def test_fixture_outputs_and_score(name, monkeypatch):
  config = _fixture_config(name)
  model = mutils.get_model(config.model.name)(config=config)
  params_ema, params = _load_params(name)
  x, t, labels = _load(name, 'x.npy'), _load(name, 't.npy'), _load(name, 'labels.npy')
  sde, _ = sde_lib.get_sde(config)

  for tree, file in [(params_ema, 'model_out_ema.npy'), (params, 'model_out_params.npy')]:
    out = _apply(mutils.get_model_fn(model, tree, {}), x, labels)
    assert out.dtype == jnp.float32
    err = _per_sample_rel_err(out, _load(name, file))
    assert err.max() < RTOL, f'{name} {file}: per-sample relative errors {err}'

  score_fn = mutils.get_score_fn(sde, model, params_ema, {}, continuous=config.training.continuous)
  err = _per_sample_rel_err(_score(score_fn, x, t), _load(name, 'score_ema.npy'))
  assert err.max() < RTOL, f'{name} score_ema: per-sample relative errors {err}'

  # The labels get_score_fn feeds the network, recorded without running it.
  fed = []
  monkeypatch.setattr(mutils, '_apply_model', lambda p, s, x, labels, rng=None, **_: (fed.append(labels), (x, s))[1])
  score_fn(x, t)
  assert fed[0].dtype == labels.dtype
  np.testing.assert_allclose(fed[0], labels, rtol=1e-6, err_msg=f'{name}: noise labels')


@pytest.mark.parametrize('name', ['ve_cifar10_ncsnpp_continuous', 've_ncsnv2_cifar10'])
def test_bfloat16_score_close_to_float32(name):
  config = _fixture_config(name)
  model = mutils.get_model(config.model.name)(config=config)
  params_ema, _ = _load_params(name)
  sde, _ = sde_lib.get_sde(config)
  score_fn = mutils.get_score_fn(sde, model, params_ema, {}, continuous=config.training.continuous,
                                 dtype='bfloat16')
  leaves = traverse_util.flatten_dict(score_fn.args[0], sep='/')
  dtypes = {v.dtype for k, v in leaves.items() if not k.startswith('GaussianFourierProjection')}
  assert dtypes == {jnp.dtype('bfloat16')}
  score = _score(score_fn, _load(name, 'x.npy'), _load(name, 't.npy'))
  assert score.dtype == jnp.float32 and bool(jnp.isfinite(score).all())
  err = _per_sample_rel_err(score, _load(name, 'score_ema.npy'))
  assert err.max() < BF16_RTOL, f'{name} bfloat16 score: per-sample relative errors {err}'
  assert err.min() > 1e-4, 'the bfloat16 path computed in float32'


def test_cast_params_keeps_fourier_frequencies_and_rejects_unknown_dtypes():
  params = {'GaussianFourierProjection_0': {'W': jnp.ones(4)},
            'Conv_0': {'kernel': jnp.ones((3,)), 'n': jnp.ones(2, jnp.int32)}}
  cast = mutils.cast_params(params, 'float16')
  assert cast['GaussianFourierProjection_0']['W'].dtype == jnp.float32
  assert cast['Conv_0']['kernel'].dtype == jnp.float16 and cast['Conv_0']['n'].dtype == jnp.int32
  with pytest.raises(ValueError, match='config.eval.dtype'):
    mutils.get_model_fn(None, params, {}, dtype='int8')


def test_score_fn_is_a_pytree_of_params_sharing_its_compilation():
  config = _fixture_config('ve_ncsnv2_cifar10')
  model = mutils.get_model(config.model.name)(config=config)
  params_ema, params = _load_params('ve_ncsnv2_cifar10')
  sde, _ = sde_lib.get_sde(config)
  fns = [mutils.get_score_fn(sde, model, p, {}) for p in (params_ema, params)]
  assert isinstance(fns[0], jax.tree_util.Partial)
  assert len(jax.tree_util.tree_leaves(fns[0])) == len(jax.tree_util.tree_leaves(params_ema))
  assert jax.tree_util.tree_structure(fns[0]) == jax.tree_util.tree_structure(fns[1])
  other_sde, _ = sde_lib.get_sde(config)
  assert jax.tree_util.tree_structure(mutils.get_score_fn(other_sde, model, params, {})) != \
      jax.tree_util.tree_structure(fns[1])


def _ones_model(p, s, x, labels, rng=None, **_):
  """Stands in for the network: output 1 everywhere, records nothing."""
  return jnp.ones_like(x), s


@pytest.mark.parametrize('sde_name, continuous', [('vesde', False), ('vpsde', False), ('vpsde', True),
                                                  ('subvpsde', True), ('subvpsde', False)])
def test_score_labels_and_scaling(sde_name, continuous, monkeypatch):
  """score_sde's noise labels and output scaling (METHOD §1) for the SDEs the fixtures miss."""
  config = get_default_configs()
  config.training.sde, config.model.num_scales = sde_name, 10
  sde, _ = sde_lib.get_sde(config)
  x, t = jnp.zeros((3, 2, 2, 1)), jnp.array([1., 0.5, 1e-3])
  fed = []
  monkeypatch.setattr(mutils, '_apply_model', lambda *a, **k: (fed.append(a[3]), _ones_model(*a, **k))[1])
  score = mutils.get_score_fn(sde, None, {}, {}, continuous=continuous)(x, t)
  if sde_name == 'vesde':
    np.testing.assert_array_equal(fed[0], [0, 4, 9])  # round((1 - t) (N - 1))
    np.testing.assert_array_equal(score, 1.)
  elif continuous or sde_name == 'subvpsde':
    np.testing.assert_allclose(fed[0], t * 999)
    np.testing.assert_allclose(score[:, 0, 0, 0], -1. / sde.marginal_prob(x, t)[1], rtol=1e-6)
  else:
    np.testing.assert_allclose(fed[0], t * 9)  # fed as float, as in score_sde
    np.testing.assert_allclose(score[:, 0, 0, 0], -1. / sde.sqrt_1m_alphas_cumprod[np.array([9, 4, 0])], rtol=1e-6)


def _tiny_config(name: str, **model) -> ml_collections.ConfigDict:
  """A small config of model `name` on 8×8 images; `model` overrides config.model fields."""
  config = get_default_configs()
  config.data.image_size, config.data.num_channels = 8, 3
  config.model.update(name=name, nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                      resamp_with_conv=True, conditional=True, normalization='GroupNorm', nonlinearity='swish',
                      scale_by_sigma=False, interpolation='bilinear')
  config.model.update(fir=True, fir_kernel=(1, 3, 3, 1), skip_rescale=True, resblock_type='biggan',
                      progressive='none', progressive_input='none', progressive_combine='sum',
                      init_scale=0., fourier_scale=16, embedding_type='fourier')
  config.model.update(model)
  return config


TINY_CONFIGS = {
    'ddpm': dict(name='ddpm', nf=32, embedding_type='positional'),  # GroupNorm with 32 groups
    'ddpm_unconditional_ve': dict(name='ddpm', nf=32, conditional=False, scale_by_sigma=True),
    'ncsnpp_output_input_skip': dict(name='ncsnpp', progressive='output_skip', progressive_input='input_skip',
                                     scale_by_sigma=True),
    'ncsnpp_residual_cat': dict(name='ncsnpp', progressive='residual', progressive_input='residual',
                                progressive_combine='cat', skip_rescale=False),
    'ncsnpp_ddpm_block_positional_nofir': dict(name='ncsnpp', resblock_type='ddpm', embedding_type='positional',
                                               fir=False, progressive='output_skip', progressive_input='input_skip',
                                               progressive_combine='cat'),
    'ncsnpp_ddpm_block_fir_residual': dict(name='ncsnpp', resblock_type='ddpm', progressive='residual',
                                           progressive_input='residual', nonlinearity='elu'),
    'ncsn': dict(name='ncsn', normalization='InstanceNorm++', nonlinearity='elu'),
    'ncsnv2_64': dict(name='ncsnv2_64', normalization='InstanceNorm++', nonlinearity='elu', scale_by_sigma=True,
                      interpolation='nearest_neighbor'),
    'ncsnv2_128': dict(name='ncsnv2_128', normalization='InstanceNorm', nonlinearity='elu', nf=4),
    'ncsnv2_256': dict(name='ncsnv2_256', normalization='VarianceNorm', nonlinearity='relu', nf=4),
}


def _random_params(config, seed: int = 0):
  """The model of `config` with N(0, 0.1²) parameters in score_sde's tree (jitted random init compiles slowly)."""
  shapes = jax.eval_shape(lambda rng: mutils.init_model(rng, config)[2], jax.random.PRNGKey(0))
  rng = np.random.RandomState(seed)
  model = mutils.get_model(config.model.name)(config=config)
  return model, jax.tree_util.tree_map(lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype), shapes)


@pytest.mark.parametrize('variant', sorted(TINY_CONFIGS))
def test_tiny_models_keep_the_input_shape(variant):
  config = _tiny_config(**TINY_CONFIGS[variant])
  model, params = _random_params(config)
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 8, 8, 3))
  if config.model.name == 'ncsnpp' and config.model.embedding_type == 'fourier':
    labels = jnp.array([0.5, 20.])  # noise levels σ
  else:
    labels = jnp.array([0, config.model.num_scales - 1])  # time steps / noise-level indices
  out = _apply(mutils.get_model_fn(model, params, {}), x, labels)
  assert out.shape == x.shape and out.dtype == jnp.float32
  assert bool(jnp.isfinite(out).all()) and float(jnp.abs(out).max()) > 0


def test_dropout_in_train_mode():
  config = _tiny_config('ncsnpp', dropout=0.5)
  model, params = _random_params(config)
  x, labels = jnp.ones((1, 8, 8, 3)), jnp.array([1.])
  model_fn = mutils.get_model_fn(model, params, {}, train=True)
  train_apply = jax.jit(lambda f, x, labels, rng: f(x, labels, rng)[0])
  a, b = (train_apply(model_fn, x, labels, jax.random.PRNGKey(i)) for i in (0, 1))
  c = _apply(mutils.get_model_fn(model, params, {}), x, labels)
  assert not np.allclose(a, b) and not np.allclose(a, c)


def _bound(scale: float, fan: float) -> float:
  """Half-width of a variance-scaling uniform initialiser."""
  return float(np.sqrt(3 * scale / fan))


def test_init_model_uses_score_sde_initialisers():
  config = _tiny_config('ncsnpp', progressive_input='residual', nf=16)
  # jitted (so the persistent compilation cache applies) with an rbg key: threefry compiles slowly on CPU
  states, params = jax.jit(lambda rng: mutils.init_model(rng, config)[1:])(jax.random.key(0, impl='rbg'))
  assert states == {}
  flat = traverse_util.flatten_dict(params, sep='/')
  _, expected = _random_params(config)
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(expected)
  for path, value in flat.items():
    value = np.asarray(value)
    if path.split('/')[-2].startswith('GroupNorm'):  # flax GroupNorm: scale 1, bias 0
      np.testing.assert_array_equal(value, 1. if path.endswith('scale') else 0., err_msg=path)
    elif path.endswith(('/bias', '/b')):  # DDPM initialisation: zero biases
      np.testing.assert_array_equal(value, 0., err_msg=path)
  kernel = np.asarray(flat['Conv_0/kernel'])  # default_init(1): fan_avg uniform
  bound = _bound(1., 9 * (3 + 16) / 2)
  assert bound / 2 < np.abs(kernel).max() <= bound
  last = max((p for p in flat if p.startswith('Conv_') and p.endswith('kernel')), key=lambda p: int(p[5:-7]))
  assert np.abs(np.asarray(flat[last])).max() <= _bound(1e-10, 9 * (16 + 3) / 2)  # init_scale 0 → scale 1e-10
  nin = np.asarray(flat['AttnBlockpp_0/NIN_0/W'])  # NIN: default_init(0.1)
  assert _bound(0.1, 32) / 2 < np.abs(nin).max() <= _bound(0.1, 32)
  assert np.abs(np.asarray(flat['AttnBlockpp_0/NIN_3/W'])).max() <= _bound(1e-10, 32)
  assert np.asarray(flat['Downsample_0/Conv2d_0/weight']).shape == (3, 3, 3, 16)


def test_ncsn_conv_initialisation():
  """NCSN convs initialise like PyTorch: kernel and bias uniform within ±1/sqrt(fan_in)."""

  class Net(flax.linen.Module):
    @flax.linen.compact
    def __call__(self, x):
      return layers.ncsn_conv3x3(x, 64)

  params = Net().init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 16)))['params']['Conv_0']
  bound = 1 / np.sqrt(9 * 16)
  for leaf in (params['kernel'], params['bias']):
    assert bound * 0.8 < np.abs(np.asarray(leaf)).max() <= bound


def _upfirdn_reference(x, k, up, down, pad0, pad1):
  """scipy-style upfirdn of StyleGAN2 in numpy: zero insertion, pad/crop, convolution, decimation."""
  B, H, W, C = x.shape
  y = np.zeros((B, H * up, W * up, C), x.dtype)
  y[:, ::up, ::up] = x
  y = np.pad(y, [(0, 0), (max(pad0, 0), max(pad1, 0)), (max(pad0, 0), max(pad1, 0)), (0, 0)])
  y = y[:, max(-pad0, 0):y.shape[1] - max(-pad1, 0), max(-pad0, 0):y.shape[2] - max(-pad1, 0)]
  kh = k.shape[0]
  out = np.zeros((B, y.shape[1] - kh + 1, y.shape[2] - kh + 1, C))
  for i in range(kh):
    for j in range(kh):
      out += k[kh - 1 - i, kh - 1 - j] * y[:, i:i + out.shape[1], j:j + out.shape[2]]
  return out[:, ::down, ::down]


def _upfirdn_grouped_conv(x, k, up, down, pad0, pad1):
  """The former `upfirdn_2d` (score_sde's formulation): zeros inserted by interior padding, then a
  depthwise `conv_general_dilated` (feature_group_count = C) with stride `down`."""
  C = x.shape[-1]
  spatial = (pad0, pad1 + up - 1, up - 1)
  x = jax.lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), spatial, spatial, (0, 0, 0)])
  w = jnp.asarray(np.tile(k[::-1, ::-1, None, None], (1, 1, 1, C)), dtype=x.dtype)
  return jax.lax.conv_general_dilated(x, w, (down, down), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                      feature_group_count=C)


@pytest.mark.parametrize('up, down, pad0, pad1',
                         [(1, 1, 1, 2), (2, 1, 2, 1), (1, 2, 1, 1), (2, 1, -1, 0), (1, 2, 2, -1)])
def test_upfirdn_2d_matches_reference(up, down, pad0, pad1):
  rng = np.random.RandomState(0)
  x = rng.randn(2, 6, 6, 3).astype(np.float32)
  k = rng.rand(4, 4).astype(np.float32)
  out = uds.upfirdn_2d(jnp.asarray(x), k, up=up, down=down, pad0=pad0, pad1=pad1)
  np.testing.assert_allclose(out, _upfirdn_reference(x, k, up, down, pad0, pad1), rtol=1e-5, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(b=st.integers(1, 2), h=st.integers(1, 7), w=st.integers(1, 7), c=st.integers(1, 3), kh=st.integers(1, 5),
       kw=st.integers(1, 5), up_down=st.sampled_from([(1, 1), (2, 1), (3, 1), (1, 2), (1, 3)]),
       pad0=st.integers(-2, 4), pad1=st.integers(-2, 4), seed=st.integers(0, 2 ** 16))
def test_polyphase_upfirdn_2d_equals_zero_insertion_and_grouped_conv(b, h, w, c, kh, kw, up_down, pad0, pad1, seed):
  """The polyphase upfirdn_2d reproduces the former op to float32 rounding, any shape, kernel and padding."""
  up, down = up_down
  assume(min(h, w) * up + pad0 + pad1 >= max(kh, kw))  # a non-empty output
  rng = np.random.RandomState(seed)
  x = jnp.asarray(rng.randn(b, h, w, c), jnp.float32)
  k = rng.rand(kh, kw).astype(np.float32)
  out = uds.upfirdn_2d(x, k, up=up, down=down, pad0=pad0, pad1=pad1)
  expected = _upfirdn_grouped_conv(x, k, up, down, pad0, pad1)
  assert out.shape == expected.shape and out.dtype == x.dtype
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * float(np.abs(k).sum()))


def test_upfirdn_2d_rejects_up_and_down_together():
  with pytest.raises(ValueError, match='must be 1'):
    uds.upfirdn_2d(jnp.ones((1, 4, 4, 1)), np.ones((2, 2), np.float32), up=2, down=2)


def test_fir_resampling_identities():
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(2, 8, 8, 3), jnp.float32)
  w = jnp.asarray(rng.randn(3, 3, 3, 4), jnp.float32)
  # box filters are nearest-neighbour upsampling and mean pooling
  np.testing.assert_allclose(uds.upsample_2d(x, [1, 1]), uds.naive_upsample_2d(x), atol=1e-6)
  np.testing.assert_allclose(uds.downsample_2d(x, [1, 1]), uds.naive_downsample_2d(x), atol=1e-6)
  # constants are kept by the normalised FIR filters, away from the zero padding
  ones = jnp.ones((1, 8, 8, 1))
  np.testing.assert_allclose(uds.upsample_2d(ones, [1, 3, 3, 1])[:, 2:-2, 2:-2], 1., rtol=1e-6)
  np.testing.assert_allclose(uds.downsample_2d(ones, [1, 3, 3, 1])[:, 1:-1, 1:-1], 1., rtol=1e-6)
  # the fused convolutions equal resampling and convolution away from the borders
  conv = lambda h: jax.lax.conv_general_dilated(h, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(uds.upsample_conv_2d(x, w, [1, 3, 3, 1])[:, 2:-2, 2:-2],
                             conv(uds.upsample_2d(x, [1, 3, 3, 1]))[:, 2:-2, 2:-2], atol=1e-4)
  np.testing.assert_allclose(uds.conv_downsample_2d(x, w, [1, 3, 3, 1])[:, 1:-1, 1:-1],
                             uds.downsample_2d(conv(x), [1, 3, 3, 1])[:, 1:-1, 1:-1], atol=1e-4)


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9), groups=st.sampled_from([1, 2, 4, 8]),
       per_group=st.integers(1, 4), offset=st.floats(-5., 5.), bf16=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_group_norm_equals_flax_group_norm(b, h, w, groups, per_group, offset, bf16, seed):
  """layers.GroupNorm is flax's nn.GroupNorm (parameters, float32 statistics, output dtype) to rounding."""
  rng = np.random.RandomState(seed)
  dtype = jnp.bfloat16 if bf16 else jnp.float32
  x = jnp.asarray(offset + 2 * rng.randn(b, h, w, groups * per_group), dtype)
  ours, theirs = layers.GroupNorm(num_groups=groups), flax.linen.GroupNorm(num_groups=groups)
  params = theirs.init(jax.random.PRNGKey(0), x)
  assert jax.tree_util.tree_structure(ours.init(jax.random.PRNGKey(0), x)) == jax.tree_util.tree_structure(params)
  params = jax.tree_util.tree_map(lambda p: jnp.asarray(rng.randn(*p.shape), dtype), params)
  out, expected = ours.apply(params, x), theirs.apply(params, x)
  assert out.dtype == expected.dtype == dtype
  tol = 2 ** -7 if bf16 else 2e-5  # bfloat16: one rounding of the output apart
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(expected, np.float32),
                             rtol=tol, atol=tol * float(np.abs(np.asarray(params['params']['bias'], np.float32)).max() + 1))


def test_registry_and_noise_schedules():
  assert {'ncsnpp', 'ddpm', 'ncsn', 'ncsnv2_64', 'ncsnv2_128', 'ncsnv2_256'} <= set(mutils._MODELS)
  with pytest.raises(ValueError, match='not a registered model'):
    mutils.get_model('unet')
  config = get_default_configs()
  sigmas = mutils.get_sigmas(config)
  assert sigmas.shape == (1000,) and sigmas.dtype == jnp.float32
  np.testing.assert_allclose([sigmas[0], sigmas[-1]], [50., 0.01], rtol=1e-5)
  np.testing.assert_allclose(np.diff(np.log(sigmas)), np.log(0.01 / 50) / 999, rtol=1e-3)
  ddpm = mutils.get_ddpm_params(config)
  np.testing.assert_allclose(ddpm['betas'][[0, -1]], [1e-4, 0.02])
  np.testing.assert_allclose(ddpm['sqrt_1m_alphas_cumprod'] ** 2 + ddpm['alphas_cumprod'], 1.)
  assert (ddpm['beta_min'], ddpm['beta_max']) == pytest.approx((0.0999, 19.98))
