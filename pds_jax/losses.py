"""Training losses and the optimizer (score_sde `losses.py`, with optax in place of flax.optim).

Losses (x in the model's data range, B the batch):
  continuous  (Song et al. 2021, eq. 7)  t ~ U(eps, T), x_t = m(t) x + σ(t) z,
      λ(t) = σ(t)²:  ‖σ s_θ(x_t, t) + z‖²           (the default)
      λ(t) = g(t)²:  g² ‖s_θ(x_t, t) + z / σ(t)‖²   (likelihood weighting)
  SMLD (NCSN, discrete VE)  i ~ U{0..N-1}, σ_i from the VESDE's discrete sigmas,
      σ_i² ‖s_θ(x + σ_i z, i) + z / σ_i‖²
  DDPM (discrete VP)        i ~ U{0..N-1},  ‖ε_θ(√ᾱ_i x + √(1-ᾱ_i) z, i) − z‖²
reduced per example by a mean (`reduce_mean`) or half a sum (score_sde's default), then averaged.

The optimizer is flax.optim.Adam as score_sde configures it (β2 0.999, decoupled weight decay),
stored as `checkpoints.AdamState` so training checkpoints keep the legacy layout; the learning
rate warms up linearly over `optim.warmup` steps and gradients are clipped by their global norm,
both exactly as score_sde's `optimization_manager`.
"""
from __future__ import annotations

from typing import Callable, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from pds_jax import sde_lib
from pds_jax.checkpoints import AdamState, State
from pds_jax.models import utils as mutils
from pds_jax.utils import batch_mul

_BETA2 = 0.999  # flax.optim.Adam's default, which score_sde keeps


def init_adam_state(params) -> AdamState:
  """flax.optim.Adam's initial state: step 0 and zero moments."""
  zeros = jax.tree.map(jnp.zeros_like, params)
  return AdamState(step=jnp.zeros((), jnp.int32), grad_ema=zeros, grad_sq_ema=zeros)


def optimization_manager(config: ml_collections.ConfigDict) -> Callable:
  """`optimize_fn(state, grad) -> state`: warmup, gradient clipping, one Adam step (score_sde).

  lr_t = lr · min(step / warmup, 1); g ← g · min(grad_clip / (‖g‖ + 1e-6), 1);
  params ← params − lr_t (adam_update + weight_decay · params).
  """
  optim = config.optim
  if optim.optimizer != 'Adam':
    raise NotImplementedError(f'config.optim.optimizer = {optim.optimizer!r}: only Adam is supported (as in score_sde).')
  adam = optax.scale_by_adam(b1=optim.beta1, b2=_BETA2, eps=optim.eps)

  def optimize_fn(state: State, grad) -> State:
    lr = state.lr
    if optim.warmup > 0:
      lr = lr * jnp.minimum(state.step / optim.warmup, 1.0)
    if optim.grad_clip >= 0:
      grad_norm = optax.global_norm(grad)
      grad = jax.tree.map(lambda g: g * jnp.minimum(optim.grad_clip / (grad_norm + 1e-6), 1.), grad)
    opt = state.opt_state
    adam_state = optax.ScaleByAdamState(count=opt.step, mu=opt.grad_ema, nu=opt.grad_sq_ema)
    updates, adam_state = adam.update(grad, adam_state)
    params = jax.tree.map(lambda p, u: p - lr * (u + optim.weight_decay * p), state.params, updates)
    opt = AdamState(step=adam_state.count, grad_ema=adam_state.mu, grad_sq_ema=adam_state.nu)
    return state.replace(params=params, opt_state=opt)

  return optimize_fn


def _reduce_op(reduce_mean: bool) -> Callable:
  return jnp.mean if reduce_mean else (lambda x, axis: 0.5 * jnp.sum(x, axis=axis))


def _per_example(x: jax.Array) -> Tuple[int, ...]:
  return tuple(range(1, x.ndim))


def get_sde_loss_fn(sde: sde_lib.SDE, model, train: bool, reduce_mean: bool = True, continuous: bool = True,
                    likelihood_weighting: bool = False, eps: float = 1e-5) -> Callable:
  """The continuous-time denoising score matching loss `loss_fn(rng, params, states, batch)`.

  Args:
    batch: (B, H, W, C) images in the model's data range.
  Returns:
    loss_fn returning (scalar loss, new mutable states).
  """
  reduce_op = _reduce_op(reduce_mean)

  def loss_fn(rng, params, states, batch):
    score_fn = mutils.get_score_fn(sde, model, params, states, train=train, continuous=continuous,
                                   return_state=True)
    rng, t_rng, z_rng, dropout_rng = jax.random.split(rng, 4)
    t = jax.random.uniform(t_rng, (batch.shape[0],), minval=eps, maxval=sde.T)
    z = jax.random.normal(z_rng, batch.shape)
    mean, std = sde.marginal_prob(batch, t)
    perturbed = mean + batch_mul(std, z)
    score, new_states = score_fn(perturbed, t, dropout_rng)
    if not likelihood_weighting:
      losses = reduce_op(jnp.square(batch_mul(score, std) + z), axis=_per_example(z))
    else:
      g2 = sde.sde(jnp.zeros_like(batch), t)[1] ** 2
      losses = reduce_op(jnp.square(score + batch_mul(z, 1. / std)), axis=_per_example(z)) * g2
    return jnp.mean(losses), new_states

  return loss_fn


def get_smld_loss_fn(vesde: sde_lib.VESDE, model, train: bool, reduce_mean: bool = False) -> Callable:
  """NCSN's discrete denoising score matching loss over the VESDE's N noise levels."""
  if not isinstance(vesde, sde_lib.VESDE):
    raise ValueError(f'the SMLD loss needs a VESDE, got {type(vesde).__name__}.')
  sigmas = jnp.flip(vesde.discrete_sigmas)  # index 0 is the largest σ, as the model's labels count
  reduce_op = _reduce_op(reduce_mean)

  def loss_fn(rng, params, states, batch):
    model_fn = mutils.get_model_fn(model, params, states, train=train)
    rng, label_rng, z_rng, dropout_rng = jax.random.split(rng, 4)
    labels = jax.random.choice(label_rng, vesde.N, shape=(batch.shape[0],))
    sigma = sigmas[labels]
    noise = batch_mul(jax.random.normal(z_rng, batch.shape), sigma)
    score, new_states = model_fn(batch + noise, labels, dropout_rng)
    target = -batch_mul(noise, 1. / sigma ** 2)
    losses = reduce_op(jnp.square(score - target), axis=_per_example(batch)) * sigma ** 2
    return jnp.mean(losses), new_states

  return loss_fn


def get_ddpm_loss_fn(vpsde: sde_lib.VPSDE, model, train: bool, reduce_mean: bool = True) -> Callable:
  """DDPM's noise-prediction loss over the VPSDE's N discrete steps."""
  if not isinstance(vpsde, sde_lib.VPSDE):
    raise ValueError(f'the DDPM loss needs a VPSDE, got {type(vpsde).__name__}.')
  reduce_op = _reduce_op(reduce_mean)

  def loss_fn(rng, params, states, batch):
    model_fn = mutils.get_model_fn(model, params, states, train=train)
    rng, label_rng, z_rng, dropout_rng = jax.random.split(rng, 4)
    labels = jax.random.choice(label_rng, vpsde.N, shape=(batch.shape[0],))
    z = jax.random.normal(z_rng, batch.shape)
    perturbed = (batch_mul(vpsde.sqrt_alphas_cumprod[labels], batch)
                 + batch_mul(vpsde.sqrt_1m_alphas_cumprod[labels], z))
    score, new_states = model_fn(perturbed, labels, dropout_rng)
    losses = reduce_op(jnp.square(score - z), axis=_per_example(z))
    return jnp.mean(losses), new_states

  return loss_fn


def get_loss_fn(sde: sde_lib.SDE, model, train: bool, reduce_mean: bool, continuous: bool,
                likelihood_weighting: bool) -> Callable:
  """The loss score_sde trains `model` with: continuous DSM, or SMLD / DDPM for discrete models."""
  if continuous:
    return get_sde_loss_fn(sde, model, train, reduce_mean, True, likelihood_weighting)
  if likelihood_weighting:
    raise ValueError('likelihood weighting needs continuous training (config.training.continuous = True).')
  if isinstance(sde, sde_lib.VESDE):
    return get_smld_loss_fn(sde, model, train, reduce_mean)
  if isinstance(sde, sde_lib.VPSDE):
    return get_ddpm_loss_fn(sde, model, train, reduce_mean)
  raise ValueError(f'discrete training is not implemented for {type(sde).__name__}; '
                   'set config.training.continuous = True.')


def get_step_fn(sde: sde_lib.SDE, model, train: bool, optimize_fn: Callable = None, reduce_mean: bool = False,
                continuous: bool = True, likelihood_weighting: bool = False,
                axis_name: str = 'batch') -> Callable:
  """One training (or evaluation) step `step_fn((rng, state), batch) -> ((rng, state), loss)`.

  Made for `jax.pmap(functools.partial(jax.lax.scan, step_fn), axis_name)` as in score_sde: gradients
  and losses are averaged over `axis_name`, and a training step updates params, the step count
  and the EMA params_ema ← ema_rate · params_ema + (1 − ema_rate) · params.
  """
  loss_fn = get_loss_fn(sde, model, train, reduce_mean, continuous, likelihood_weighting)

  def step_fn(carry, batch):
    rng, state = carry
    rng, step_rng = jax.random.split(rng)
    if train:
      grad_fn = jax.value_and_grad(loss_fn, argnums=1, has_aux=True)
      (loss, new_states), grad = grad_fn(step_rng, state.params, state.model_state, batch)
      grad = jax.lax.pmean(grad, axis_name=axis_name)
      new_state = optimize_fn(state, grad)
      params_ema = jax.tree.map(lambda e, p: e * state.ema_rate + p * (1. - state.ema_rate),
                                state.params_ema, new_state.params)
      state = new_state.replace(step=state.step + 1, model_state=new_states, params_ema=params_ema)
    else:
      loss, _ = loss_fn(step_rng, state.params_ema, state.model_state, batch)
    return (rng, state), jax.lax.pmean(loss, axis_name=axis_name)

  return step_fn
