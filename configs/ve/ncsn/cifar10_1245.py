"""NCSN (v1) with NCSNv2 techniques 1, 2, 4, 5 on CIFAR-10; score_sde `configs/ve/ncsn/cifar10_1245.py`."""
from configs.ve.ncsn import cifar10_124


def get_config():
  """Techniques 1, 2, 4 plus an EMA of the weights."""
  config = cifar10_124.get_config()
  config.model.ema_rate = 0.999
  return config
