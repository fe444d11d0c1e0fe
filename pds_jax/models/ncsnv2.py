"""NCSNv1 and NCSNv2 RefineNets (score_sde `models/ncsnv2.py`).

Registered names: 'ncsnv2_64' (images < 96 px), 'ncsnv2_128', 'ncsnv2_256' (Song & Ermon, 2020) and
'ncsn' (NCSNv1, Song & Ermon, 2019: noise-conditional InstanceNorm++ in every block).

All four are one ResNet backbone + RefineNet decoder that differ in their stage lists. Deviations
from score_sde, whose 'ncsn' cannot be initialised: its ConditionalResidualBlock calls the norm class
with (h, y) instead of instantiating it in the 'down' branch (here the block's second normalization
is a submodule, as in the unconditional block), and the conditional norm reads the undefined
`config.model.num_classes` (here: `num_scales` unless set; see `normalization.get_normalization`).
"""
from typing import ClassVar, Sequence, Tuple

import flax.linen as nn
import jax
import ml_collections

from pds_jax.models import layers, normalization, utils

conv3x3 = layers.ncsn_conv3x3


@utils.register_model(name='ncsnv2_64')
class NCSNv2(nn.Module):
  """NCSNv2 for images < 96 px: ResNet backbone (with dilations) and a RefineNet U-Net decoder.

  Each backbone stage (channel multiplier, dilation) has two ResidualBlocks, the first of which
  downsamples (except in the first stage; with dilation > 1 it keeps the resolution). The decoder
  has one RefineBlock per stage, deepest first, with `refine_mults` · nf channels.
  """
  config: ml_collections.ConfigDict
  stages: ClassVar[Sequence[Tuple[int, int]]] = ((1, 1), (2, 1), (2, 2), (2, 4))
  refine_mults: ClassVar[Sequence[int]] = (2, 2, 2, 1)
  conditional: ClassVar[bool] = False

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array, train: bool = True) -> jax.Array:
    """x: (B, H, W, C) images; labels: (B,) int noise-level indices (σ_max first).

    Returns the (B, H, W, C) output, divided by sigmas[labels] when `config.model.scale_by_sigma`.
    """
    config = self.config
    nf = config.model.nf
    act = layers.get_act(config)
    normalizer = normalization.get_normalization(config, conditional=self.conditional)
    interpolation = config.model.interpolation
    if self.conditional:
      residual_block, refine_block, y = layers.ConditionalResidualBlock, layers.CondRefineBlock, labels
    else:
      residual_block, refine_block, y = layers.ResidualBlock, layers.RefineBlock, None

    h = x if config.data.centered else 2 * x - 1.
    h = conv3x3(h, nf, stride=1, bias=True)

    # ResNet backbone
    feats = []
    for i, (mult, dilation) in enumerate(self.stages):
      h = residual_block(mult * nf, resample='down' if i else None, act=act, normalization=normalizer,
                         dilation=dilation)(h, y)
      h = residual_block(mult * nf, resample=None, act=act, normalization=normalizer, dilation=dilation)(h, y)
      feats.append(h)

    # U-Net decoder with RefineBlocks, deepest stage first
    ref = None
    for i, (feat, mult) in enumerate(zip(reversed(feats), self.refine_mults)):
      inputs = [feat] if ref is None else [feat, ref]
      ref = refine_block(feat.shape[1:3], mult * nf, act=act, interpolation=interpolation, start=i == 0,
                         end=i == len(feats) - 1, normalizer=normalizer if self.conditional else None)(inputs, y)

    h = act(layers.apply_norm(normalizer, ref, y))
    h = conv3x3(h, x.shape[-1])

    if config.model.scale_by_sigma:  # not with the DDPM loss
      h = h / utils.get_sigmas(config)[labels].reshape((x.shape[0], *([1] * len(x.shape[1:]))))
    return h


@utils.register_model(name='ncsnv2_128')
class NCSNv2_128(NCSNv2):  # pylint: disable=invalid-name
  """NCSNv2 for 96-128 px images: one more downsampling stage, 4·nf channels at the bottom."""
  stages: ClassVar[Sequence[Tuple[int, int]]] = ((1, 1), (2, 1), (2, 1), (4, 2), (4, 4))
  refine_mults: ClassVar[Sequence[int]] = (4, 2, 2, 1, 1)


@utils.register_model(name='ncsnv2_256')
class NCSNv2_256(NCSNv2):  # pylint: disable=invalid-name
  """NCSNv2 for 129-256 px images: two more downsampling stages than NCSNv2_64."""
  stages: ClassVar[Sequence[Tuple[int, int]]] = ((1, 1), (2, 1), (2, 1), (2, 1), (4, 2), (4, 4))
  refine_mults: ClassVar[Sequence[int]] = (4, 2, 2, 2, 1, 1)


@utils.register_model(name='ncsn')
class NCSN(NCSNv2):
  """NCSNv1: the NCSNv2_64 architecture with noise-conditional InstanceNorm++ everywhere."""
  conditional: ClassVar[bool] = True
