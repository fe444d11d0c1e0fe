"""PDS's official CIFAR-10 config (fudan-zvg/PDS `configs/ve/cifar10_ncsnpp_deep_continuous.py`)."""
from configs.ve import cifar10_ncsnpp_deep_continuous


def get_config():
  """score_sde's `configs.ve.cifar10_ncsnpp_deep_continuous` with the sampling batch of the official PDS config.

  PDS keeps score_sde's model and sampler: reverse_diffusion + langevin, n_steps_each 1, noise_removal,
  snr 0.16, σ 0.01…50, 1000 scales.
  speed_up and the mask paths keep the defaults of PDS's `main.py` flags (1, none); alpha is its 5
  (pds_jax's own default is the α(N) rule of `sampling.pds_alpha`).
  Preconditioning in the paper: frequency mask only.
  """
  config = cifar10_ncsnpp_deep_continuous.get_config()
  config.eval.batch_size = 960
  config.sampling.alpha = 5.
  return config
