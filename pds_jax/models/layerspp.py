"""Layers of NCSN++ / DDPM++ (score_sde `models/layerspp.py`), in modern flax.linen. NHWC arrays."""
import math
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from pds_jax.models import layers, up_or_down_sampling

Array = jax.Array
conv1x1 = layers.ddpm_conv1x1
conv3x3 = layers.ddpm_conv3x3
default_init = layers.default_init


class GaussianFourierProjection(nn.Module):
  """Random Fourier features of log-noise levels: (B,) → (B, 2·embedding_size); `W` is not trained."""
  embedding_size: int = 256
  scale: float = 1.0

  @nn.compact
  def __call__(self, x: Array) -> Array:
    W = self.param('W', jax.nn.initializers.normal(stddev=self.scale), (self.embedding_size,))
    W = jax.lax.stop_gradient(W)
    x_proj = x[:, None] * W[None, :] * 2 * jnp.pi
    return jnp.concatenate([jnp.sin(x_proj), jnp.cos(x_proj)], axis=-1)


class Combine(nn.Module):
  """Combines a skip input x with y: 1×1 conv of x to y's channels, then concatenation or sum."""
  method: str = 'cat'

  @nn.compact
  def __call__(self, x: Array, y: Array) -> Array:
    if self.method not in ('cat', 'sum'):
      raise ValueError(f'Combine: method {self.method!r} not recognized; use "cat" or "sum".')
    h = conv1x1(x, y.shape[-1])
    return jnp.concatenate([h, y], axis=-1) if self.method == 'cat' else h + y


class AttnBlockpp(layers.AttnBlock):
  """DDPM's self-attention block with NCSN++'s GroupNorm (min(C // 4, 32) groups)."""
  normalize: layers.Normalize = layers.group_norm


class Upsample(nn.Module):
  """2× upsampling (B, H, W, C) → (B, 2H, 2W, out_ch): nearest (+ conv3x3) or FIR (+ fused conv)."""
  out_ch: Optional[int] = None
  with_conv: bool = False
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    B, H, W, C = x.shape
    out_ch = self.out_ch if self.out_ch else C
    if not self.fir:
      h = jax.image.resize(x, (B, H * 2, W * 2, C), 'nearest')
      if self.with_conv:
        h = conv3x3(h, out_ch)
    elif not self.with_conv:
      h = up_or_down_sampling.upsample_2d(x, self.fir_kernel, factor=2)
    else:
      h = up_or_down_sampling.Conv2d(out_ch, kernel=3, up=True, resample_kernel=self.fir_kernel,
                                     use_bias=True, kernel_init=default_init())(x)
    if h.shape != (B, 2 * H, 2 * W, out_ch):
      raise ValueError(f'Upsample: expected output shape {(B, 2 * H, 2 * W, out_ch)}, got {h.shape} '
                       f'(out_ch differs from the input channels only with with_conv=True).')
    return h


class Downsample(nn.Module):
  """2× downsampling (B, H, W, C) → (B, H/2, W/2, out_ch): avg pool / strided conv3x3, or FIR (+ fused conv)."""
  out_ch: Optional[int] = None
  with_conv: bool = False
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    B, H, W, C = x.shape
    out_ch = self.out_ch if self.out_ch else C
    if not self.fir:
      if self.with_conv:
        x = conv3x3(x, out_ch, stride=2)
      else:
        x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2), padding='SAME')
    elif not self.with_conv:
      x = up_or_down_sampling.downsample_2d(x, self.fir_kernel, factor=2)
    else:
      x = up_or_down_sampling.Conv2d(out_ch, kernel=3, down=True, resample_kernel=self.fir_kernel,
                                     use_bias=True, kernel_init=default_init())(x)
    if x.shape != (B, H // 2, W // 2, out_ch):
      raise ValueError(f'Downsample: expected output shape {(B, H // 2, W // 2, out_ch)}, got {x.shape} '
                       f'(out_ch differs from the input channels only with with_conv=True).')
    return x


class ResnetBlockDDPMpp(layers.ResnetBlockDDPM):
  """DDPM's ResNet block with NCSN++'s GroupNorm, dropout 0.1 and optional 1/√2 skip rescaling."""
  normalize: layers.Normalize = layers.group_norm
  dropout: float = 0.1


class ResnetBlockBigGANpp(nn.Module):
  """BigGAN-style ResNet block, optionally up- or down-sampling by 2 (FIR or naive) in both paths.

  (B, H, W, C) → (B, H', W', out_ch) with H' = 2H (up), H/2 (down) or H.
  """
  act: Callable
  up: bool = False
  down: bool = False
  out_ch: Optional[int] = None
  dropout: float = 0.1
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)
  skip_rescale: bool = True
  init_scale: float = 0.

  def _resample(self, x: Array) -> Array:
    if self.up:
      return (up_or_down_sampling.upsample_2d(x, self.fir_kernel, factor=2) if self.fir
              else up_or_down_sampling.naive_upsample_2d(x, factor=2))
    if self.down:
      return (up_or_down_sampling.downsample_2d(x, self.fir_kernel, factor=2) if self.fir
              else up_or_down_sampling.naive_downsample_2d(x, factor=2))
    return x

  @nn.compact
  def __call__(self, x: Array, temb: Optional[Array] = None, train: bool = True) -> Array:
    C = x.shape[-1]
    out_ch = self.out_ch if self.out_ch else C
    h = self.act(layers.group_norm(x))
    h, x = self._resample(h), self._resample(x)
    h = conv3x3(h, out_ch)
    if temb is not None:  # add a bias to each feature map conditioned on the time embedding
      h += nn.Dense(out_ch, kernel_init=default_init())(self.act(temb))[:, None, None, :]
    h = self.act(layers.group_norm(h))
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    h = conv3x3(h, out_ch, init_scale=self.init_scale)
    if C != out_ch or self.up or self.down:
      x = conv1x1(x, out_ch)
    return (x + h) / math.sqrt(2.) if self.skip_rescale else x + h
