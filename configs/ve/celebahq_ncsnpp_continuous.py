"""NCSN++ cont. (VE SDE) on CelebA-HQ 1024px; score_sde `configs/ve/celebahq_ncsnpp_continuous.py`."""
from configs.ve import ffhq_ncsnpp_continuous


def get_config():
  """The FFHQ 1024px config with the CelebA-HQ data and a summed loss."""
  config = ffhq_ncsnpp_continuous.get_config()
  config.training.reduce_mean = False
  config.data.dataset = 'CelebAHQ'
  config.data.tfrecords_path = '/atlas/u/yangsong/celeba_hq/-r10.tfrecords'
  return config
