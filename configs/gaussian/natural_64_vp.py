"""Exact Gaussian reference at 64×64×3 with score_sde's VP SDE (β 0.1 → 20, N = 1000), data centred to [-1, 1]."""
from configs.gaussian.default_gaussian_configs import get_gaussian_config


def get_config():
  return get_gaussian_config(image_size=64, sigma_max=48.7, sde='vpsde')
