"""Sample-quality metrics of the toy experiments of Fassina et al. (docs/method.md §8).

  wasserstein_1d         W_p between two 1-D empirical measures, exactly: the L^p distance of
                         their quantile functions, integrated over the merged CDF levels (any
                         sizes; for equal sizes, (mean |sort(a) - sort(b)|^p)^{1/p}).
  sliced_wasserstein     SW_p = (E_θ W_p^p(θᵀX, θᵀY))^{1/p}, θ uniform on the sphere, estimated
                         with K random directions.
  max_sliced_wasserstein max_θ W_p(θᵀX, θᵀY): the best of K random directions, refined by Adam
                         ascent on θ = v / ‖v‖ (the official code runs Adam on a stereographic
                         parametrisation of the sphere from one random start; both give a lower
                         bound of the maximum). No normalisation by √D and no clipping.
  kl_monte_carlo         KL(p ‖ q) ≈ mean_i [log p(x_i) - log q(x_i)], x_i ~ p, with its standard
                         error (the official code floors the estimate at 0; this one does not).
  tail_quantiles         high quantiles of the samples projected on a direction.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

LogDensity = Callable[[jax.Array], jax.Array]

TAIL_LEVELS = (0.90, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999)  # official `TAIL_QUANTILES`


def _check_pair(x: jax.Array, y: jax.Array, name: str) -> None:
  if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
    raise ValueError(f'{name}: expected samples (N, D) and (M, D), got {x.shape} and {y.shape}.')


def wasserstein_1d(a: jax.Array, b: jax.Array, p: float = 2.) -> jax.Array:
  """W_p between the empirical measures of a (N,) and b (M,), exact (module docstring)."""
  a, b = jnp.sort(a), jnp.sort(b)
  n, m = a.shape[0], b.shape[0]
  if n == m:
    return jnp.mean(jnp.abs(a - b) ** p) ** (1 / p)
  levels = jnp.sort(jnp.concatenate([jnp.arange(1, n + 1) / n, jnp.arange(1, m + 1) / m]))
  lower = jnp.concatenate([jnp.zeros(1), levels[:-1]])
  mid = 0.5 * (lower + levels)  # inside each interval of constant quantiles
  qa = a[jnp.minimum(jnp.floor(mid * n).astype(jnp.int32), n - 1)]
  qb = b[jnp.minimum(jnp.floor(mid * m).astype(jnp.int32), m - 1)]
  return jnp.sum((levels - lower) * jnp.abs(qa - qb) ** p) ** (1 / p)


def _random_directions(rng: jax.Array, num: int, dim: int) -> jax.Array:
  v = jax.random.normal(rng, (num, dim))
  return v / jnp.linalg.norm(v, axis=1, keepdims=True)


def sliced_wasserstein(x: jax.Array, y: jax.Array, rng: jax.Array, num_directions: int = 256,
                       p: float = 2.) -> jax.Array:
  """SW_p of samples x (N, D) and y (M, D) over `num_directions` random unit directions."""
  _check_pair(x, y, 'sliced_wasserstein')
  dirs = _random_directions(rng, num_directions, x.shape[1])
  w = jax.vmap(lambda th: wasserstein_1d(x @ th, y @ th, p))(dirs)
  return jnp.mean(w ** p) ** (1 / p)


def max_sliced_wasserstein(x: jax.Array, y: jax.Array, rng: jax.Array, num_directions: int = 256,
                           num_steps: int = 500, learning_rate: float = 1e-2, p: float = 2.
                           ) -> Tuple[jax.Array, jax.Array]:
  """(max-SW_p, θ) of samples x (N, D) and y (M, D) (module docstring).

  Args:
    num_directions: random unit directions tried first; the best one starts the ascent.
    num_steps: Adam steps of gradient ascent on W_p(θᵀx, θᵀy) (0: random search only).
    learning_rate: Adam learning rate on v (θ = v / ‖v‖, ‖v‖ starts at 1).

  Returns:
    (the largest W_p found, its unit direction (D,)).
  """
  _check_pair(x, y, 'max_sliced_wasserstein')
  objective = lambda v: wasserstein_1d(x @ (v / jnp.linalg.norm(v)), y @ (v / jnp.linalg.norm(v)), p)
  dirs = _random_directions(rng, num_directions, x.shape[1])
  values = jax.vmap(objective)(dirs)
  best = jnp.argmax(values)
  solver = optax.adam(learning_rate)

  def step(carry, _):
    v, state, best_v, best_w = carry
    w, g = jax.value_and_grad(objective)(v)
    better = w > best_w
    best_v, best_w = jnp.where(better, v, best_v), jnp.maximum(w, best_w)
    updates, state = solver.update(-g, state, v)
    return (optax.apply_updates(v, updates), state, best_v, best_w), None

  v0 = dirs[best]
  (v, _, best_v, best_w), _ = jax.lax.scan(step, (v0, solver.init(v0), v0, values[best]), None, length=num_steps)
  w_last = objective(v)
  best_v, best_w = jnp.where(w_last > best_w, v, best_v), jnp.maximum(w_last, best_w)
  return best_w, best_v / jnp.linalg.norm(best_v)


def kl_monte_carlo(log_p: LogDensity, log_q: LogDensity, x: jax.Array) -> Tuple[float, float]:
  """(KL(p ‖ q) estimate, its standard error) from draws x (N, ...) of p and both log-densities."""
  diff = np.asarray(log_p(x) - log_q(x), np.float64)
  if diff.ndim != 1 or diff.shape[0] != x.shape[0] or diff.shape[0] < 2:
    raise ValueError(f'kl_monte_carlo: log-densities must return shape ({x.shape[0]},) for >= 2 draws, '
                     f'got {diff.shape}.')
  return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(diff.size))


def tail_quantiles(x: jax.Array, direction: Optional[jax.Array] = None,
                   levels: Sequence[float] = TAIL_LEVELS) -> np.ndarray:
  """Quantiles at `levels` of x (N,) or of x (N, D) projected on a direction (D,) (normalised)."""
  x = np.asarray(x, np.float64)
  if x.ndim == 2:
    if direction is None:
      raise ValueError(f'tail_quantiles: samples of shape {x.shape} need a direction (D,).')
    direction = np.asarray(direction, np.float64)
    if direction.shape != (x.shape[1],):
      raise ValueError(f'tail_quantiles: direction must have shape ({x.shape[1]},), got {direction.shape}.')
    x = x @ (direction / np.linalg.norm(direction))
  elif x.ndim != 1:
    raise ValueError(f'tail_quantiles: expected samples (N,) or (N, D), got {x.shape}.')
  return np.quantile(x, np.asarray(levels))
