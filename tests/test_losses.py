"""Losses and the optimizer (pds_jax/losses.py) against hand-written references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.patches.natural_patches_ncsnpp_small import get_config
from pds_jax import checkpoints, losses, sde_lib
from pds_jax.models import utils as mutils


def tiny_config():
  config = get_config()
  config.data.image_size = 8
  config.model.nf = 8
  config.model.ch_mult = (1, 2)
  config.model.attn_resolutions = (4,)
  config.model.num_scales = 10
  config.training.batch_size = 4
  config.optim.warmup = 4
  return config


def _state(config, params, model_state=None):
  return checkpoints.State(step=jnp.zeros((), jnp.int32), params=params, params_ema=params,
                           model_state=model_state or {}, opt_state=losses.init_adam_state(params),
                           lr=jnp.float32(config.optim.lr), ema_rate=jnp.float32(config.model.ema_rate),
                           rng=jax.random.PRNGKey(0))


def test_optimizer_matches_flax_adam_with_warmup_and_clipping():
  config = tiny_config()
  config.optim.grad_clip = 1.
  del config.optim['weight_decay']  # an int in score_sde's defaults
  config.optim.weight_decay = 0.01
  params = {'w': jnp.array([1., -2., 3.]), 'b': jnp.array(0.5)}
  grads = [{'w': jnp.array([3., 0., -4.]), 'b': jnp.array(0.1)}, {'w': jnp.array([.1, .2, .3]), 'b': jnp.array(-.2)}]
  optimize = losses.optimization_manager(config)
  state = _state(config, params)
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  for step, grad in enumerate(grads):
    state = optimize(state, grad).replace(step=state.step + 1)
    g = {k: np.asarray(x, np.float64) for k, x in grad.items()}
    norm = np.sqrt(sum(np.sum(x ** 2) for x in g.values()))
    g = {k: x * min(1. / (norm + 1e-6), 1.) for k, x in g.items()}
    lr = config.optim.lr * min(step / config.optim.warmup, 1.)
    for k in p:  # flax.optim.Adam: bias-corrected moments, decoupled weight decay
      m[k] = 0.9 * m[k] + 0.1 * g[k]
      v[k] = 0.999 * v[k] + 0.001 * g[k] ** 2
      update = (m[k] / (1 - 0.9 ** (step + 1))) / (np.sqrt(v[k] / (1 - 0.999 ** (step + 1))) + 1e-8)
      p[k] = p[k] - lr * (update + 0.01 * p[k])
  for k in p:
    np.testing.assert_allclose(state.params[k], p[k], rtol=1e-5, atol=1e-7)
  assert int(state.opt_state.step) == 2


def test_continuous_loss_of_the_exact_score_is_its_closed_form():
  """Data N(0, s² I) has the exact score −x_t / (s² + σ²), for which σ s(x_t) + z =
  (s² z − σ x) / (s² + σ²): the per-dimension loss is E_t[s² / (s² + σ²(t))]."""
  sde = sde_lib.VESDE(0.01, 5., 10)
  s = 0.7

  def score(x, t, rng=None):
    std = sde.marginal_prob(jnp.zeros_like(x), t)[1]
    return -x / (s ** 2 + std[:, None, None, None] ** 2), {}

  monkey = pytest.MonkeyPatch()
  monkey.setattr(mutils, 'get_score_fn', lambda *a, **k: score)
  try:
    loss_fn = losses.get_sde_loss_fn(sde, None, train=True, reduce_mean=True)
    x = s * jax.random.normal(jax.random.PRNGKey(1), (4096, 2, 2, 1))
    loss, _ = loss_fn(jax.random.PRNGKey(2), None, {}, x)
  finally:
    monkey.undo()
  t = np.random.default_rng(0).uniform(1e-5, 1., 200000)
  sigma = 0.01 * (5. / 0.01) ** t
  expected = np.mean(s ** 2 / (s ** 2 + sigma ** 2))
  assert abs(float(loss) - expected) < 0.02 * expected + 0.005


@pytest.mark.parametrize('sde_name,continuous', [pytest.param('vesde', True, marks=pytest.mark.slow),  # ~60 CPU-s
                                               ('vesde', False), ('vpsde', False)])
def test_training_steps_lower_the_loss(sde_name, continuous):
  config = tiny_config()
  config.training.sde = sde_name
  config.training.continuous = continuous
  config.model.embedding_type = 'fourier' if continuous else 'positional'
  config.model.scale_by_sigma = sde_name == 'vesde'  # score_sde's VP / subVP models output noise
  if sde_name != 'vesde':
    config.model.num_scales = 1000  # discrete betas up to beta_max / N: N = 10 would make alphas negative
  config.optim.lr = 2e-3
  model, model_state, params = mutils.init_model(jax.random.PRNGKey(0), config)
  sde, _ = sde_lib.get_sde(config)
  kwargs = dict(reduce_mean=True, continuous=continuous, likelihood_weighting=False, axis_name='batch')
  train_step = losses.get_step_fn(sde, model, True, losses.optimization_manager(config), **kwargs)
  eval_step = losses.get_step_fn(sde, model, False, **kwargs)
  x = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (8, 8, 8, 3)).astype(np.float32) * 0.2 + 0.4)
  eval_fn = jax.vmap(lambda c, b: eval_step(c, b), axis_name='batch')
  train_fn = jax.jit(jax.vmap(lambda c, b: train_step(c, b), axis_name='batch'))

  def eval_loss(state):  # the same noise draws every time, averaged over 8 keys
    keys = jax.random.split(jax.random.PRNGKey(5), 8)
    return float(jnp.mean(jax.vmap(lambda k: eval_fn((k[None], jax.tree.map(lambda a: a[None], state)),
                                                     x[None])[1])(keys)))

  state = _state(config, params, model_state).replace(ema_rate=jnp.float32(0.))  # evaluate params directly
  before = eval_loss(state)
  carry = (jax.random.PRNGKey(1)[None], jax.tree.map(lambda a: a[None], state))
  for _ in range(40):
    carry, loss = train_fn(carry, x[None])
  assert np.isfinite(float(loss[0]))
  after = eval_loss(jax.tree.map(lambda a: a[0], carry[1]))
  assert int(carry[1].step[0]) == 40
  assert after < 0.8 * before, (before, after)


def test_discrete_losses_need_matching_sdes():
  config = tiny_config()
  model, _, _ = mutils.init_model(jax.random.PRNGKey(0), config)
  with pytest.raises(ValueError, match='needs a VESDE'):
    losses.get_smld_loss_fn(sde_lib.VPSDE(), model, True)
  with pytest.raises(ValueError, match='needs a VPSDE'):
    losses.get_ddpm_loss_fn(sde_lib.VESDE(), model, True)
  with pytest.raises(ValueError, match='continuous'):
    losses.get_loss_fn(sde_lib.VESDE(), model, True, True, continuous=False, likelihood_weighting=True)
