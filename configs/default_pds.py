"""PDS sampling fields shared by every config family (official PDS `main.py` flag defaults)."""
import ml_collections
from ml_collections import config_dict


def add_pds_fields(sampling: ml_collections.ConfigDict) -> None:
  """Adds the preconditioned-sampling fields to `config.sampling` in place.

  speed_up: k of PDS; the sampler runs N = int(model.num_scales / k) steps, eps scaled by k.
  alpha: mask strength α ≥ 1 (METHOD §2): M = α / (m̂ + α - 1); large α is the vanilla sampler.
  freq_mask_path / space_mask_path: official `.npy` statistics of shape (C, H, W); None = identity.
  pds_variant: 'official' (M Mᵀ on the whole reverse drift) or 'marginal_preserving'
    (drift f - ½ g² (I + M Mᵀ) s, noise g M ξ: keeps every marginal p_t for a fixed M).
  num_chunks: the time loop runs as this many jitted `lax.scan` chunks with a progress bar
    between them; the samples are bit-identical for every value.
  """
  sampling.speed_up = 1.
  sampling.alpha = 5.
  sampling.freq_mask_path = config_dict.placeholder(str)
  sampling.space_mask_path = config_dict.placeholder(str)
  sampling.pds_variant = 'official'
  sampling.num_chunks = 10


def add_scale_fields(evaluate: ml_collections.ConfigDict) -> None:
  """Adds the multi-device sampling fields to `config.eval` in place.

  parallel: 'sharding' (jit over a jax.sharding.Mesh of the local devices) or 'pmap' (score_sde's
    path); both give the same samples. eval.batch_size is the per-host batch of one round and must
    be divisible by the number of local devices.
  wait_timeout: seconds host 0 waits for the other hosts' shards before writing the merged report.
  """
  evaluate.parallel = 'sharding'
  evaluate.wait_timeout = 24 * 3600.
