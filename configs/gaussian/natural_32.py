"""Exact Gaussian reference at 32×32×3 (σ_max 25.0 = Song & Ermon's rule, measured 24.94)."""
from configs.gaussian.default_gaussian_configs import get_gaussian_config


def get_config():
  return get_gaussian_config(image_size=32, sigma_max=25.)
