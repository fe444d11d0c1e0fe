"""Normalization layers of score_sde (`models/normalization.py`), in modern flax.linen.

Inputs are NHWC (B, H, W, C). The InstanceNorm family keeps score_sde's (1, 1, 1, C) parameter
shapes (they are stored that way in checkpoints); statistics use epsilon 1e-5 as in the original.
"""
import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from pds_jax.models import layers

Array = jax.Array
_normal_init = jax.nn.initializers.normal(0.02)


def get_normalization(config, conditional: bool = False) -> Callable[..., nn.Module]:
  """The normalization module class named by `config.model.normalization`.

  The conditional InstanceNorm++ (NCSNv1) embeds the noise-level index, so it needs one class per
  noise level: `config.model.num_classes` if set, else `config.model.num_scales` (score_sde reads
  `num_classes`, which none of its configs define).
  """
  norm = config.model.normalization
  if conditional:
    if norm != 'InstanceNorm++':
      raise NotImplementedError(f'Conditional {norm!r} is not implemented; only InstanceNorm++ is.')
    num_classes = config.model.get('num_classes', config.model.num_scales)
    return functools.partial(ConditionalInstanceNorm2dPlus, num_classes=num_classes)
  norms = {'InstanceNorm': InstanceNorm2d, 'InstanceNorm++': InstanceNorm2dPlus,
           'VarianceNorm': VarianceNorm2d, 'GroupNorm': layers.GroupNorm}
  if norm not in norms:
    raise ValueError(f'Unknown normalization: {norm!r}; choose one of {sorted(norms)}.')
  return norms[norm]


def _one_plus_normal(key, shape, dtype=jnp.float32) -> Array:
  """N(1, 0.02²) initialiser of the scales."""
  return _normal_init(key, shape, dtype) + 1.


def _instance_stats(x: Array):
  """Per-image, per-channel mean (B, C) and normalized map (x - mean) / sqrt(var + 1e-5)."""
  means = jnp.mean(x, axis=(1, 2))
  h = (x - means[:, None, None, :]) / jnp.sqrt(jnp.var(x, axis=(1, 2), keepdims=True) + 1e-5)
  return means, h


def _means_plus(means: Array) -> Array:
  """InstanceNorm++'s channel-mean correction: the (B, C) means standardised over channels."""
  m = jnp.mean(means, axis=-1, keepdims=True)
  v = jnp.var(means, axis=-1, keepdims=True)
  return (means - m) / jnp.sqrt(v + 1e-5)


class VarianceNorm2d(nn.Module):
  """Variance normalization: x / sqrt(var + 1e-5) · scale (+ bias)."""
  bias: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    variance = jnp.var(x, axis=(1, 2), keepdims=True)
    h = x / jnp.sqrt(variance + 1e-5)
    h = h * self.param('scale', _one_plus_normal, (1, 1, 1, x.shape[-1]))
    if self.bias:
      h = h + self.param('bias', jax.nn.initializers.zeros, (1, 1, 1, x.shape[-1]))
    return h


class InstanceNorm2d(nn.Module):
  """Instance normalization: (x - mean) / sqrt(var + 1e-5) · scale (+ bias)."""
  bias: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    _, h = _instance_stats(x)
    h = h * self.param('scale', jax.nn.initializers.ones, (1, 1, 1, x.shape[-1]))
    if self.bias:
      h = h + self.param('bias', jax.nn.initializers.zeros, (1, 1, 1, x.shape[-1]))
    return h


class InstanceNorm2dPlus(nn.Module):
  """InstanceNorm++ of NCSN: instance norm plus alpha · standardised channel means; gamma, beta."""
  bias: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    means, h = _instance_stats(x)
    shape = (1, 1, 1, x.shape[-1])
    h = h + _means_plus(means)[:, None, None, :] * self.param('alpha', _one_plus_normal, shape)
    h = h * self.param('gamma', _one_plus_normal, shape)
    if self.bias:
      h = h + self.param('beta', jax.nn.initializers.zeros, shape)
    return h


class ConditionalInstanceNorm2dPlus(nn.Module):
  """InstanceNorm++ whose gamma, alpha (and beta) are embeddings of the noise-level index y, shape (B,)."""
  num_classes: int = 10
  bias: bool = True

  @nn.compact
  def __call__(self, x: Array, y: Array) -> Array:
    means, h = _instance_stats(x)
    n_params = 3 if self.bias else 2

    def init_embed(key, shape, dtype=jnp.float32):
      # gamma and alpha start at N(1, 0.02²), beta at 0
      scales = _one_plus_normal(key, (shape[0], 2 * x.shape[-1]), dtype)
      return jnp.concatenate([scales, jnp.zeros((shape[0], shape[1] - 2 * x.shape[-1]), dtype)], axis=-1)

    embed = nn.Embed(num_embeddings=self.num_classes, features=x.shape[-1] * n_params, embedding_init=init_embed)
    gamma, alpha, *beta = jnp.split(embed(y), n_params, axis=-1)
    h = h + _means_plus(means)[:, None, None, :] * alpha[:, None, None, :]
    out = gamma[:, None, None, :] * h
    if self.bias:
      out = out + beta[0][:, None, None, :]
    return out
