"""DDPM cont. (sub-VP SDE) on CIFAR-10; score_sde `configs/subvp/cifar10_ddpm_continuous.py`."""
from configs.vp.ddpm import cifar10_continuous


def get_config():
  """`configs.vp.ddpm.cifar10_continuous` with the sub-VP SDE."""
  config = cifar10_continuous.get_config()
  config.training.sde = 'subvpsde'
  return config
