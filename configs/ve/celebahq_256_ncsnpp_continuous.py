"""NCSN++ cont. (VE SDE) on CelebA-HQ 256px; score_sde `configs/ve/celebahq_256_ncsnpp_continuous.py`."""
from configs.ve import ffhq_256_ncsnpp_continuous


def get_config():
  """The FFHQ 256px config with the CelebA-HQ data."""
  config = ffhq_256_ncsnpp_continuous.get_config()
  config.data.dataset = 'CelebAHQ'
  config.data.tfrecords_path = '/home/yangsong/ncsc/celebahq/r08.tfrecords'
  return config
