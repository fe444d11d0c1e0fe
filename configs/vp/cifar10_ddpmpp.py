"""DDPM++ (DDPM, discrete VP) on CIFAR-10; score_sde `configs/vp/cifar10_ddpmpp.py`."""
from configs.vp import cifar10_ddpmpp_continuous


def get_config():
  """DDPM++ trained on the discrete DDPM objective."""
  config = cifar10_ddpmpp_continuous.get_config()
  config.training.continuous = False
  config.sampling.predictor = 'ancestral_sampling'
  return config
