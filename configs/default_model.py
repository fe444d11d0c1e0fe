"""Sampling the shipped default model (the README's main command): the small NCSN++ of
`configs/patches/natural_patches_ncsnpp_small.py`, trained with this project's --mode train on the
bundled 32×32 natural-image patches, with its PDS masks. See pds_jax/assets/natural_patches_32/.

`--mode compare` runs vanilla PC sampling with num_scales / vanilla_speed_up = 100 steps against PDS
with num_scales / speed_up = 50 steps, from the same seeds: on this model PDS at 50 steps matches
vanilla at 100 (benchmarks/default_model_steps.py), while vanilla at 50 steps is far off.
"""
import os

import pds_jax
from configs.patches.natural_patches_ncsnpp_small import get_config as get_training_config

ASSETS = os.path.join(os.path.dirname(pds_jax.__file__), 'assets', 'natural_patches_32')


def get_config():
  config = get_training_config()
  config.eval.checkpoint_path = os.path.join(ASSETS, 'checkpoints')
  config.eval.batch_size = 36
  config.eval.num_samples = 36
  config.eval.num_reference = 2000
  sampling = config.sampling
  sampling.freq_mask_path = os.path.join(ASSETS, 'freq_natural_patches_32.npy')
  sampling.space_mask_path = os.path.join(ASSETS, 'space_natural_patches_32.npy')
  sampling.vanilla_speed_up = 10.
  sampling.speed_up = 20.
  sampling.init_path = os.path.join(ASSETS, 'init')  # read-only: fit_init writes <workdir>/init, which sampling prefers
  # method 'ode' on this model (36 samples, 2000 reference patches): rtol = atol = 1e-5 (score_sde's, kept for its
  # configs) costs 346 NFE, 5e-3 costs 74 at the same SWD / FD / KID (within the 36-sample noise)
  sampling.ode_rtol = sampling.ode_atol = 5e-3
  # σ_T of Fassina et al.'s image runs (7 for data in [-1, 1]) in this model's [0, 1] range. The dip
  # procedure is no guide for images: random projections of 3072-d patches are already unimodal at
  # σ = 0.1 (measured; it returns the lower bound).
  config.init_aware.sigma_t = 3.5
  return config
