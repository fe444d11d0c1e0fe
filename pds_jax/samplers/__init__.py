"""The samplers: one driver, one method registry, one file per solver family.

  driver.py      the `Solver` protocol (an equinox pytree) and the one `Sampler` that runs every method
  methods.py     the method registry (`register_method`) and the one resolution of config.sampling
  grid.py        σ grids, the denoiser of a score model, the σ-grid solver base (+ its Langevin corrector)
  pc.py          score_sde's predictors / correctors and the PC solver (with PDS)     'pc'
  edm.py         EDM's Euler, Heun and the ancestral step                             'euler', 'heun', 'ancestral'
  dpm_solver.py  singlestep DPM-Solver, multistep DPM-Solver++ and its SDE form        'dpm_solver'
  edm_stochastic.py  EDM's stochastic sampler (Algorithm 2: churn, then Heun)        'edm_stochastic'
  restart.py     Restart sampling (Xu et al. 2023): Heun plus restart intervals       'restart'
  ode.py         the probability-flow ODE with diffrax                                'ode'
  unipc.py       UniPC: multistep predictor-corrector, data prediction               'unipc'
  ipndm.py       iPNDM: Adams-Bashforth multistep with warm start                     'ipndm'

A new solver family is one file registering its methods plus one import line below.
"""
from pds_jax.samplers import dpm_solver, edm, edm_stochastic, ode, pc, restart  # noqa: F401  (each registers its methods)
from pds_jax.samplers import unipc  # noqa: F401  'unipc'
from pds_jax.samplers import ipndm  # noqa: F401  'ipndm'
from pds_jax.samplers import tune  # noqa: F401  --mode tune_schedule's fields (tune_*)
