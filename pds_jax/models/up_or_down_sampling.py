"""FIR up/down-sampling layers of StyleGAN2, as used by NCSN++ (score_sde `up_or_down_sampling.py`).

All arrays are NHWC, shape (B, H, W, C). A FIR kernel `k` is a 1-D list (separable, e.g. [1, 3, 3, 1])
or a 2-D array (default [1] * factor: nearest neighbour / box filter); it is normalised to sum to one
and scaled by gain (× factor² when up-sampling), so a constant image keeps its value.
"""
from typing import Callable, List, Optional, Sequence, Tuple

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


def _polyphase_taps(length: int, kh: int, up: int, down: int, pad0: int,
                    pad1: int) -> Tuple[int, List[List[Tuple[int, int]]], int, Tuple[int, int]]:
  """How `upfirdn_2d` reads one spatial axis of length `length` through a kh-tap filter.

  Output pixel o = up·m + r (phase r < up) is Σ_t kf[t] · x[m·down + s] over the pairs (t, s) of phase r,
  kf the flipped filter; taps that would meet an inserted zero are left out (one of up, down is 1).

  Returns (output length, per phase its (t, s) pairs, pixels per phase m_max, (low, high) zero padding of x
  so that every read index m·down + s + low is inside the padded axis).
  """
  out = (length * up + pad0 + pad1 - kh) // down + 1
  phases = [[(t, (r + t - pad0) // up) for t in range(kh) if (r + t - pad0) % up == 0] for r in range(up)]
  m_max = -(-out // up)
  offsets = [s for phase in phases for _, s in phase]
  low = max(0, -min(offsets))
  return out, phases, m_max, (low, max(0, (m_max - 1) * down + max(offsets) + 1 - length))


def upfirdn_2d(x: Array, k: np.ndarray, up: int = 1, down: int = 1, pad0: int = 0, pad1: int = 0) -> Array:
  """Upsample (insert up-1 zeros after each pixel), pad by (pad0, pad1) on H and W (crop if negative),
  convolve each channel with the 2-D FIR kernel k (kh, kw), keep every `down`-th pixel (as scipy's upfirdn).

  Computed polyphase: each output phase is a weighted sum of shifted (strided) slices of the input, one
  per filter tap that meets an input pixel, so no zeros are inserted, no skipped pixel is computed and no
  grouped convolution is run (all three are slow on XLA:CPU). One of `up`, `down` must be 1.

  (B, H, W, C) → (B, (H·up + pad0 + pad1 - kh) // down + 1, (W·up + pad0 + pad1 - kw) // down + 1, C).
  """
  if up > 1 and down > 1:
    raise ValueError(f'upfirdn_2d: up ({up}) or down ({down}) must be 1.')
  B, H, W, C = x.shape
  kf = k[::-1, ::-1]
  out_h, phases_h, m_h, pad_h = _polyphase_taps(H, k.shape[0], up, down, pad0, pad1)
  out_w, phases_w, m_w, pad_w = _polyphase_taps(W, k.shape[1], up, down, pad0, pad1)
  x = jnp.pad(x, [(0, 0), pad_h, pad_w, (0, 0)])

  def phase(taps_h: List[Tuple[int, int]], taps_w: List[Tuple[int, int]]) -> Array:
    """(B, m_h, m_w, C): one output phase; zeros if no tap meets an input pixel."""
    terms = [float(kf[th, tw]) * jax.lax.slice(
        x, (0, sh + pad_h[0], sw + pad_w[0], 0),
        (B, sh + pad_h[0] + (m_h - 1) * down + 1, sw + pad_w[0] + (m_w - 1) * down + 1, C), (1, down, down, 1))
             for th, sh in taps_h for tw, sw in taps_w]
    return sum(terms[1:], terms[0]) if terms else jnp.zeros((B, m_h, m_w, C), x.dtype)

  # phases (r, q) → pixel (up·m + r, up·n + q): stack to (B, m_h, up, m_w, up, C) and merge.
  y = jnp.stack([jnp.stack([phase(th, tw) for tw in phases_w], axis=3) for th in phases_h], axis=2)
  return jnp.reshape(y, (B, m_h * up, m_w * up, C))[:, :out_h, :out_w]


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
