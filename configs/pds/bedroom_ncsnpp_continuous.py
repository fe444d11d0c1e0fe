"""PDS's official LSUN bedroom 256px config (fudan-zvg/PDS `configs/ve/bedroom_ncsnpp_continuous.py`)."""
from configs.ve import bedroom_ncsnpp_continuous


def get_config():
  """score_sde's `configs.ve.bedroom_ncsnpp_continuous` with the sampling batch of the official PDS config.

  PDS keeps score_sde's model and sampler: reverse_diffusion + langevin, n_steps_each 1, noise_removal,
  snr 0.075, σ 0.01…378, 2000 scales.
  speed_up and the mask paths keep the defaults of PDS's `main.py` flags (1, none); alpha is its 5
  (pds_jax's own default is the α(N) rule of `sampling.pds_alpha`).
  README run (frequency mask only): --config.sampling.speed_up=12
    --config.sampling.freq_mask_path=bedroom_freq.npy
  """
  config = bedroom_ncsnpp_continuous.get_config()
  config.eval.batch_size = 2
  config.eval.num_samples = 10
  config.sampling.alpha = 5.
  return config
