"""The samplers: one driver, one method registry, one file per solver family.

  driver.py      the `Solver` protocol (an equinox pytree) and the one `Sampler` that runs every method
  methods.py     the method registry (`register_method`) and the one resolution of config.sampling
  grid.py        σ grids, the denoiser of a score model, the σ-grid solver base
  pc.py          score_sde's predictors / correctors and the PC solver (with PDS)     'pc'
  edm.py         EDM's Euler, Heun and the ancestral step                             'euler', 'heun', 'ancestral'
  dpm_solver.py  singlestep DPM-Solver and multistep DPM-Solver++                     'dpm_solver'
  ode.py         the probability-flow ODE with diffrax                                'ode'

A new solver family is one file registering its methods plus one import line below.
"""
from pds_jax.samplers import dpm_solver, edm, ode, pc  # noqa: F401  (each registers its methods)
