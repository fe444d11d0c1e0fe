"""NCSN (v1) with NCSNv2 technique 5 (EMA) on CelebA; score_sde `configs/ve/ncsn/celeba_5.py`."""
from configs.ve.ncsn import celeba


def get_config():
  """NCSN (v1) with an EMA of the weights."""
  config = celeba.get_config()
  config.model.ema_rate = 0.999
  return config
