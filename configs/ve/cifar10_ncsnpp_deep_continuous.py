"""NCSN++ cont. deep (VE SDE) on CIFAR-10; score_sde `configs/ve/cifar10_ncsnpp_deep_continuous.py`."""
from configs.ve import cifar10_ncsnpp_continuous


def get_config():
  """NCSN++ cont. with 8 residual blocks per resolution."""
  config = cifar10_ncsnpp_continuous.get_config()
  config.training.n_iters = 950001
  config.model.num_res_blocks = 8
  return config
