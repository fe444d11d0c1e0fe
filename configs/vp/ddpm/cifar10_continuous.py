"""DDPM cont. (VP SDE) on CIFAR-10; score_sde `configs/vp/ddpm/cifar10_continuous.py`."""
from configs.vp.ddpm import cifar10


def get_config():
  """DDPM trained on continuous times."""
  config = cifar10.get_config()
  config.training.continuous = True
  config.sampling.predictor = 'euler_maruyama'
  return config
