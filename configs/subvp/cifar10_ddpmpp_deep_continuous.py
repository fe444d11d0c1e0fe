"""DDPM++ cont. deep (sub-VP SDE) on CIFAR-10; score_sde `configs/subvp/cifar10_ddpmpp_deep_continuous.py`."""
from configs.vp import cifar10_ddpmpp_deep_continuous


def get_config():
  """`configs.vp.cifar10_ddpmpp_deep_continuous` with the sub-VP SDE."""
  config = cifar10_ddpmpp_deep_continuous.get_config()
  config.training.sde = 'subvpsde'
  return config
