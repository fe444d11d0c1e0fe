"""A learned score for vector toys without a closed-form noised score (the Student-t mixtures).

`ToyScoreMLP` is a continuous-time VE score model for points x (B, D) with score_sde's model
signature `model.apply(variables, x, labels, train=...)`, the label being σ(t) (score_sde's
continuous VE convention, pds_jax.models.utils.get_score_fn):
  s(x, σ) = MLP([x / sqrt(1 + σ²), log(σ) / 4]) / σ
(inputs scaled to unit variance for standardised data, output divided by σ as NCSN++'s
`scale_by_sigma`). `train_toy_score` fits it with the project's own continuous DSM loss
(pds_jax.losses.get_sde_loss_fn, `reduce_mean`) on fresh draws of the target each step, so the
only error left is the network's; `toy_score_fn` returns score_sde's score function s(x, t).
"""
from __future__ import annotations

from typing import Callable, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from pds_jax import losses, sde_lib
from pds_jax.models import utils as mutils

Params = dict
Sampler = Callable[[jax.Array, int], jax.Array]


class ToyScoreMLP(nn.Module):
  """s(x, σ) for x (B, D) and labels σ (B,) (module docstring); `depth` SiLU layers of `width`."""
  width: int = 256
  depth: int = 3

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array, train: bool = False) -> jax.Array:
    if x.ndim != 2:
      raise ValueError(f'ToyScoreMLP: expected points of shape (B, D), got {x.shape}.')
    sigma = labels[:, None]
    h = jnp.concatenate([x / jnp.sqrt(1. + sigma ** 2), jnp.log(sigma) / 4.], axis=1)
    for _ in range(self.depth):
      h = nn.silu(nn.Dense(self.width)(h))
    return nn.Dense(x.shape[1])(h) / sigma


def toy_score_fn(model: ToyScoreMLP, params: Params, sde: sde_lib.VESDE) -> jax.tree_util.Partial:
  """score_sde's `score_fn(x, t)` of the trained model (a jit-friendly `Partial`)."""
  return mutils.get_score_fn(sde, model, params, {}, train=False, continuous=True)


def train_toy_score(sample: Sampler, dim: int, sde: sde_lib.VESDE, rng: jax.Array, *, num_steps: int,
                    batch_size: int = 512, learning_rate: float = 1e-3, model: ToyScoreMLP = ToyScoreMLP(),
                    chunk: int = 500) -> Tuple[Params, Sequence[float]]:
  """Fits `model` by continuous DSM (t ~ U(1e-5, 1), σ(t) of `sde`) on fresh draws `sample(rng, batch_size)`.

  Adam with a cosine decay of `learning_rate` to 0 over `num_steps`; the steps run as `lax.scan`
  chunks of `chunk` steps.

  Returns:
    (params, the mean loss of each chunk).
  """
  if num_steps < 1 or batch_size < 1:
    raise ValueError(f'train_toy_score: need num_steps >= 1 and batch_size >= 1, got {num_steps}, {batch_size}.')
  init_key, train_key = jax.random.split(rng)
  params = model.init(init_key, jnp.zeros((1, dim)), jnp.ones((1,)))['params']
  loss_fn = losses.get_sde_loss_fn(sde, model, train=True, reduce_mean=True, continuous=True)
  optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, num_steps))

  def step(carry, key):
    params, opt_state = carry
    k_data, k_loss = jax.random.split(key)
    batch = sample(k_data, batch_size)
    (loss, _), grad = jax.value_and_grad(loss_fn, argnums=1, has_aux=True)(k_loss, params, {}, batch)
    updates, opt_state = optimizer.update(grad, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  @jax.jit
  def run_chunk(carry, keys):
    carry, chunk_losses = jax.lax.scan(step, carry, keys)
    return carry, jnp.mean(chunk_losses)

  carry, history = (params, optimizer.init(params)), []
  keys = jax.random.split(train_key, num_steps)
  for start in range(0, num_steps, chunk):
    carry, loss = run_chunk(carry, keys[start:start + chunk])
    history.append(float(loss))
  return carry[0], history
