"""score_sde's score networks in modern flax.linen; importing the package fills the model registry.

Registered names (`config.model.name`): 'ncsnpp' (NCSN++ / DDPM++), 'ddpm', 'ncsn', 'ncsnv2_64',
'ncsnv2_128', 'ncsnv2_256'. Build one with `utils.init_model(rng, config)`.
"""
from pds_jax.models import ddpm, ncsnpp, ncsnv2, utils  # noqa: F401  (registers the models)
