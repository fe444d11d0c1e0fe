"""Common layers of score_sde's score networks (DDPM, NCSNv1/v2), in modern flax.linen.

Module classes, creation order and initialisers follow score_sde's `models/layers.py`, so the
auto-generated parameter paths (`Conv_0/kernel`, `NIN_0/W`, `RefineBlock_0/CRPBlock_0/...`) are those
of the original checkpoints. Feature maps are NHWC, shape (B, H, W, C).
"""
import functools
import math
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
# A normalization applied to a (B, H, W, C) map; it creates its module in the caller's scope.
Normalize = Callable[[Array], Array]


def get_act(config) -> Callable[[Array], Array]:
  """The activation function named by `config.model.nonlinearity` (elu, relu, lrelu, swish)."""
  name = config.model.nonlinearity.lower()
  acts = {'elu': nn.elu, 'relu': nn.relu, 'swish': nn.swish,
          'lrelu': functools.partial(nn.leaky_relu, negative_slope=0.2)}
  if name not in acts:
    raise NotImplementedError(f'config.model.nonlinearity = {config.model.nonlinearity!r} is unknown; '
                              f'choose one of {sorted(acts)}.')
  return acts[name]


def default_init(scale: float = 1.):
  """The initialisation of DDPM: variance scaling (scale, fan_avg, uniform); scale 0 becomes 1e-10."""
  scale = 1e-10 if scale == 0 else scale
  return jax.nn.initializers.variance_scaling(scale, 'fan_avg', 'uniform')


def ncsn_init(scale: float = 1.):
  """PyTorch's default conv initialisation, as in NCSNv1/v2: variance scaling (scale/3, fan_in, uniform)."""
  scale = 1e-10 if scale == 0 else scale
  return jax.nn.initializers.variance_scaling(1 / 3 * scale, 'fan_in', 'uniform')


def _conv(x: Array, out_planes: int, kernel_size: int, *, ncsn: bool, stride: int = 1, bias: bool = True,
          dilation: int = 1, init_scale: float = 1.) -> Array:
  """A 'SAME' `nn.Conv` with DDPM initialisation (zero bias) or NCSN's PyTorch-style one.

  PyTorch draws the bias like the kernel; NCSN takes the bias from a kernel-shaped draw, [0, 0, 0, :].
  """
  shape = (kernel_size, kernel_size)
  if ncsn:
    kernel_init = ncsn_init(init_scale)
    kernel_shape = shape + (x.shape[-1], out_planes)
    bias_init = lambda key, _, dtype=jnp.float32: kernel_init(key, kernel_shape, dtype)[0, 0, 0, :]
  else:
    kernel_init, bias_init = default_init(init_scale), jax.nn.initializers.zeros
  return nn.Conv(out_planes, kernel_size=shape, strides=(stride, stride), padding='SAME', use_bias=bias,
                 kernel_dilation=(dilation, dilation), kernel_init=kernel_init, bias_init=bias_init)(x)


ncsn_conv1x1 = functools.partial(_conv, kernel_size=1, ncsn=True)
ncsn_conv3x3 = functools.partial(_conv, kernel_size=3, ncsn=True)
ddpm_conv1x1 = functools.partial(_conv, kernel_size=1, ncsn=False)
ddpm_conv3x3 = functools.partial(_conv, kernel_size=3, ncsn=False)


class GroupNorm(nn.Module):
  """flax's `nn.GroupNorm` (same parameters `scale`, `bias` of shape (C,), epsilon, float32 statistics,
  variance E[x²] - E[x]² clipped at 0, output dtype), for (B, ..., C) inputs.

  The statistics are summed per channel over the spatial axes first, then over the channels of each
  group on the (B, C) sums; flax reduces a (B, ..., G, C/G) view over (..., C/G) at once, which XLA:CPU
  runs about half as fast.
  """
  num_groups: int = 32
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: Array) -> Array:
    B, C = x.shape[0], x.shape[-1]
    if C % self.num_groups:
      raise ValueError(f'GroupNorm: {self.num_groups} groups do not divide the {C} channels of {x.shape}.')
    scale = self.param('scale', jax.nn.initializers.ones, (C,))
    bias = self.param('bias', jax.nn.initializers.zeros, (C,))
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    spatial = tuple(range(1, x.ndim - 1))
    count = math.prod(x.shape[1:-1]) * (C // self.num_groups)

    def group_mean(channel_sums: Array) -> Array:
      """(B, C) per-channel sums → (B, C): the mean of each channel's group."""
      sums = jnp.sum(jnp.reshape(channel_sums, (B, self.num_groups, -1)), axis=-1)
      return jnp.repeat(sums / count, C // self.num_groups, axis=-1)

    mean = group_mean(jnp.sum(xf, axis=spatial))
    var = jnp.maximum(0., group_mean(jnp.sum(xf * xf, axis=spatial)) - mean * mean)
    mul = jax.lax.rsqrt(var + self.epsilon) * scale
    shape = (B,) + (1,) * len(spatial) + (C,)
    y = (xf - jnp.reshape(mean, shape)) * jnp.reshape(mul, shape) + bias
    return y.astype(jnp.result_type(x, scale, bias))


def group_norm(x: Array) -> Array:
  """NCSN++'s GroupNorm: min(C // 4, 32) groups, flax's epsilon 1e-6; module `GroupNorm_<i>`."""
  return GroupNorm(num_groups=min(x.shape[-1] // 4, 32))(x)


###########################################################################
# RefineNet blocks of NCSNv1 (noise-conditional, `Cond*`) and NCSNv2.
# https://github.com/ermongroup/ncsn, https://github.com/ermongroup/ncsnv2
# One implementation each; the conditional variant (a normalizer taking the noise-level index y)
# is a subclass only so that its parameters carry NCSNv1's module names.
###########################################################################


def apply_norm(normalizer: Callable[[], nn.Module], h: Array, y: Optional[Array]) -> Array:
  """Applies a fresh normalizer module, conditioned on the labels y when given."""
  return normalizer()(h) if y is None else normalizer()(h, y)


class CRPBlock(nn.Module):
  """Chained residual pooling (RefineNet). NCSNv2: max pool; NCSNv1 (`normalizer` set): norm + avg pool."""
  features: int
  n_stages: int
  act: Callable = nn.relu
  normalizer: Optional[Callable[[], nn.Module]] = None

  @nn.compact
  def __call__(self, x: Array, y: Optional[Array] = None) -> Array:
    x = self.act(x)
    path = x
    for _ in range(self.n_stages):
      if self.normalizer is None:
        path = nn.max_pool(path, window_shape=(5, 5), strides=(1, 1), padding='SAME')
      else:
        path = apply_norm(self.normalizer, path, y)
        path = nn.avg_pool(path, window_shape=(5, 5), strides=(1, 1), padding='SAME')
      path = ncsn_conv3x3(path, self.features, bias=False)
      x = path + x
    return x


class CondCRPBlock(CRPBlock):
  """Noise-conditional CRPBlock of NCSNv1."""


class RCUBlock(nn.Module):
  """Residual conv units (RefineNet): n_blocks × [ (norm) → act → conv3x3 ] × n_stages + skip."""
  features: int
  n_blocks: int
  n_stages: int
  act: Callable = nn.relu
  normalizer: Optional[Callable[[], nn.Module]] = None

  @nn.compact
  def __call__(self, x: Array, y: Optional[Array] = None) -> Array:
    for _ in range(self.n_blocks):
      residual = x
      for _ in range(self.n_stages):
        if self.normalizer is not None:
          x = apply_norm(self.normalizer, x, y)
        x = self.act(x)
        x = ncsn_conv3x3(x, self.features, bias=False)
      x = x + residual
    return x


class CondRCUBlock(RCUBlock):
  """Noise-conditional RCUBlock of NCSNv1."""


class MSFBlock(nn.Module):
  """Multi-resolution fusion: (norm) → conv3x3 → resize to `shape` (H, W), summed over the inputs."""
  shape: Sequence[int]
  features: int
  interpolation: str = 'bilinear'
  normalizer: Optional[Callable[[], nn.Module]] = None

  @nn.compact
  def __call__(self, xs: Sequence[Array], y: Optional[Array] = None) -> Array:
    methods = {'bilinear': 'bilinear', 'nearest_neighbor': 'nearest'}
    if self.interpolation not in methods:
      raise ValueError(f'Interpolation {self.interpolation!r} does not exist; choose one of {sorted(methods)}.')
    sums = jnp.zeros((xs[0].shape[0], *self.shape, self.features), xs[0].dtype)
    for x in xs:
      h = x if self.normalizer is None else apply_norm(self.normalizer, x, y)
      h = ncsn_conv3x3(h, self.features, bias=True)
      h = jax.image.resize(h, (h.shape[0], *self.shape, h.shape[-1]), methods[self.interpolation])
      sums = sums + h
    return sums


class CondMSFBlock(MSFBlock):
  """Noise-conditional MSFBlock of NCSNv1."""


class RefineBlock(nn.Module):
  """RefineNet block of NCSNv2: RCU per input → multi-resolution fusion → CRP → output RCU."""
  output_shape: Sequence[int]
  features: int
  act: Callable = nn.relu
  interpolation: str = 'bilinear'
  start: bool = False
  end: bool = False
  normalizer: Optional[Callable[[], nn.Module]] = None

  @nn.compact
  def __call__(self, xs: Sequence[Array], y: Optional[Array] = None) -> Array:
    if self.normalizer is None:
      rcu, msf, crp = RCUBlock, MSFBlock, CRPBlock
    else:
      rcu, msf, crp = CondRCUBlock, CondMSFBlock, CondCRPBlock
    hs = [rcu(x.shape[-1], n_blocks=2, n_stages=2, act=self.act, normalizer=self.normalizer)(x, y) for x in xs]
    if self.start:
      h = hs[0]
    else:
      h = msf(self.output_shape, self.features, self.interpolation, normalizer=self.normalizer)(hs, y)
    h = crp(self.features, n_stages=2, act=self.act, normalizer=self.normalizer)(h, y)
    return rcu(self.features, n_blocks=3 if self.end else 1, n_stages=2, act=self.act,
               normalizer=self.normalizer)(h, y)


class CondRefineBlock(RefineBlock):
  """Noise-conditional RefineBlock of NCSNv1."""


class ConvMeanPool(nn.Module):
  """Conv (flax default init) followed by 2×2 mean pooling: (B, H, W, C) → (B, H/2, W/2, output_dim)."""
  output_dim: int
  kernel_size: int = 3
  biases: bool = True

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    output = nn.Conv(features=self.output_dim, kernel_size=(self.kernel_size, self.kernel_size),
                     strides=(1, 1), padding='SAME', use_bias=self.biases)(inputs)
    return sum([output[:, ::2, ::2, :], output[:, 1::2, ::2, :],
                output[:, ::2, 1::2, :], output[:, 1::2, 1::2, :]]) / 4.


class ResidualBlock(nn.Module):
  """ResNet block of the NCSNv2 backbone; `normalization` is a module factory.

  resample 'down' halves H and W (ConvMeanPool) unless dilation > 1, where it only changes channels.
  """
  output_dim: int
  normalization: Callable[[], nn.Module]
  resample: Optional[str] = None
  act: Callable = nn.elu
  dilation: int = 1

  @nn.compact
  def __call__(self, x: Array, y: Optional[Array] = None) -> Array:
    if self.resample not in (None, 'down'):
      raise ValueError(f'ResidualBlock: resample must be None or "down", got {self.resample!r}.')
    norm = functools.partial(apply_norm, self.normalization, y=y)
    conv = functools.partial(ncsn_conv3x3, dilation=self.dilation)
    h = self.act(norm(x))
    if self.resample == 'down':
      h = self.act(norm(conv(h, h.shape[-1])))
      if self.dilation > 1:
        return conv(h, self.output_dim) + conv(x, self.output_dim)
      h = ConvMeanPool(output_dim=self.output_dim)(h)
      return h + ConvMeanPool(output_dim=self.output_dim, kernel_size=1)(x)
    if self.output_dim == x.shape[-1]:
      shortcut = x
    elif self.dilation > 1:
      shortcut = conv(x, self.output_dim)
    else:
      shortcut = ncsn_conv1x1(x, self.output_dim)
    h = self.act(norm(conv(h, self.output_dim)))
    return conv(h, self.output_dim) + shortcut


class ConditionalResidualBlock(ResidualBlock):
  """Noise-conditional ResidualBlock of NCSNv1 (the normalization takes the labels y)."""


###########################################################################
# Layers of DDPM: https://github.com/hojonathanho/diffusion (diffusion_tf/nn.py)
###########################################################################


def get_timestep_embedding(timesteps: Array, embedding_dim: int, max_positions: int = 10000) -> Array:
  """Sinusoidal embedding of (B,) timesteps (any real values) → (B, embedding_dim), float32."""
  if timesteps.ndim != 1:
    raise ValueError(f'get_timestep_embedding: timesteps must have shape (B,), got {timesteps.shape}.')
  half_dim = embedding_dim // 2
  emb = math.log(max_positions) / (half_dim - 1)
  emb = jnp.exp(jnp.arange(half_dim, dtype=jnp.float32) * -emb)
  emb = timesteps[:, None] * emb[None, :]
  emb = jnp.concatenate([jnp.sin(emb), jnp.cos(emb)], axis=1)
  if embedding_dim % 2 == 1:  # zero pad
    emb = jnp.pad(emb, [[0, 0], [0, 1]])
  return emb


class NIN(nn.Module):
  """Network-in-network: a per-pixel dense layer (..., C) → (..., num_units), params `W`, `b`."""
  num_units: int
  init_scale: float = 0.1

  @nn.compact
  def __call__(self, x: Array) -> Array:
    W = self.param('W', default_init(scale=self.init_scale), (x.shape[-1], self.num_units))
    b = self.param('b', jax.nn.initializers.zeros, (self.num_units,))
    return jnp.einsum('...c,cd->...d', x, W) + b


class AttnBlock(nn.Module):
  """Self-attention over all H·W positions (DDPM), with a residual connection (÷√2 if skip_rescale)."""
  normalize: Normalize
  skip_rescale: bool = False
  init_scale: float = 0.

  @nn.compact
  def __call__(self, x: Array) -> Array:
    B, H, W, C = x.shape
    h = self.normalize(x)
    q, k, v = NIN(C)(h), NIN(C)(h), NIN(C)(h)
    w = jnp.einsum('bhwc,bHWc->bhwHW', q, k) * (int(C) ** (-0.5))
    w = jnp.reshape(w, (B, H, W, H * W))
    w = jax.nn.softmax(w, axis=-1)
    w = jnp.reshape(w, (B, H, W, H, W))
    h = jnp.einsum('bhwHW,bHWc->bhwc', w, v)
    h = NIN(C, init_scale=self.init_scale)(h)
    return (x + h) / math.sqrt(2.) if self.skip_rescale else x + h


class ResnetBlockDDPM(nn.Module):
  """The ResNet block of DDPM: (B, H, W, C) → (B, H, W, out_ch), with a time-embedding bias."""
  act: Callable
  normalize: Normalize
  out_ch: Optional[int] = None
  dropout: float = 0.5
  skip_rescale: bool = False
  init_scale: float = 0.

  @nn.compact
  def __call__(self, x: Array, temb: Optional[Array] = None, train: bool = True) -> Array:
    C = x.shape[-1]
    out_ch = self.out_ch if self.out_ch else C
    h = self.act(self.normalize(x))
    h = ddpm_conv3x3(h, out_ch)
    if temb is not None:  # add a bias to each feature map conditioned on the time embedding
      h += nn.Dense(out_ch, kernel_init=default_init())(self.act(temb))[:, None, None, :]
    h = self.act(self.normalize(h))
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    h = ddpm_conv3x3(h, out_ch, init_scale=self.init_scale)
    if C != out_ch:
      x = NIN(out_ch)(x)
    return (x + h) / math.sqrt(2.) if self.skip_rescale else x + h
