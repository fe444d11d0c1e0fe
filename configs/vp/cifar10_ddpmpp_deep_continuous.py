"""DDPM++ cont. deep (VP SDE) on CIFAR-10; score_sde `configs/vp/cifar10_ddpmpp_deep_continuous.py`."""
from configs.vp import cifar10_ddpmpp_continuous


def get_config():
  """DDPM++ cont. with 8 residual blocks per resolution."""
  config = cifar10_ddpmpp_continuous.get_config()
  config.training.n_iters = 950001
  config.model.num_res_blocks = 8
  return config
