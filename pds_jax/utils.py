"""Small array helpers shared across the library (score_sde's `utils.py` names)."""
import jax
import jax.numpy as jnp


def batch_mul(a: jax.Array, b: jax.Array) -> jax.Array:
  """Multiplies a per-example array `a` of shape (B,) (or scalar) into `b` of shape (B, ...)."""
  return jax.vmap(lambda a, b: a * b)(a, b) if jnp.ndim(a) else a * b


def batch_add(a: jax.Array, b: jax.Array) -> jax.Array:
  """Adds a per-example array `a` of shape (B,) to `b` of shape (B, ...)."""
  return jax.vmap(lambda a, b: a + b)(a, b) if jnp.ndim(a) else a + b
