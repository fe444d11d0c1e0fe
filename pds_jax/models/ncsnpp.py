"""NCSN++ and DDPM++ (score_sde `models/ncsnpp.py`, Song et al., ICLR 2021), registered as 'ncsnpp'.

A U-Net of BigGAN or DDPM ResNet blocks with self-attention, FIR or naive resampling, optional
progressive growing on the output ('output_skip', 'residual') and input ('input_skip', 'residual')
sides, and Fourier (continuous VE) or sinusoidal time embeddings. Submodules are created in the
original order, so parameter paths match score_sde checkpoints.
"""
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from pds_jax.models import layers, layerspp, utils

conv3x3 = layerspp.conv3x3
default_initializer = layers.default_init
group_norm = layers.group_norm


@utils.register_model(name='ncsnpp')
class NCSNpp(nn.Module):
  """NCSN++ / DDPM++ model; the architecture is read from `config.model`."""
  config: ml_collections.ConfigDict

  @nn.compact
  def __call__(self, x: jax.Array, time_cond: jax.Array, train: bool = True) -> jax.Array:
    """x: (B, H, W, C) images; time_cond: (B,) noise levels σ (fourier) or time steps (positional).

    Returns the (B, H, W, C) output, divided by σ when `config.model.scale_by_sigma`.
    """
    config = self.config
    m = config.model
    act = layers.get_act(config)
    nf, ch_mult, num_res_blocks = m.nf, m.ch_mult, m.num_res_blocks
    num_resolutions = len(ch_mult)
    fir, fir_kernel, skip_rescale, init_scale = m.fir, m.fir_kernel, m.skip_rescale, m.init_scale
    resblock_type = m.resblock_type.lower()
    progressive = m.progressive.lower()
    progressive_input = m.progressive_input.lower()
    embedding_type = m.embedding_type.lower()
    for field, value, choices in [('progressive', progressive, ('none', 'output_skip', 'residual')),
                                  ('progressive_input', progressive_input, ('none', 'input_skip', 'residual')),
                                  ('embedding_type', embedding_type, ('fourier', 'positional')),
                                  ('resblock_type', resblock_type, ('ddpm', 'biggan'))]:
      if value not in choices:
        raise ValueError(f'config.model.{field} = {value!r} is unknown; choose one of {choices}.')
    combiner = functools.partial(layerspp.Combine, method=m.progressive_combine.lower())

    # Timestep / noise-level embedding; kept in float32, then cast to the compute dtype of x.
    if embedding_type == 'fourier':
      if not config.training.continuous:
        raise ValueError('Fourier features are only used for continuous training '
                         '(config.training.continuous is False); use embedding_type "positional".')
      used_sigmas = time_cond
      temb = layerspp.GaussianFourierProjection(embedding_size=nf, scale=m.fourier_scale)(jnp.log(used_sigmas))
    else:
      used_sigmas = utils.get_sigmas(config)[time_cond.astype(jnp.int32)]
      temb = layers.get_timestep_embedding(time_cond, nf)
    temb = temb.astype(x.dtype)

    if m.conditional:
      temb = nn.Dense(nf * 4, kernel_init=default_initializer())(temb)
      temb = nn.Dense(nf * 4, kernel_init=default_initializer())(act(temb))
    else:
      temb = None

    AttnBlock = functools.partial(layerspp.AttnBlockpp, init_scale=init_scale, skip_rescale=skip_rescale)
    Upsample = functools.partial(layerspp.Upsample, with_conv=m.resamp_with_conv, fir=fir, fir_kernel=fir_kernel)
    Downsample = functools.partial(layerspp.Downsample, with_conv=m.resamp_with_conv, fir=fir,
                                   fir_kernel=fir_kernel)
    pyramid_upsample = functools.partial(layerspp.Upsample, fir=fir, fir_kernel=fir_kernel,
                                         with_conv=progressive == 'residual')
    pyramid_downsample = functools.partial(layerspp.Downsample, fir=fir, fir_kernel=fir_kernel,
                                           with_conv=progressive_input == 'residual')
    if resblock_type == 'ddpm':
      ResnetBlock = functools.partial(layerspp.ResnetBlockDDPMpp, act=act, dropout=m.dropout,
                                      init_scale=init_scale, skip_rescale=skip_rescale)
    else:
      ResnetBlock = functools.partial(layerspp.ResnetBlockBigGANpp, act=act, dropout=m.dropout, fir=fir,
                                      fir_kernel=fir_kernel, init_scale=init_scale, skip_rescale=skip_rescale)

    def merge(a, b):
      """Residual merge of the progressive paths, rescaled by 1/√2 with skip_rescale."""
      return (a + b) / math.sqrt(2.) if skip_rescale else a + b

    def output_conv(h, channels, **kwargs):
      """GroupNorm → act → conv3x3 head of the output pyramid."""
      return conv3x3(act(group_norm(h)), channels, bias=True, **kwargs)

    if not config.data.centered:  # input in [0, 1]
      x = 2 * x - 1.

    # Downsampling block
    input_pyramid = x if progressive_input != 'none' else None
    hs = [conv3x3(x, nf)]
    for i_level in range(num_resolutions):
      for _ in range(num_res_blocks):
        h = ResnetBlock(out_ch=nf * ch_mult[i_level])(hs[-1], temb, train)
        if h.shape[1] in m.attn_resolutions:
          h = AttnBlock()(h)
        hs.append(h)

      if i_level != num_resolutions - 1:
        if resblock_type == 'ddpm':
          h = Downsample()(hs[-1])
        else:
          h = ResnetBlock(down=True)(hs[-1], temb, train)

        if progressive_input == 'input_skip':
          input_pyramid = pyramid_downsample()(input_pyramid)
          h = combiner()(input_pyramid, h)
        elif progressive_input == 'residual':
          input_pyramid = pyramid_downsample(out_ch=h.shape[-1])(input_pyramid)
          h = input_pyramid = merge(input_pyramid, h)
        hs.append(h)

    h = hs[-1]
    h = ResnetBlock()(h, temb, train)
    h = AttnBlock()(h)
    h = ResnetBlock()(h, temb, train)

    # Upsampling block
    pyramid = None
    for i_level in reversed(range(num_resolutions)):
      for _ in range(num_res_blocks + 1):
        h = ResnetBlock(out_ch=nf * ch_mult[i_level])(jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
      if h.shape[1] in m.attn_resolutions:
        h = AttnBlock()(h)

      if progressive == 'output_skip':
        if i_level != num_resolutions - 1:
          pyramid = pyramid_upsample()(pyramid)
        out = output_conv(h, x.shape[-1], init_scale=init_scale)
        pyramid = out if pyramid is None else pyramid + out
      elif progressive == 'residual':
        if i_level == num_resolutions - 1:
          pyramid = output_conv(h, h.shape[-1])
        else:
          pyramid = pyramid_upsample(out_ch=h.shape[-1])(pyramid)
          h = pyramid = merge(pyramid, h)

      if i_level != 0:
        if resblock_type == 'ddpm':
          h = Upsample()(h)
        else:
          h = ResnetBlock(up=True)(h, temb, train)

    if progressive == 'output_skip':
      h = pyramid
    else:
      h = conv3x3(act(group_norm(h)), x.shape[-1], init_scale=init_scale)

    if m.scale_by_sigma:
      h = h / used_sigmas.reshape((x.shape[0], *([1] * len(x.shape[1:]))))
    return h
