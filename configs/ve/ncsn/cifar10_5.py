"""NCSN (v1) with NCSNv2 technique 5 (EMA) on CIFAR-10; score_sde `configs/ve/ncsn/cifar10_5.py`."""
from configs.ve.ncsn import cifar10


def get_config():
  """NCSN (v1) with an EMA of the weights."""
  config = cifar10.get_config()
  config.model.ema_rate = 0.999
  return config
