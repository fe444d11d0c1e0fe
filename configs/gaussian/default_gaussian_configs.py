"""The exact Gaussian reference family: stationary Gaussian images with a natural (1/|k|²) spectrum.

The score is exact (pds_jax.gaussian), so these configs sample with no checkpoint and every sampler
can be scored exactly. VE SDE from σ_min = 0.01 to σ_max chosen by technique 1 of Song & Ermon
(2020): the largest pairwise distance of 2000 data draws (`gaussian.song_ermon_sigma_max`). The VP
variants (`*_vp.py`) use score_sde's VP SDE (β from 0.1 to 20, N = 1000) on the data centred to
[-1, 1], as score_sde's VP configs do; the exact score is then that of the centred law.
"""
from configs.default_cifar10_configs import get_default_configs


def get_gaussian_config(image_size: int, sigma_max: float, sde: str = 'vesde'):
  config = get_default_configs()
  training = config.training
  training.sde = sde
  training.continuous = True

  sampling = config.sampling
  sampling.method = 'pc'
  sampling.predictor = 'reverse_diffusion'
  sampling.corrector = 'langevin'
  sampling.snr = 0.16

  evaluate = config.eval
  evaluate.batch_size = 256
  evaluate.num_samples = 256

  data = config.data
  data.dataset = 'GaussianReference'
  data.image_size = image_size
  data.num_channels = 3
  data.centered = sde != 'vesde'
  data.pixel_mean = 0.45
  data.pixel_std = 0.25
  data.spectrum_exponent = 2.

  model = config.model
  model.name = 'gaussian_reference'
  model.sigma_min = 0.01
  del model['sigma_max']  # an int (50) in score_sde's defaults; ConfigDict won't cast it to float
  model.sigma_max = float(sigma_max)
  model.num_scales = 2000 if sde == 'vesde' else 1000
  return config
