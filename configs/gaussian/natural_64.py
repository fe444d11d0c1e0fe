"""Exact Gaussian reference at 64×64×3 (σ_max 48.7 = Song & Ermon's rule, measured 48.69)."""
from configs.gaussian.default_gaussian_configs import get_gaussian_config


def get_config():
  return get_gaussian_config(image_size=64, sigma_max=48.7)
