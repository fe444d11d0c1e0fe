"""DDPM (discrete VP) on LSUN church_outdoor 256px; score_sde `configs/vp/ddpm/church.py`."""
from configs.vp.ddpm import bedroom


def get_config():
  """The bedroom config with the church data."""
  config = bedroom.get_config()
  config.data.category = 'church_outdoor'
  return config
