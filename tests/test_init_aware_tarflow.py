"""Tests of pds_jax/init_aware/tarflow.py: the TarFlow image flow."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pds_jax.init_aware.flows import FlowInit
from pds_jax.init_aware.tarflow import MetaBlock, TarFlow, patchify, unpatchify

TINY = dict(channels=16, num_blocks=2, layers_per_block=1, head_dim=8)


def _random_params(module, x, seed):
  """Random parameters of `module` (numpy draws, no compiled init): LayerNorm scales 1 + 0.1 N(0, 1),
  every other leaf 0.1 N(0, 1) — the zero-initialised output projections become non-zero, so each
  block's (a, b) really depend on the earlier patches."""
  template = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)['params']
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
    lambda path, leaf: jnp.asarray((path[-1].key == 'scale') + 0.1 * rng.standard_normal(leaf.shape),
                                   jnp.float32), template)


@functools.lru_cache(maxsize=None)
def _params(image_shape, patch_size, seed):
  """Parameters do not depend on data_scale, so flows that differ only there share them."""
  module = TarFlow(image_shape=image_shape, patch_size=patch_size, **TINY)
  return _random_params(module, jnp.zeros((1, *image_shape)), seed)


def _flow(image_shape, patch_size=2, data_scale=2., seed=0):
  module = TarFlow(image_shape=image_shape, patch_size=patch_size, data_scale=data_scale, **TINY)
  return module, _params(image_shape, patch_size, seed)


def _apply(module, method):
  return jax.jit(functools.partial(module.apply, method=method))


def test_patchify_layout_and_round_trip():
  x = jnp.arange(4 * 6 * 2, dtype=jnp.float32).reshape(1, 4, 6, 2)
  seq = patchify(x, 2)
  assert seq.shape == (1, 6, 8)
  # patch 4 is row 1, column 1 of the 2 × 3 patch grid: pixels (2:4, 2:4), HWC order inside.
  np.testing.assert_array_equal(seq[0, 4], x[0, 2:4, 2:4].reshape(-1))
  np.testing.assert_array_equal(unpatchify(seq, 2, (4, 6, 2)), x)


@pytest.mark.parametrize('image_shape', [(4, 4, 1), (8, 8, 3)])
def test_inverse_is_exact(image_shape):
  module, params = _flow(image_shape)
  x = 2. * jax.random.normal(jax.random.PRNGKey(3), (4, *image_shape))
  z, _ = _apply(module, 'forward_and_log_det')({'params': params}, x)
  x_back = _apply(module, 'inverse')({'params': params}, z)
  np.testing.assert_allclose(x_back, x, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('image_shape', [(4, 4, 1), (8, 8, 3)])
def test_log_det_matches_jacobian(image_shape):
  module, params = _flow(image_shape)
  x = jax.random.normal(jax.random.PRNGKey(4), (2, *image_shape))
  _, log_det = _apply(module, 'forward_and_log_det')({'params': params}, x)

  @jax.jit
  def jac(xi):
    z_of = lambda v: module.apply({'params': params}, v[None], method='forward_and_log_det')[0].ravel()
    return jax.jacfwd(z_of)(xi).reshape(xi.size, xi.size)

  for xi, ld in zip(x, log_det):
    sign, logabs = np.linalg.slogdet(np.asarray(jac(xi), np.float64))
    assert sign != 0
    np.testing.assert_allclose(ld, logabs, atol=2e-3, rtol=1e-5)


@pytest.mark.parametrize('flip', [False, True])
def test_blocks_are_causal(flip):
  """(a_i, b_i) depend on the patches before i only (in the block's order), so ∂z/∂x is block
  lower-triangular with diagonal blocks exp(−a_i) — upper-triangular in image order when flipped."""
  t, p = 6, 3
  block = MetaBlock(in_channels=p, num_patches=t, flip=flip, channels=16, num_layers=2, head_dim=8,
                    expansion=4)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, t, p))
  params = _random_params(block, x, 1)
  ab = lambda v: jnp.concatenate(block.apply({'params': params}, v[None], method='affine_params'), -1)[0]
  j_ab = np.asarray(jax.jit(jax.jacfwd(ab))(x[0]))  # (t, 2p, t, p) in the block's order
  dep = np.abs(j_ab).sum(axis=(1, 3)) > 0  # dep[i, j]: (a_i, b_i) depends on x_j
  np.testing.assert_array_equal(dep, np.tril(np.ones((t, t), bool), -1))
  j_z = np.asarray(jax.jit(jax.jacfwd(lambda v: block.apply({'params': params}, v[None])[0][0]))(x[0]))
  dep_z = np.abs(j_z).sum(axis=(1, 3)) > 0  # in image order
  order = np.triu if flip else np.tril
  np.testing.assert_array_equal(dep_z, order(np.ones((t, t), bool)))
  for i in range(t):
    assert np.count_nonzero(j_z[i, :, i, :] - np.diag(np.diag(j_z[i, :, i, :]))) == 0


def test_density_integrates_to_one_in_2d():
  """A 2-pixel image (2, 1, 1) with 1 × 1 patches: T = 2 patches of one value, quadrature on a grid."""
  module, params = _flow((2, 1, 1), patch_size=1, data_scale=1.5, seed=5)
  flow = FlowInit(module, params, 0.5)
  h = 0.05
  g = jnp.arange(-8., 8., h) + h / 2
  xx, yy = jnp.meshgrid(g, g)
  dens = jnp.exp(flow.log_prob(jnp.stack([xx.ravel(), yy.ravel()], 1).reshape(-1, 2, 1, 1)))
  mass = float(jnp.sum(dens) * h * h)
  assert abs(mass - 1.) < 1e-2, mass


def test_data_scale_enters_with_its_log_det():
  """log q_s(x) = log q_1(x / s) − D log s with the same parameters."""
  shape = (4, 4, 1)
  module, params = _flow(shape, data_scale=14.)
  unit = TarFlow(image_shape=shape, patch_size=2, data_scale=1., **TINY)
  x = 7. * jax.random.normal(jax.random.PRNGKey(6), (3, *shape))
  lp = _apply(module, 'log_prob')({'params': params}, x)
  lp_unit = _apply(unit, 'log_prob')({'params': params}, x / 14.)
  np.testing.assert_allclose(lp, lp_unit - 16 * math.log(14.), rtol=1e-5)


def test_sampling_shape_and_the_init_flow():
  """At init every proj_out kernel is zero, so each block is a per-channel affine map of its
  patches (bias-only (a, b), position 0 untouched): samples and densities stay finite and shaped."""
  shape = (8, 8, 3)
  module = TarFlow(image_shape=shape, **TINY)
  params = jax.jit(module.init)(jax.random.PRNGKey(0), jnp.zeros((1, *shape)))['params']
  assert not np.any(params['blocks_0']['proj_out']['kernel'])
  flow = FlowInit(module, params, 7.)
  x = flow.sample(jax.random.PRNGKey(1), 5)
  assert x.shape == (5, *shape) and x.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(x)))
  lp = flow.log_prob(x)
  assert lp.shape == (5,) and bool(jnp.all(jnp.isfinite(lp)))


def test_default_architecture_is_the_papers():
  module = TarFlow(image_shape=(64, 64, 3))
  params = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))['params']
  assert list(params) == ['blocks_0'] and module.data_scale == 14.
  block = params['blocks_0']
  assert block['pos_embed'].shape == (1024, 128)
  assert block['proj_in']['kernel'].shape == (12, 128) and block['proj_out']['kernel'].shape == (128, 24)
  assert sorted(k for k in block if k.startswith('layers_')) == [f'layers_{i}' for i in range(8)]
  assert block['layers_0']['attention']['qkv']['kernel'].shape == (128, 384)


@pytest.mark.parametrize('kwargs,match', [(dict(image_shape=(5, 4, 1)), 'multiples of patch_size'),
                                          (dict(image_shape=(4, 4, 1), channels=20, head_dim=8), 'head_dim'),
                                          (dict(image_shape=(4, 4, 1), data_scale=0.), 'data_scale')])
def test_invalid_settings_are_rejected(kwargs, match):
  with pytest.raises(ValueError, match=match):
    TarFlow(**kwargs).init(jax.random.PRNGKey(0), jnp.zeros((1, *kwargs['image_shape'])))


def test_wrong_image_shape_is_named():
  module, params = _flow((4, 4, 1))
  with pytest.raises(ValueError, match=r'\(4, 4, 1\).*got \(2, 4, 4, 3\)'):
    module.apply({'params': params}, jnp.zeros((2, 4, 4, 3)), method='log_prob')
