"""TarFlow: a Transformer autoregressive affine flow on image patches (Zhai et al. 2024, apple/ml-tarflow).

The learned init of Fassina et al.'s image experiments (docs/method.md §8). In the density direction an
image x (H, W, C) is divided by `data_scale` (σ_T = 7 → 14), cut into non-overlapping p × p patches
(a sequence of T = HW/p² vectors of P = p²C values, row-major), and each of `num_blocks` blocks
applies, on the sequence in its own order π (identity for even blocks, reversed for odd ones),
  z_i = (x_i − b_i) ⊙ exp(−a_i),   (a_i, b_i) = f(x_{<i}),   a_0 = b_0 = 0,
with f a causal Transformer (pre-LayerNorm attention + GELU MLP layers) whose output is shifted by
one position. The base is N(0, I) on z, so
  log q(x) = log N(z; 0, I) − Σ_blocks Σ_{i,j} a_ij − D log(data_scale),  D = HWC.
Sampling inverts the blocks in reverse order, patch by patch,
  x_{i+1} = z_{i+1} ⊙ exp(a_i) + b_i,
with a key/value cache in a `lax.scan` (`nn.scan`) over the T − 1 positions of each block.
Initialisations follow ml-tarflow: torch.nn.Linear defaults, positional embedding N(0, 0.01²), the
output projection's weights zero (each block starts as a per-channel affine map).
"""
from __future__ import annotations

import math
from typing import List, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from pds_jax.init_aware.flows import linear, uniform_fan_in

Shape = Tuple[int, int, int]
Cache = Tuple[jax.Array, jax.Array]  # keys and values, each (n, T, heads, head_dim)

_LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default


def patchify(x: jax.Array, p: int) -> jax.Array:
  """Images (n, H, W, C) → patch sequences (n, HW/p², p·p·C), patches in row-major order."""
  n, h, w, c = x.shape
  x = x.reshape(n, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(x: jax.Array, p: int, shape: Shape) -> jax.Array:
  """The inverse of `patchify`: (n, T, p·p·C) → (n, H, W, C) for an image shape (H, W, C)."""
  h, w, c = shape
  x = x.reshape(x.shape[0], h // p, w // p, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(x.shape[0], h, w, c)


class Attention(nn.Module):
  """Pre-LayerNorm causal multi-head self-attention, softmax(q kᵀ / √head_dim) v."""
  channels: int
  head_dim: int

  def setup(self):
    self.norm = nn.LayerNorm(epsilon=_LAYER_NORM_EPS)
    self.qkv = linear(3 * self.channels, self.channels)
    self.proj = linear(self.channels, self.channels)

  def _qkv(self, x: jax.Array) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """x (..., C) → q, k, v each (..., heads, head_dim)."""
    heads = self.channels // self.head_dim
    h = self.qkv(self.norm(x)).reshape(*x.shape[:-1], 3 * heads, self.head_dim)
    return tuple(jnp.split(h, 3, axis=-2))

  def __call__(self, x: jax.Array) -> jax.Array:
    """Causal attention over the whole sequence x (n, T, C)."""
    n, t, _ = x.shape
    q, k, v = self._qkv(x)
    logits = jnp.einsum('nthd,nshd->nhts', q, k) / math.sqrt(self.head_dim)
    logits = jnp.where(jnp.tril(jnp.ones((t, t), bool)), logits, -jnp.inf)
    out = jnp.einsum('nhts,nshd->nthd', jax.nn.softmax(logits, axis=-1), v)
    return self.proj(out.reshape(n, t, self.channels))

  def step(self, x: jax.Array, cache: Cache, i: jax.Array) -> Tuple[jax.Array, Cache]:
    """Position i alone: x (n, C) attends to the cached positions ≤ i; returns (out, new cache)."""
    q, k, v = self._qkv(x)
    keys = jax.lax.dynamic_update_index_in_dim(cache[0], k, i, axis=1)
    values = jax.lax.dynamic_update_index_in_dim(cache[1], v, i, axis=1)
    logits = jnp.einsum('nhd,nshd->nhs', q, keys) / math.sqrt(self.head_dim)
    logits = jnp.where(jnp.arange(keys.shape[1]) <= i, logits, -jnp.inf)
    out = jnp.einsum('nhs,nshd->nhd', jax.nn.softmax(logits, axis=-1), values)
    return self.proj(out.reshape(x.shape[0], self.channels)), (keys, values)


class MLP(nn.Module):
  """Pre-LayerNorm MLP C → expansion·C → C with exact GELU."""
  channels: int
  expansion: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    hidden = self.channels * self.expansion
    h = linear(hidden, self.channels)(nn.LayerNorm(epsilon=_LAYER_NORM_EPS)(x))
    return linear(self.channels, hidden)(nn.gelu(h, approximate=False))


class AttentionBlock(nn.Module):
  """x + Attention(x), then + MLP(·)."""
  channels: int
  head_dim: int
  expansion: int

  def setup(self):
    self.attention = Attention(self.channels, self.head_dim)
    self.mlp = MLP(self.channels, self.expansion)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.attention(x)
    return x + self.mlp(x)

  def step(self, x: jax.Array, cache: Cache, i: jax.Array) -> Tuple[jax.Array, Cache]:
    h, cache = self.attention.step(x, cache, i)
    x = x + h
    return x + self.mlp(x), cache


class MetaBlock(nn.Module):
  """One autoregressive affine flow step on a patch sequence (ml-tarflow's MetaBlock).

  Attributes:
    in_channels: P, values per patch.
    num_patches: T.
    flip: process the sequence in reverse order (odd blocks).
    channels, num_layers, head_dim, expansion: Transformer width, layers, head size, MLP factor.
  """
  in_channels: int
  num_patches: int
  flip: bool
  channels: int
  num_layers: int
  head_dim: int
  expansion: int

  def setup(self):
    self.proj_in = linear(self.channels, self.in_channels)
    self.pos_embed = self.param('pos_embed', nn.initializers.normal(1e-2),
                                (self.num_patches, self.channels))
    self.layers = [AttentionBlock(self.channels, self.head_dim, self.expansion)
                   for _ in range(self.num_layers)]
    self.proj_out = nn.Dense(2 * self.in_channels, kernel_init=nn.initializers.zeros,
                             bias_init=uniform_fan_in(self.channels))

  def _permute(self, x: jax.Array, axis: int = 1) -> jax.Array:
    """π: the identity, or the reversal (its own inverse) along the sequence axis."""
    return jnp.flip(x, axis=axis) if self.flip else x

  def affine_params(self, x: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """(a, b) for a sequence x (n, T, P) already in this block's order: row i depends on x_{<i}."""
    h = self.proj_in(x) + self._permute(self.pos_embed, axis=0)
    for layer in self.layers:
      h = layer(h)
    out = self.proj_out(h)
    out = jnp.concatenate([jnp.zeros_like(out[:, :1]), out[:, :-1]], axis=1)
    return jnp.split(out, 2, axis=-1)

  def __call__(self, x: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """x (n, T, P) → (z, log|det ∂z/∂x|) with z_i = (x_i − b_i) exp(−a_i); shapes (n, T, P), (n,)."""
    x = self._permute(x)
    a, b = self.affine_params(x)
    return self._permute((x - b) * jnp.exp(-a)), -jnp.sum(a, axis=(1, 2))

  def step(self, x: jax.Array, caches: List[Cache], i: jax.Array
           ) -> Tuple[Tuple[jax.Array, jax.Array], List[Cache]]:
    """(a_i, b_i) from the patch x_i (n, P) at position i (this block's order) and the caches."""
    h = self.proj_in(x) + jax.lax.dynamic_index_in_dim(self._permute(self.pos_embed, axis=0), i,
                                                        keepdims=False)
    new_caches = []
    for layer, cache in zip(self.layers, caches):
      h, cache = layer.step(h, cache, i)
      new_caches.append(cache)
    a, b = jnp.split(self.proj_out(h), 2, axis=-1)
    return (a, b), new_caches

  def reverse(self, z: jax.Array) -> jax.Array:
    """The exact inverse of `__call__`: z (n, T, P) → x, one position at a time."""
    z = self._permute(z)
    n = z.shape[0]
    heads = self.channels // self.head_dim
    empty = jnp.zeros((n, self.num_patches, heads, self.head_dim), z.dtype)
    caches = [(empty, empty)] * self.num_layers

    def body(block: 'MetaBlock', carry, z_next):
      x_i, caches, i = carry
      (a, b), caches = block.step(x_i, caches, i)
      x_next = z_next * jnp.exp(a) + b
      return (x_next, caches, i + 1), x_next

    scan = nn.scan(body, variable_broadcast='params', split_rngs={'params': False},
                   in_axes=1, out_axes=1)
    _, rest = scan(self, (z[:, 0], caches, jnp.zeros((), jnp.int32)), z[:, 1:])
    return self._permute(jnp.concatenate([z[:, :1], rest], axis=1))


class TarFlow(nn.Module):
  """TarFlow density q(x) on images (H, W, C) with a N(0, I) base on the scaled patches.

  Attributes:
    image_shape: (H, W, C), H and W multiples of patch_size.
    patch_size: p (2 in docs/method.md §8).
    channels: Transformer width (128), a multiple of head_dim (64).
    num_blocks: flow blocks, alternating sequence direction (Fassina et al.'s FFHQ flow: 1).
    layers_per_block: Transformer layers per block (8).
    head_dim, expansion: attention head size, MLP expansion (4).
    data_scale: x is divided by this before the flow (14 for σ_T = 7); its log-det is included.
  """
  image_shape: Shape
  patch_size: int = 2
  channels: int = 128
  num_blocks: int = 1
  layers_per_block: int = 8
  head_dim: int = 64
  expansion: int = 4
  data_scale: float = 14.

  @property
  def data_shape(self) -> Shape:
    return tuple(self.image_shape)

  @property
  def _num_patches(self) -> int:
    h, w, _ = self.image_shape
    return (h // self.patch_size) * (w // self.patch_size)

  def setup(self):
    h, w, c = self.image_shape
    if h % self.patch_size or w % self.patch_size:
      raise ValueError(f'TarFlow.image_shape {tuple(self.image_shape)}: H and W must be multiples '
                       f'of patch_size {self.patch_size}')
    if self.channels % self.head_dim:
      raise ValueError(f'TarFlow.channels {self.channels} must be a multiple of head_dim {self.head_dim}')
    if self.data_scale <= 0:
      raise ValueError(f'TarFlow.data_scale must be positive, got {self.data_scale}')
    self.blocks = [MetaBlock(self.patch_size ** 2 * c, self._num_patches, bool(k % 2), self.channels,
                             self.layers_per_block, self.head_dim, self.expansion)
                   for k in range(self.num_blocks)]

  def _check(self, x: jax.Array) -> None:
    if tuple(x.shape[1:]) != self.data_shape:
      raise ValueError(f'TarFlow expects images of shape (n, *{self.data_shape}), got {tuple(x.shape)}')

  def forward_and_log_det(self, x: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """Images x (n, H, W, C) → (z (n, T, P), log|det ∂z/∂x| (n,)), the scaling 1/data_scale included."""
    self._check(x)
    z = patchify(x / self.data_scale, self.patch_size)
    log_det = jnp.full(x.shape[:1], -math.prod(self.data_shape) * math.log(self.data_scale), x.dtype)
    for block in self.blocks:
      z, block_log_det = block(z)
      log_det = log_det + block_log_det
    return z, log_det

  def inverse(self, z: jax.Array) -> jax.Array:
    """The exact inverse of `forward_and_log_det`: z (n, T, P) → images (n, H, W, C)."""
    for block in reversed(self.blocks):
      z = block.reverse(z)
    return unpatchify(z, self.patch_size, self.data_shape) * self.data_scale

  def log_prob(self, x: jax.Array) -> jax.Array:
    """log q(x) for images x (n, H, W, C), shape (n,)."""
    z, log_det = self.forward_and_log_det(x)
    return -0.5 * jnp.sum(z ** 2, axis=(1, 2)) - 0.5 * z[0].size * math.log(2. * math.pi) + log_det

  def sample(self, rng: jax.Array, n: int) -> jax.Array:
    """n images x = flow⁻¹(z), z ~ N(0, I); shape (n, H, W, C)."""
    p_dim = self.patch_size ** 2 * self.image_shape[2]
    return self.inverse(jax.random.normal(rng, (n, self._num_patches, p_dim)))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.log_prob(x)
