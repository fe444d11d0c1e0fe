"""The DDPM U-Net (Ho et al., 2020) of score_sde (`models/ddpm.py`), registered as 'ddpm'.

The flax version of https://github.com/hojonathanho/diffusion (diffusion_tf/models/unet.py).
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from pds_jax.models import layers, layerspp, normalization, utils

conv3x3 = layers.ddpm_conv3x3
default_initializer = layers.default_init


@utils.register_model(name='ddpm')
class DDPM(nn.Module):
  """DDPM model architecture; the configuration is read from `config.model`."""
  config: ml_collections.ConfigDict

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array, train: bool = True) -> jax.Array:
    """x: (B, H, W, C) images; labels: (B,) time steps (integer indices when scale_by_sigma).

    Returns the (B, H, W, C) output, divided by sigmas[labels] when `config.model.scale_by_sigma`.
    """
    config = self.config
    m = config.model
    act = layers.get_act(config)
    norm = normalization.get_normalization(config)
    normalize = lambda h: norm()(h)
    nf, ch_mult, num_res_blocks = m.nf, m.ch_mult, m.num_res_blocks
    num_resolutions = len(ch_mult)

    AttnBlock = functools.partial(layers.AttnBlock, normalize=normalize)
    ResnetBlock = functools.partial(layers.ResnetBlockDDPM, act=act, normalize=normalize, dropout=m.dropout)

    if m.conditional:  # timestep embedding, float32, then cast to the compute dtype of x
      temb = layers.get_timestep_embedding(labels, nf).astype(x.dtype)
      temb = nn.Dense(nf * 4, kernel_init=default_initializer())(temb)
      temb = nn.Dense(nf * 4, kernel_init=default_initializer())(act(temb))
    else:
      temb = None

    h = x if config.data.centered else 2 * x - 1.  # centered input is in [-1, 1], else in [0, 1]

    # Downsampling block
    hs = [conv3x3(h, nf)]
    for i_level in range(num_resolutions):
      for _ in range(num_res_blocks):
        h = ResnetBlock(out_ch=nf * ch_mult[i_level])(hs[-1], temb, train)
        if h.shape[1] in m.attn_resolutions:
          h = AttnBlock()(h)
        hs.append(h)
      if i_level != num_resolutions - 1:
        hs.append(layerspp.Downsample(with_conv=m.resamp_with_conv)(hs[-1]))

    h = hs[-1]
    h = ResnetBlock()(h, temb, train)
    h = AttnBlock()(h)
    h = ResnetBlock()(h, temb, train)

    # Upsampling block
    for i_level in reversed(range(num_resolutions)):
      for _ in range(num_res_blocks + 1):
        h = ResnetBlock(out_ch=nf * ch_mult[i_level])(jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
      if h.shape[1] in m.attn_resolutions:
        h = AttnBlock()(h)
      if i_level != 0:
        h = layerspp.Upsample(with_conv=m.resamp_with_conv)(h)

    h = act(normalize(h))
    h = conv3x3(h, x.shape[-1], init_scale=0.)

    if m.scale_by_sigma:
      # Divide the output by sigmas (NCSN loss); the DDPM loss needs no scaling.
      h = h / utils.get_sigmas(config)[labels].reshape((x.shape[0], *([1] * len(x.shape[1:]))))
    return h
