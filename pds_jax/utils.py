"""Small array helpers shared across the library (score_sde's `utils.py` names)."""
from typing import Callable, Dict

import jax
import jax.numpy as jnp


def batch_mul(a: jax.Array, b: jax.Array) -> jax.Array:
  """Multiplies a per-example array `a` of shape (B,) (or scalar) into `b` of shape (B, ...)."""
  return jax.vmap(lambda a, b: a * b)(a, b) if jnp.ndim(a) else a * b


def batch_add(a: jax.Array, b: jax.Array) -> jax.Array:
  """Adds a per-example array `a` of shape (B,) to `b` of shape (B, ...)."""
  return jax.vmap(lambda a, b: a + b)(a, b) if jnp.ndim(a) else a + b


def registry_decorator(registry: Dict[str, type], kind: str) -> Callable:
  """score_sde's `register_*` decorators: `@register(name=...)` or bare `@register` adds a class."""

  def register(cls=None, *, name=None):
    def _register(cls):
      local_name = cls.__name__ if name is None else name
      if local_name in registry:
        raise ValueError(f'Already registered {kind} with name: {local_name}')
      registry[local_name] = cls
      return cls
    return _register if cls is None else _register(cls)

  return register
