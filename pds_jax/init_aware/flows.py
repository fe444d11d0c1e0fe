"""Affine coupling flow on vectors: the learned init q_T ≈ p_T of the toy experiments (docs/method.md §8).

The flow of Fassina et al.'s toys (flowjax `coupling_flow`, RealNVP, Dinh et al. 2017): in the
density direction x → w each of `flow_layers` layers is an affine coupling followed by a fixed
permutation,
  x_b ← x_b ⊙ s(x_a) + t(x_a),   (x_a = the first ⌊d/2⌋ coordinates, x_b the rest)
  x  ← P x                        (P: flip for d = 2, a fixed random permutation for d > 2),
with (t, s) from an MLP conditioner (width 50, depth 3 hidden layers, relu6) and
s = softplus(·) + 0.01 (starts at 1). Then the base: u = L w + b with L lower-triangular
(positive diagonal via softplus, starts at I) and w ~ N(0, σ_T² I) or independent Student-t
(df 3, scale σ_T) per coordinate. Change of variables:
  log q(x) = log p_w(L⁻¹(u − b)) − Σ_i log L_ii + Σ_layers Σ log s.

`FlowInit` closes over any flow module of this package (this one or `tarflow.TarFlow`) and its
parameters, and is the init protocol of the samplers: `sample(rng, n)`, `log_prob(x)`.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Dict, Tuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import jax.scipy.linalg
import numpy as np

Params = Dict[str, Any]
Initializer = Callable[..., jax.Array]

BASES = ('gaussian', 'student_t')
_MIN_SCALE = 1e-2  # flowjax's affine transformer: s = softplus(raw + softplus⁻¹(1 − 0.01)) + 0.01
_SCALE_OFFSET = math.log(math.expm1(1. - _MIN_SCALE))
_SOFTPLUS_INV_ONE = math.log(math.expm1(1.))


def uniform_fan_in(fan_in: int) -> Initializer:
  """U(−1/√fan_in, 1/√fan_in): the default weight and bias init of torch.nn.Linear and equinox."""
  limit = 1. / math.sqrt(fan_in)

  def init(key: jax.Array, shape: Tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -limit, limit)
  return init


def linear(features: int, fan_in: int) -> nn.Dense:
  """A Dense layer initialised like torch.nn.Linear / eqx.nn.Linear (weights and bias U(±1/√fan_in))."""
  init = uniform_fan_in(fan_in)
  return nn.Dense(features, kernel_init=init, bias_init=init)


def _base_log_prob(w: jax.Array, base: str, scale: float, df: float) -> jax.Array:
  """Σ_i log p(w_i) for independent N(0, scale²) or Student-t(df, 0, scale) coordinates; w (n, d)."""
  y = w / scale
  if base == 'gaussian':
    per_dim = -0.5 * y ** 2 - 0.5 * math.log(2. * math.pi)
  else:
    norm = (math.lgamma(0.5 * (df + 1.)) - math.lgamma(0.5 * df) - 0.5 * math.log(df * math.pi))
    per_dim = norm - 0.5 * (df + 1.) * jnp.log1p(y ** 2 / df)
  return jnp.sum(per_dim, axis=-1) - w.shape[-1] * math.log(scale)


class Conditioner(nn.Module):
  """The coupling MLP: `depth` hidden layers of `width` with relu6, then a linear output."""
  in_size: int
  out_size: int
  width: int
  depth: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = self.in_size
    for _ in range(self.depth):
      x = jax.nn.relu6(linear(self.width, fan_in)(x))
      fan_in = self.width
    return linear(self.out_size, fan_in)(x)


class CouplingFlow(nn.Module):
  """Affine coupling flow with a Gaussian or Student-t base and a learnable triangular affine.

  Attributes:
    dim: data dimension d ≥ 2.
    base_scale: σ_T, the scale of the base distribution.
    base: 'gaussian' (N(0, σ_T² I)) or 'student_t' (independent t_df with scale σ_T).
    df: degrees of freedom of the Student-t base.
    flow_layers, nn_width, nn_depth: coupling layers, conditioner width and hidden layers.
    permutation_seed: seed of the fixed random permutations used when d > 2.
  """
  dim: int
  base_scale: float = 1.
  base: str = 'gaussian'
  df: float = 3.
  flow_layers: int = 5
  nn_width: int = 50
  nn_depth: int = 3
  permutation_seed: int = 0

  @property
  def data_shape(self) -> Tuple[int, ...]:
    return (self.dim,)

  def setup(self):
    if self.dim < 2:
      raise ValueError(f'CouplingFlow.dim must be at least 2 (a coupling splits the vector), got {self.dim}')
    if self.base not in BASES:
      raise ValueError(f'CouplingFlow.base must be one of {BASES}, got {self.base!r}')
    if self.base_scale <= 0:
      raise ValueError(f'CouplingFlow.base_scale (σ_T) must be positive, got {self.base_scale}')
    n_cond = self.dim // 2
    self.conditioners = [Conditioner(n_cond, 2 * (self.dim - n_cond), self.nn_width, self.nn_depth)
                         for _ in range(self.flow_layers)]
    self.triangular = self.param('triangular', lambda _, d: jnp.eye(d) * _SOFTPLUS_INV_ONE, self.dim)
    self.loc = self.param('loc', nn.initializers.zeros, (self.dim,))

  def _permutations(self) -> Tuple[np.ndarray, ...]:
    if self.dim == 2:
      return (np.array([1, 0]),) * self.flow_layers
    rng = np.random.default_rng(self.permutation_seed)
    return tuple(rng.permutation(self.dim) for _ in range(self.flow_layers))

  def _lower(self) -> jax.Array:
    """L: strictly-lower part of the parameter plus softplus of its diagonal."""
    tri = jnp.tril(self.triangular, -1)
    return tri + jnp.diag(jax.nn.softplus(jnp.diag(self.triangular)))

  def _shift_and_scale(self, layer: int, x_a: jax.Array) -> Tuple[jax.Array, jax.Array]:
    p = self.conditioners[layer](x_a).reshape(x_a.shape[0], self.dim - x_a.shape[1], 2)
    return p[..., 0], jax.nn.softplus(p[..., 1] + _SCALE_OFFSET) + _MIN_SCALE

  def forward_and_log_det(self, x: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """x (n, d) → (w, log|det ∂w/∂x|) with w the base variable, shapes (n, d) and (n,)."""
    n_cond = self.dim // 2
    log_det = jnp.zeros(x.shape[:1], x.dtype)
    for layer, perm in enumerate(self._permutations()):
      x_a, x_b = x[:, :n_cond], x[:, n_cond:]
      shift, scale = self._shift_and_scale(layer, x_a)
      x = jnp.concatenate([x_a, x_b * scale + shift], axis=1)[:, perm]
      log_det = log_det + jnp.sum(jnp.log(scale), axis=1)
    lower = self._lower()
    w = jax.scipy.linalg.solve_triangular(lower, (x - self.loc).T, lower=True).T
    return w, log_det - jnp.sum(jnp.log(jnp.diag(lower)))

  def inverse(self, w: jax.Array) -> jax.Array:
    """The exact inverse of `forward_and_log_det`: base variable w (n, d) → x (n, d)."""
    n_cond = self.dim // 2
    x = w @ self._lower().T + self.loc
    for layer, perm in reversed(tuple(enumerate(self._permutations()))):
      x = x[:, np.argsort(perm)]
      x_a, y_b = x[:, :n_cond], x[:, n_cond:]
      shift, scale = self._shift_and_scale(layer, x_a)
      x = jnp.concatenate([x_a, (y_b - shift) / scale], axis=1)
    return x

  def log_prob(self, x: jax.Array) -> jax.Array:
    """log q(x) for x (n, d), shape (n,)."""
    w, log_det = self.forward_and_log_det(x)
    return _base_log_prob(w, self.base, self.base_scale, self.df) + log_det

  def sample(self, rng: jax.Array, n: int) -> jax.Array:
    """n draws of x = flow⁻¹(w), w ~ base; shape (n, d)."""
    if self.base == 'gaussian':
      w = jax.random.normal(rng, (n, self.dim))
    else:
      w = jax.random.t(rng, self.df, (n, self.dim))
    return self.inverse(self.base_scale * w)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.log_prob(x)


@functools.partial(jax.jit, static_argnames=('module',))
def _log_prob(module: nn.Module, params: Params, x: jax.Array) -> jax.Array:
  return module.apply({'params': params}, x, method='log_prob')


@functools.partial(jax.jit, static_argnames=('module', 'n'))
def _sample(module: nn.Module, params: Params, rng: jax.Array, n: int) -> jax.Array:
  return module.apply({'params': params}, rng, n, method='sample')


class FlowInit(flax.struct.PyTreeNode):
  """A fitted flow q_T ≈ p_T as a sampler init (inits.InitDistribution): a flow module, its
  parameters and the σ_T it models.

  The module is static (it selects the compiled code), the parameters are leaves, so a FlowInit can
  be passed to jitted functions. `module` is a `CouplingFlow` or a `tarflow.TarFlow`.
  """
  module: nn.Module = flax.struct.field(pytree_node=False)
  params: Params
  sigma_t: float = flax.struct.field(pytree_node=False)

  @property
  def event_shape(self) -> Tuple[int, ...]:
    """The shape of one draw, the module's data shape."""
    return tuple(self.module.data_shape)

  def sample(self, rng: jax.Array, n: int) -> jax.Array:
    """x_T ~ q_T, shape (n, *event_shape)."""
    return _sample(self.module, self.params, rng, int(n))

  def log_prob(self, x: jax.Array) -> jax.Array:
    """log q_T(x) for x (n, *event_shape), shape (n,)."""
    return _log_prob(self.module, self.params, x)
