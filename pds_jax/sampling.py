"""score_sde's `sampling` module: `get_sampling_fn`, `get_pc_sampler`, the predictor and corrector registries.

Every score_sde-style import keeps working from here; the samplers themselves live in
`pds_jax.samplers` (one file per solver family, each registering its methods). `get_sampling_fn`
resolves `config.sampling` once (`samplers.methods.resolve`), builds the registered method's solver
and runs it under the one driver (`samplers.driver.Sampler`), with PDS where the method defines it.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Dict, Optional, Tuple, Union

import jax
import numpy as np

from pds_jax import sde_lib
from pds_jax.preconditioning import Preconditioner, pds_alpha  # noqa: F401
from pds_jax.samplers import grid, methods
from pds_jax.samplers.driver import (NonFiniteSampleError, Sampler, ScoreFn, Solver, normal,  # noqa: F401
                                     sample_keys, split)
from pds_jax.samplers.methods import Start, get_method, register_method  # noqa: F401
from pds_jax.samplers.pc import (PDS_VARIANTS, AncestralSamplingPredictor, AnnealedLangevinDynamics,  # noqa: F401
                                 Corrector, EulerMaruyamaPredictor, LangevinCorrector, NoneCorrector,
                                 NonePredictor, PCSampler, PCSolver, Predictor, ReverseDiffusionPredictor,
                                 get_corrector, get_pc_sampler, get_predictor, pc_sample, register_corrector,
                                 register_predictor, speed_up_schedule, truncated_num_steps)

# What PDS masks a sampler gets: a preconditioner as it is, or masks(α) -> preconditioner, called
# with α(N) of the built method's N (or config.sampling.alpha); None: no PDS.
Masks = Union[None, Preconditioner, Callable[[float], Preconditioner]]
Init = Optional[Tuple[object, float]]  # (q_T, σ_T) of `pds_jax.init_aware.store.load_init`


def resolve_alpha(alpha: Optional[float], num_steps: int) -> float:
  """config.sampling.alpha, or α(N) of the method's N steps when it is None (the default)."""
  return pds_alpha(num_steps) if alpha is None else float(alpha)


def apply_masks(masks: Masks, alpha: Optional[float], num_steps: int) -> Tuple[Preconditioner, Optional[float]]:
  """(the preconditioner, its α) of `masks` for a method of N = num_steps steps: the one place α(N) is
  computed (None: no PDS, the identity; a preconditioner as it is: its α is the caller's)."""
  if masks is None:
    return Preconditioner(), None
  if isinstance(masks, Preconditioner):
    return masks, None
  alpha = resolve_alpha(alpha, num_steps)
  return masks(alpha), alpha


# Why ODE-like solvers on VE models start from a fitted q_T (`sampling.init = 'auto'`, `Solver.fitted_start`).
VE_PRIOR_WARNING = (
    'sampling.method %s samples this VE model from its prior along the probability-flow ODE: on the shipped model '
    "50-53 %% of heun's samples (12-17 %% of edm_stochastic's and restart's) were pure noise, because the trained "
    'denoiser fails at large sigma (its error is 9-75x that of a linear filter at sigma 18-50; a sampler that '
    're-noises every step washes that error out, an ODE solver carries it to the end; docs/results.md, "Noise '
    'samples"). Fit an init (--mode fit_init) and sample with --config.sampling.init=auto or spectral_gaussian, '
    'or use %s, or dpm_solver with dpm_solver_variant=dpm_solver++_sde.')


_WARNED = set()


def _start(resolved: methods.Resolved, sde: sde_lib.SDE, init: Init) -> Tuple[object, Start]:
  """(q_T, Start(t(σ_T), σ_T)) of a fitted init, or (None, Start(T, σ(T))) for the prior."""
  sigma_max = float(sde.edm_sigma(np.float64(sde.T)))
  if resolved.init == methods.PRIOR or (resolved.init == methods.AUTO and init is None):
    return None, Start(sde.T, sigma_max)
  if init is None:
    raise ValueError(f'config.sampling.init = {resolved.init!r} needs its q_T: pass init=(q_T, sigma_T) from '
                     'pds_jax.init_aware.store.load_init (pds_jax.sampling_run.SamplingRun does).')
  q_t, sigma_t = init
  if not sigma_t <= sigma_max * (1 + 1e-6):
    raise ValueError(f'the init\'s sigma_T = {sigma_t} exceeds the largest noise level {sigma_max:.6g} of the '
                     f'model\'s {type(sde).__name__}.')
  return q_t, Start(min(float(sde.edm_time(np.float64(sigma_t))), sde.T), float(sigma_t))


def _fitted_start(resolved: methods.Resolved, sde: sde_lib.SDE, eps: float) -> bool:
  """`Solver.fitted_start` of the configured solver, from a probe built at the prior (a tuned schedule, made for
  the run's own start, is not read for it)."""
  if resolved.fields.get('schedule') == 'tuned':
    resolved = dataclasses.replace(resolved, fields={**resolved.fields, 'schedule': None})
  return resolved.build(sde, eps, Start(sde.T, float(sde.edm_sigma(np.float64(sde.T))))).fitted_start


class SamplingFn:
  """What `get_sampling_fn` returns: fn(rng, score_fn, progress=False, callback=None) -> (samples, nfe).

  Attributes: `sampler` (the driver), `preconditioner`, `settings` (the resolved method settings
  for run.json / report.json) and `nfe` (score evaluations per sample; None for the adaptive ODE
  until it ran, then the mean of its last call).
  """

  def __init__(self, sampler: Sampler, preconditioner: Preconditioner, num_chunks: int, settings: Dict):
    self.sampler, self.preconditioner, self.num_chunks, self.settings = sampler, preconditioner, num_chunks, settings
    self.nfe = sampler.solver.static_nfe

  def __call__(self, rng: jax.Array, score_fn: ScoreFn, progress: bool = False,
               callback: Optional[Callable] = None, x_init: Optional[jax.Array] = None):
    samples, self.nfe = self.sampler(rng, score_fn, self.preconditioner, num_chunks=self.num_chunks,
                                     progress=progress, callback=callback, x_init=x_init)
    return samples, self.nfe


def _init_name(kind: str, q_t) -> str:
  """The init a run used: 'auto' resolves to 'prior' or the fitted kind (its class's `kind`)."""
  if kind != methods.AUTO:
    return kind
  return methods.PRIOR if q_t is None else methods.INIT_AWARE_DEFAULT


def get_sampling_fn(config, sde: sde_lib.SDE, shape, inverse_scaler: Callable, eps: float,
                    preconditioner: Masks = None, axis_name: Optional[str] = None, pmap: bool = False,
                    mesh: Optional[jax.sharding.Mesh] = None, init: Init = None) -> SamplingFn:
  """score_sde/PDS's `get_sampling_fn` for the registered method `config.sampling.method`.

  `sde` and `eps` are score_sde's (N = model.num_scales). The method reads its own fields of
  config.sampling (declared in its file under `pds_jax.samplers`):
    pc          predictor, corrector, snr, n_steps_each, probability_flow, pds_variant; N steps from
                num_steps (eps kept) or PDS's speed_up k (N = int(num_scales / k), eps · k).
    ode         score_sde's probability-flow sampler: diffrax ode_method, ode_rtol, ode_atol.
    euler, heun, ancestral   EDM's σ-grid samplers: num_steps nodes from σ(T) to σ(eps) on the
                `schedule` grid (karras with rho, logsnr, time_uniform, tuned).
    dpm_solver  dpm_solver_variant ('dpm_solver': singlestep, 'dpm_solver++': multistep) of
                solver_order 1/2/3 on the same grids.
    init_aware  the alias of the earlier init-aware sampler: init_sampler on init_nodes Karras nodes
                (init_rho) from σ_T to init_sigma_min, init from sampling.init.
  and every method registered in `pds_jax.samplers` since (`methods.method_names()`).
  sampling.init: 'prior' (the SDE's prior at T), or a q_T fitted by --mode fit_init, given as
  init=(q_T, σ_T); 'auto' (the default): on VE models the given q_T for the solvers that follow the
  probability-flow ODE from σ_max (`Solver.fitted_start`: the deterministic ones, edm_stochastic, restart),
  the prior otherwise (with a warning when such a solver starts a VE model from its prior).
  preconditioner: PDS masks (`Masks`): α(N) is computed here, once, from the built method's N
  unless sampling.alpha is set. PDS applies to the methods registered with pds=True
  (`methods.pds_methods()`) and is refused elsewhere.

  Raises:
    ValueError naming the field for any invalid setting, before anything is compiled.
  """
  s = config.sampling
  resolved = methods.resolve(s)
  if resolved.init == methods.AUTO and (not isinstance(sde, sde_lib.VESDE) or not _fitted_start(resolved, sde, eps)):
    init = None  # 'auto': the prior for the re-noising methods and VP / sub-VP models
  q_t, start = _start(resolved, sde, init)
  solver = resolved.build(sde, eps, start)
  if q_t is None and isinstance(sde, sde_lib.VESDE) and solver.fitted_start and resolved.method.name not in _WARNED:
    _WARNED.add(resolved.method.name)  # once per method and process
    logging.warning(VE_PRIOR_WARNING, resolved.method.name, ' or '.join(methods.prior_start_methods()))
  solver = solver.with_axis_name(axis_name)
  preconditioner, alpha = apply_masks(preconditioner, s.get('alpha'), solver.num_steps)
  solver.check_preconditioner(preconditioner)
  if not preconditioner.is_identity and not isinstance(sde, sde_lib.VESDE):
    logging.warning('PDS with a %s: on the exact 64² VP Gaussian reference PC + PDS needed 196 score evaluations '
                    'to come within 5 %% of PC-2000, the plain PC sampler 93 (docs/results.md); PDS targets VE '
                    'models.', type(sde).__name__)
  sampler = Sampler(solver, shape, inverse_scaler, init=q_t, pmap=pmap, mesh=mesh)
  fields = resolved.settings()
  if 'schedule' in fields and fields['schedule'] is None:  # the grid the method used
    fields['schedule'] = grid.default_schedule(resolved.method.name)
  settings = {**fields, 'sde': type(sde).__name__, 'num_steps': solver.num_steps,
              'nfe': solver.static_nfe, 'init': _init_name(resolved.init, q_t), 'init_rule': resolved.init,
              'sigma_t': None if q_t is None else start.sigma,
              'pds_variant': s.get('pds_variant', 'official'), 'preconditioned': not preconditioner.is_identity,
              'alpha': alpha, 'alpha_rule': alpha is not None and s.get('alpha') is None, **solver.settings()}
  return SamplingFn(sampler, preconditioner, s.get('num_chunks', 1), settings)
