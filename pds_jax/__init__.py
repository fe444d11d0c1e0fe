"""pds_jax: preconditioned diffusion sampling (PDS) for score-based generative models in JAX/Flax.

The public API (README, "Using the library"); everything else is reached through its module.

  SDEs              VESDE, VPSDE, subVPSDE, get_sde                              (score_sde's sde_lib)
  sampling          get_sampling_fn, get_pc_sampler, pc_sample, sample_keys, NonFiniteSampleError
  solvers           Solver, Sampler, register_method, PCSolver, EulerSolver, HeunSolver, AncestralSolver,
                    DPMSolver, DPMSolverPP, ODESolver
  σ grids           karras_sigmas, logsnr_sigmas, denoiser_from_score
  PDS               Preconditioner, pds_alpha, compute_statistics, from_statistics, load_preconditioner
  likelihood        get_likelihood_fn
  inpainting        get_pc_inpainter, get_pc_colorizer
  exact reference   GaussianReference
"""
from pds_jax.controllable_generation import get_pc_colorizer, get_pc_inpainter
from pds_jax.gaussian import GaussianReference
from pds_jax.likelihood import get_likelihood_fn
from pds_jax.preconditioning import Preconditioner, compute_statistics, from_statistics, pds_alpha
from pds_jax.preconditioning import load as load_preconditioner
from pds_jax.samplers.dpm_solver import DPMSolver, DPMSolverPP
from pds_jax.samplers.driver import NonFiniteSampleError, Sampler, Solver, sample_keys
from pds_jax.samplers.edm import AncestralSolver, EulerSolver, HeunSolver
from pds_jax.samplers.grid import denoiser_from_score, karras_sigmas, logsnr_sigmas
from pds_jax.samplers.methods import register_method
from pds_jax.samplers.ode import ODESolver
from pds_jax.samplers.pc import PCSolver
from pds_jax.sampling import get_pc_sampler, get_sampling_fn, pc_sample
from pds_jax.sde_lib import VESDE, VPSDE, get_sde, subVPSDE

__version__ = '0.1.0'
__all__ = [
    'VESDE', 'VPSDE', 'subVPSDE', 'get_sde',
    'get_sampling_fn', 'get_pc_sampler', 'pc_sample', 'sample_keys', 'NonFiniteSampleError',
    'Solver', 'Sampler', 'register_method', 'PCSolver', 'EulerSolver', 'HeunSolver', 'AncestralSolver',
    'DPMSolver', 'DPMSolverPP', 'ODESolver',
    'karras_sigmas', 'logsnr_sigmas', 'denoiser_from_score',
    'Preconditioner', 'pds_alpha', 'compute_statistics', 'from_statistics', 'load_preconditioner',
    'get_likelihood_fn', 'get_pc_inpainter', 'get_pc_colorizer', 'GaussianReference',
]
