"""FIR up/down-sampling layers of StyleGAN2, as used by NCSN++ (score_sde `up_or_down_sampling.py`).

All arrays are NHWC, shape (B, H, W, C). A FIR kernel `k` is a 1-D list (separable, e.g. [1, 3, 3, 1])
or a 2-D array (default [1] * factor: nearest neighbour / box filter); it is normalised to sum to one
and scaled by gain (× factor² when up-sampling), so a constant image keeps its value.
"""
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pds_jax.models.layers import default_init

Array = jax.Array
_DIMS = ('NHWC', 'HWIO', 'NHWC')


def _setup_kernel(k: Optional[Sequence[float]], factor: int) -> np.ndarray:
  """The normalised 2-D FIR kernel (float32, square) of a 1-D or 2-D kernel (None: [1] * factor)."""
  k = np.asarray([1] * factor if k is None else k, dtype=np.float32)
  if k.ndim == 1:
    k = np.outer(k, k)
  if k.ndim != 2 or k.shape[0] != k.shape[1]:
    raise ValueError(f'FIR kernel must be 1-D or square 2-D, got shape {k.shape}.')
  return k / np.sum(k)


def upfirdn_2d(x: Array, k: np.ndarray, up: int = 1, down: int = 1, pad0: int = 0, pad1: int = 0) -> Array:
  """Upsample (insert up-1 zeros after each pixel), pad by (pad0, pad1) on H and W (crop if negative),
  convolve each channel with the 2-D FIR kernel k, keep every `down`-th pixel (as scipy's upfirdn).

  (B, H, W, C) → (B, (H·up + pad0 + pad1 - kh) // down + 1, ..., C).
  """
  C = x.shape[-1]
  zero = jnp.zeros((), x.dtype)
  # lax.pad's interior padding inserts the zeros; the last pixel's zeros go into the high padding.
  spatial = (pad0, pad1 + up - 1, up - 1)
  x = jax.lax.pad(x, zero, [(0, 0, 0), spatial, spatial, (0, 0, 0)])
  w = jnp.asarray(np.tile(k[::-1, ::-1, None, None], (1, 1, 1, C)), dtype=x.dtype)
  return jax.lax.conv_general_dilated(x, w, window_strides=(down, down), padding='VALID',
                                      dimension_numbers=_DIMS, feature_group_count=C)


def upsample_2d(x: Array, k: Optional[Sequence[float]] = None, factor: int = 2, gain: float = 1) -> Array:
  """Upsample by `factor` with the FIR filter k: (B, H, W, C) → (B, H·factor, W·factor, C)."""
  k = _setup_kernel(k, factor) * (gain * (factor ** 2))
  p = k.shape[0] - factor
  return upfirdn_2d(x, k, up=factor, pad0=(p + 1) // 2 + factor - 1, pad1=p // 2)


def downsample_2d(x: Array, k: Optional[Sequence[float]] = None, factor: int = 2, gain: float = 1) -> Array:
  """Downsample by `factor` with the FIR filter k: (B, H, W, C) → (B, H/factor, W/factor, C)."""
  k = _setup_kernel(k, factor) * gain
  p = k.shape[0] - factor
  return upfirdn_2d(x, k, down=factor, pad0=(p + 1) // 2, pad1=p // 2)


def upsample_conv_2d(x: Array, w: Array, k: Optional[Sequence[float]] = None, factor: int = 2,
                     gain: float = 1) -> Array:
  """Fused transposed convolution (stride `factor`) and FIR filtering of StyleGAN2.

  x: (B, H, W, inC); w: (kh, kw, inC, outC), square and odd → (B, H·factor, W·factor, outC).
  """
  convH, convW, inC, outC = w.shape
  if convH != convW or x.shape[-1] != inC:
    raise ValueError(f'upsample_conv_2d: weight shape {w.shape} does not fit input channels {x.shape[-1]}.')
  k = _setup_kernel(k, factor) * (gain * (factor ** 2))
  p = (k.shape[0] - factor) - (convW - 1)
  # The transposed convolution's kernel: spatially flipped, in/out channels swapped.
  w = jnp.transpose(w[::-1, ::-1], (0, 1, 3, 2))
  x = jax.lax.conv_transpose(x, w, strides=(factor, factor), padding='VALID', transpose_kernel=True,
                             dimension_numbers=_DIMS)
  return upfirdn_2d(x, k, pad0=(p + 1) // 2 + factor - 1, pad1=p // 2 + 1)


def conv_downsample_2d(x: Array, w: Array, k: Optional[Sequence[float]] = None, factor: int = 2,
                       gain: float = 1) -> Array:
  """Fused FIR filtering and strided convolution of StyleGAN2.

  x: (B, H, W, inC); w: (kh, kw, inC, outC), square and odd → (B, H/factor, W/factor, outC).
  """
  convH, convW, _, _ = w.shape
  if convH != convW:
    raise ValueError(f'conv_downsample_2d: weight must be square, got shape {w.shape}.')
  k = _setup_kernel(k, factor) * gain
  p = (k.shape[0] - factor) + (convW - 1)
  x = upfirdn_2d(x, k, pad0=(p + 1) // 2, pad1=p // 2)
  return jax.lax.conv_general_dilated(x, w, window_strides=(factor, factor), padding='VALID',
                                      dimension_numbers=_DIMS)


def naive_upsample_2d(x: Array, factor: int = 2) -> Array:
  """Nearest-neighbour upsampling: (B, H, W, C) → (B, H·factor, W·factor, C)."""
  _, H, W, C = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (x.shape[0], H, factor, W, factor, C))
  return jnp.reshape(x, (-1, H * factor, W * factor, C))


def naive_downsample_2d(x: Array, factor: int = 2) -> Array:
  """Mean pooling over factor × factor blocks: (B, H, W, C) → (B, H/factor, W/factor, C)."""
  _, H, W, C = x.shape
  x = jnp.reshape(x, (-1, H // factor, factor, W // factor, factor, C))
  return jnp.mean(x, axis=(2, 4))


class Conv2d(nn.Module):
  """Conv2d with optional fused FIR up- or down-sampling (StyleGAN2); params `weight`, `bias`."""
  fmaps: int
  kernel: int
  up: bool = False
  down: bool = False
  resample_kernel: Sequence[int] = (1, 3, 3, 1)
  use_bias: bool = True
  kernel_init: Callable = default_init()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.up and self.down:
      raise ValueError('Conv2d: up and down cannot both be set.')
    if self.kernel < 1 or self.kernel % 2 != 1:
      raise ValueError(f'Conv2d: kernel must be a positive odd size, got {self.kernel}.')
    w = self.param('weight', self.kernel_init, (self.kernel, self.kernel, x.shape[-1], self.fmaps))
    if self.up:
      x = upsample_conv_2d(x, w, k=self.resample_kernel)
    elif self.down:
      x = conv_downsample_2d(x, w, k=self.resample_kernel)
    else:
      x = jax.lax.conv_general_dilated(x, w, window_strides=(1, 1), padding='SAME', dimension_numbers=_DIMS)
    if self.use_bias:
      x = x + self.param('bias', jax.nn.initializers.zeros, (x.shape[-1],)).reshape((1, 1, 1, -1))
    return x
