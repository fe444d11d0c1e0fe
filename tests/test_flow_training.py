"""Tests of pds_jax/init_aware/flow_training.py: MLE fitting, the two noise regimes, checkpoints."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats
from scipy.special import logsumexp

from pds_jax.init_aware import flow_training as ft
from pds_jax.init_aware.flows import CouplingFlow, FlowInit
from pds_jax.init_aware.tarflow import TarFlow

# A 2-D Gaussian mixture and its exact noised density p_T = Σ_k w_k N(μ_k, Σ_k + σ_T² I).
MEANS = np.array([[-1.2, -0.8], [1., 1.], [1.3, -1.1]])
COVS = np.array([[[0.08, 0.03], [0.03, 0.05]], [[0.05, -0.02], [-0.02, 0.1]], [[0.06, 0.], [0., 0.06]]])
WEIGHTS = np.array([0.5, 0.3, 0.2])
SIGMA_T = 0.5


def _mixture(rng: np.random.Generator, n: int) -> np.ndarray:
  k = rng.choice(len(WEIGHTS), size=n, p=WEIGHTS)
  chol = np.linalg.cholesky(COVS)
  return (MEANS[k] + np.einsum('nij,nj->ni', chol[k], rng.standard_normal((n, 2)))).astype(np.float32)


def _log_p_T(x: np.ndarray, sigma: float) -> np.ndarray:
  comps = [np.log(w) + scipy.stats.multivariate_normal(m, c + sigma ** 2 * np.eye(2)).logpdf(x)
           for w, m, c in zip(WEIGHTS, MEANS, COVS)]
  return logsumexp(np.stack(comps), axis=0)


def _coupling_flow(**kw) -> CouplingFlow:
  return ft.build_flow('coupling', (2,), SIGMA_T, **kw)


def test_mle_lowers_the_nll_and_beats_the_uninformed_init():
  rng = np.random.default_rng(0)
  data, val = _mixture(rng, 2000), _mixture(rng, 1000)
  flow, history = ft.fit_flow(_coupling_flow(), data, SIGMA_T, jax.random.PRNGKey(0), epochs=150,
                              batch_size=500, regime='dynamic', val_data=val, val_every=75, progress=False)
  assert history['val_epoch'] == [0, 75, 150] and len(history['train_nll']) == 150
  assert history['val_nll'][-1] < history['val_nll'][0] - 0.5
  # Monte-Carlo KL(p_T ‖ q) = E_{p_T}[log p_T − log q] against the analytic noised mixture.
  x_T = _mixture(rng, 20000) + SIGMA_T * rng.standard_normal((20000, 2)).astype(np.float32)
  log_p = _log_p_T(x_T, SIGMA_T)
  kl_flow = float(np.mean(log_p - np.asarray(flow.log_prob(jnp.asarray(x_T)), np.float64)))
  kl_gauss = float(np.mean(log_p - scipy.stats.norm(scale=SIGMA_T).logpdf(x_T).sum(axis=1)))
  assert kl_flow < 0.1 and kl_flow < kl_gauss / 10, (kl_flow, kl_gauss)
  # The validation NLL per dimension approaches the entropy of p_T per dimension.
  assert abs(history['val_nll'][-1] - (-log_p.mean() / 2)) < 0.1


def test_minibatch_regimes():
  data = jnp.arange(12., dtype=jnp.float32).reshape(6, 2)
  noised = ft.noised_training_set(data, 0.5, jax.random.PRNGKey(0))
  idx = jnp.array([4, 1, 2])
  k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
  fixed = [ft.minibatch(noised, idx, k, 0.5, 'fixed') for k in (k1, k2)]
  np.testing.assert_array_equal(fixed[0], fixed[1])
  np.testing.assert_array_equal(fixed[0], noised[idx])
  dynamic = [ft.minibatch(data, idx, k, 0.5, 'dynamic') for k in (k1, k2)]
  assert not np.allclose(dynamic[0], dynamic[1])
  big = jnp.zeros((20000, 2))
  eps = ft.minibatch(big, jnp.arange(20000), k1, 0.5, 'dynamic')
  assert abs(float(jnp.std(eps)) - 0.5) < 0.01
  with pytest.raises(ValueError, match='regime'):
    ft.minibatch(data, idx, k1, 0.5, 'annealed')


@pytest.mark.parametrize('regime', ['fixed', 'dynamic'])
def test_fixed_regime_reuses_its_noise(regime):
  """With frozen parameters and one full batch per epoch the epoch loss is the NLL of the epoch's
  noised set: the same every epoch for 'fixed', a new draw every epoch for 'dynamic'."""
  data = _mixture(np.random.default_rng(1), 256)
  seen = []
  _, history = ft.fit_flow(_coupling_flow(), data, SIGMA_T, jax.random.PRNGKey(3), epochs=3,
                           batch_size=256, regime=regime, optimizer=optax.set_to_zero(), progress=False,
                           callback=lambda epoch, flow, h: seen.append((epoch, len(h['train_nll']))))
  assert seen == [(1, 1), (2, 2), (3, 3)]
  spread = np.ptp(history['train_nll'])
  if regime == 'fixed':
    assert spread < 1e-5, history['train_nll']
  else:
    assert spread > 1e-3, history['train_nll']


def test_default_optimizers_first_step():
  """Adam's first step is −lr·g/(|g| + ε); AdamW adds −lr·wd·θ (decoupled weight decay)."""
  params = {'w': jnp.array([1., -2., 3.])}
  grads = {'w': jnp.array([0.5, -4., 1e-3])}
  for flow_type, lr, wd in (('coupling', 1e-3, 0.), ('tarflow', 3e-4, 1e-4)):
    opt = ft.default_optimizer(flow_type)
    updates, _ = opt.update(grads, opt.init(params), params)
    expected = -lr * (grads['w'] / (jnp.abs(grads['w']) + 1e-8) + wd * params['w'])
    np.testing.assert_allclose(updates['w'], expected, rtol=1e-5)
  with pytest.raises(ValueError, match='unknown flow type'):
    ft.default_optimizer('glow')


def test_tarflow_fit_lowers_the_nll():
  rng = np.random.default_rng(2)
  patterns = rng.uniform(-1, 1, size=(2, 4, 4, 1)).astype(np.float32)
  data = patterns[rng.integers(0, 2, size=128)]
  module = ft.build_flow('tarflow', (4, 4, 1), 0.3, channels=16, num_blocks=2, layers_per_block=1,
                         head_dim=8, data_scale=0.6)
  flow, history = ft.fit_flow(module, data, 0.3, jax.random.PRNGKey(0), epochs=4, batch_size=32,
                              regime='fixed', optimizer=ft.default_optimizer('tarflow', 3e-3),
                              val_data=data[:64], val_every=4, progress=False)
  assert history['train_nll'][-1] < history['train_nll'][0]
  assert history['val_nll'][-1] < history['val_nll'][0] - 0.05
  assert isinstance(flow.module, TarFlow) and flow.sigma_t == 0.3


def test_fit_flow_rejects_bad_inputs():
  with pytest.raises(ValueError, match=r'\(n, \*\(2,\)\).*\(5, 3\)'):
    ft.fit_flow(_coupling_flow(), np.zeros((5, 3)), SIGMA_T, jax.random.PRNGKey(0), epochs=1, batch_size=2)
  with pytest.raises(ValueError, match='regime'):
    ft.fit_flow(_coupling_flow(), np.zeros((5, 2)), SIGMA_T, jax.random.PRNGKey(0), epochs=1,
                batch_size=2, regime='fix')


def test_build_flow():
  module = ft.build_flow('coupling', (3,), 0.8, base='student_t', nn_width=8)
  assert isinstance(module, CouplingFlow) and module.base_scale == 0.8 and module.dim == 3
  assert ft.flow_type_of(module) == 'coupling'
  assert ft.build_flow('tarflow', [8, 8, 3], 7.).data_shape == (8, 8, 3)
  with pytest.raises(ValueError, match='data_shape'):
    ft.build_flow('coupling', (8, 8, 3), 1.)
  with pytest.raises(ValueError, match='data_shape'):
    ft.build_flow('tarflow', (12,), 1.)


# --- checkpoints -----------------------------------------------------------------------------------

def _small_flows():
  coupling = ft.build_flow('coupling', (3,), 0.7, base='student_t', nn_width=8, nn_depth=2)
  tarflow = ft.build_flow('tarflow', (4, 4, 2), 7., channels=16, num_blocks=2, layers_per_block=1,
                          head_dim=8)
  return [FlowInit(m, ft.init_params(m, jax.random.PRNGKey(i)), s)
          for i, (m, s) in enumerate(((coupling, 0.7), (tarflow, 7.)))]


@pytest.mark.parametrize('which', [0, 1])
def test_checkpoint_round_trip(tmp_path, which):
  flow = _small_flows()[which]
  path = str(tmp_path / 'flow.msgpack')
  history = {'train_nll': [3., 2.5], 'val_epoch': [0, 2], 'val_nll': [3.1, 2.6]}
  ft.save_flow(path, flow, history)
  ft.save_flow(path, flow, history)  # overwriting leaves no temporary file behind
  assert os.listdir(tmp_path) == ['flow.msgpack']
  loaded = ft.load_flow(path, expected_shape=flow.module.data_shape)
  assert loaded.module == flow.module and loaded.sigma_t == flow.sigma_t
  for a, b in zip(jax.tree_util.tree_leaves(loaded.params), jax.tree_util.tree_leaves(flow.params)):
    np.testing.assert_array_equal(a, b)
  key = jax.random.PRNGKey(5)
  np.testing.assert_array_equal(loaded.sample(key, 3), flow.sample(key, 3))
  x = flow.sample(key, 3)
  np.testing.assert_array_equal(loaded.log_prob(x), flow.log_prob(x))
  assert ft.load_history(path) == history


def test_load_errors_name_the_file(tmp_path):
  missing = str(tmp_path / 'nope.msgpack')
  with pytest.raises(ft.FlowCheckpointNotFoundError, match='nope.msgpack'):
    ft.load_flow(missing)
  with pytest.raises(FileNotFoundError):
    ft.load_flow(missing)

  flow = _small_flows()[0]
  good = str(tmp_path / 'good.msgpack')
  ft.save_flow(good, flow)
  with pytest.raises(ft.FlowShapeMismatchError, match=r'good\.msgpack.*\(3,\).*expected \(2,\)'):
    ft.load_flow(good, expected_shape=(2,))

  blob = open(good, 'rb').read()
  truncated = str(tmp_path / 'truncated.msgpack')
  open(truncated, 'wb').write(blob[:len(blob) // 2])
  garbage = str(tmp_path / 'garbage.msgpack')
  open(garbage, 'wb').write(b'\x00not a flow\xff' * 10)
  for bad in (truncated, garbage):
    with pytest.raises(ft.FlowCheckpointError, match=os.path.basename(bad)):
      ft.load_flow(bad)

  from flax import serialization
  foreign = str(tmp_path / 'foreign.msgpack')
  open(foreign, 'wb').write(serialization.msgpack_serialize({'params': {'w': np.zeros(3)}}))
  with pytest.raises(ft.FlowCheckpointError, match='foreign.msgpack'):
    ft.load_flow(foreign)

  # A header whose hyper-parameters no longer match the stored parameters.
  payload = serialization.msgpack_restore(blob)
  payload['header'] = payload['header'].replace('"nn_width": 8', '"nn_width": 9')
  edited = str(tmp_path / 'edited.msgpack')
  open(edited, 'wb').write(serialization.msgpack_serialize(payload))
  with pytest.raises(ft.FlowCheckpointError, match=r'edited\.msgpack.*expected \(9,\), stored \(8,\)'):
    ft.load_flow(edited)
