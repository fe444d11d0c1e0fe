"""NCSN++ cont. (VE SDE) on LSUN church_outdoor 256px; score_sde `configs/ve/church_ncsnpp_continuous.py`."""
from configs.ve import bedroom_ncsnpp_continuous


def get_config():
  """The bedroom config with the church data and its σ_max."""
  config = bedroom_ncsnpp_continuous.get_config()
  config.data.category = 'church_outdoor'
  config.model.sigma_max = 380
  return config
