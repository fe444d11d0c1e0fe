"""DDPM without time conditioning (NCSNv2 technique 3) on CIFAR-10; score_sde `configs/vp/ddpm/cifar10_unconditional.py`."""
from configs.vp.ddpm import cifar10


def get_config():
  """DDPM whose network ignores the time step."""
  config = cifar10.get_config()
  config.model.conditional = False
  return config
