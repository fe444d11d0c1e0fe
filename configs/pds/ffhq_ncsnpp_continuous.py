"""PDS's official FFHQ 1024px config (fudan-zvg/PDS `configs/ve/ffhq_ncsnpp_continuous.py`)."""
from configs.ve import ffhq_ncsnpp_continuous


def get_config():
  """score_sde's `configs.ve.ffhq_ncsnpp_continuous` with the sampling batch of the official PDS config.

  PDS keeps score_sde's model and sampler: reverse_diffusion + langevin, n_steps_each 1, noise_removal,
  snr 0.15, σ 0.01…1348, 2000 scales.
  speed_up and the mask paths keep the defaults of PDS's `main.py` flags (1, none); alpha is its 5
  (pds_jax's own default is the α(N) rule of `sampling.pds_alpha`).
  README run (frequency and space masks): --config.sampling.speed_up=30
    --config.sampling.freq_mask_path=ffhq_freq.npy --config.sampling.space_mask_path=ffhq_space.npy
  """
  config = ffhq_ncsnpp_continuous.get_config()
  config.eval.batch_size = 1
  config.eval.num_samples = 4
  config.sampling.alpha = 5.
  return config
