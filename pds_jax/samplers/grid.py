"""σ grids and the σ-grid solver base: the EDM view of any score_sde SDE (docs/method.md §9, §10).

Every fast solver steps in EDM's variables (`sde_lib.SDE.edm_sigma`): x̃ = x / m(t) is x_0 + σ ε,
and the denoiser of a score model is D(x̃, σ) = x̃ + σ² m s(m x̃, t(σ)) (`denoiser_from_score`), so one
implementation serves VE (m = 1), VP and sub-VP. A `SigmaGridSolver` runs on a decreasing grid
σ_0 = σ(t_start) > … > σ_last ≥ 0; a step to σ = 0 is the denoising step x̃' = D(x̃, σ_min) (1 NFE),
EDM's `i < num_steps - 1` rule and score_sde's `denoise`.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from pds_jax import sde_lib
from pds_jax.samplers import pc
from pds_jax.samplers.driver import ScoreFn, Solver, split
from pds_jax.samplers.methods import Context, declare_field, declared_fields
from pds_jax.utils import batch_mul

NUM_STEPS = declare_field('num_steps', None, int, 'steps of the method (σ-grid methods: grid nodes; None: PC '
                                                  "uses speed_up, the others their default); NFE follows")
RHO = declare_field('rho', 7., float, 'ρ of the Karras grid σ(T) → σ(eps)')
NOISE_REMOVAL = declare_field('noise_removal', True, bool, "score_sde's final denoising step (σ-grid methods: a "
                                                           'last step to σ = 0)')
SCHEDULE = declare_field('schedule', None, str, "the σ grid: 'karras' (ρ = rho), 'logsnr' (uniform in log σ), "
                                                "'time_uniform' (uniform in the SDE's t) or 'tuned' (schedule_path, "
                                                "from --mode tune_schedule); None: the method's measured default")
SCHEDULE_PATH = declare_field('schedule_path', None, str, "the JSON of --mode tune_schedule read by schedule 'tuned'")
SCHEDULES = ('karras', 'logsnr', 'time_uniform', 'tuned')
GRID_FIELDS = (NUM_STEPS, RHO, NOISE_REMOVAL, SCHEDULE, SCHEDULE_PATH)
LANGEVIN_STEPS = declare_field('langevin_steps', 0, int, "σ-grid SDE methods (ancestral, dpm_solver++_sde): score_sde's "
                                                        'Langevin corrector steps (step size from sampling.snr) at each '
                                                        'node σ_i <= langevin_sigma_max, before the step from it; 0: none')
LANGEVIN_SIGMA_MAX = declare_field('langevin_sigma_max', None, float, 'the largest grid node that gets '
                                                                     'sampling.langevin_steps (None: every node)')
LANGEVIN_FIELDS = (LANGEVIN_STEPS, LANGEVIN_SIGMA_MAX, 'snr')


# ----------------------------------------------------------------------------- σ grids


def karras_sigmas(sigma_max: float, sigma_min: float, num_nodes: int, rho: float = 7.,
                  append_zero: bool = True) -> np.ndarray:
  """The EDM time steps σ_i = (σ_max^{1/ρ} + i/(n-1) (σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ, i < n (EDM eq. 5).

  Computed in float64 as EDM does. With `append_zero` (EDM's `t_N = 0`) the grid has n + 1
  entries and a sampler's last step goes to σ = 0: n steps, 2n - 1 Heun evaluations.
  """
  if not 0 < sigma_min < sigma_max:
    raise ValueError(f'karras_sigmas: need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, '
                     f'sigma_max={sigma_max}.')
  if int(num_nodes) != num_nodes or num_nodes < 2:
    raise ValueError(f'karras_sigmas: num_nodes must be an integer >= 2, got {num_nodes}.')
  if not rho > 0:
    raise ValueError(f'karras_sigmas: rho must be > 0, got {rho}.')
  i = np.arange(num_nodes, dtype=np.float64)
  inv = 1. / rho
  sigmas = (sigma_max ** inv + i / (num_nodes - 1) * (sigma_min ** inv - sigma_max ** inv)) ** rho
  return np.concatenate([sigmas, [0.]]) if append_zero else sigmas


def truncate_sigmas(sigmas, sigma_t: float, start_at_sigma_t: bool = True) -> np.ndarray:
  """A decreasing grid cut at σ_T, for a sampler started from x_T ~ q_T ≈ p_{σ_T}.

  `start_at_sigma_t=True`: σ_T followed by the nodes below it, so the first step starts exactly
  where x_T lives. `False`: the nodes ≤ σ_T only, as the toy code of Fassina et al. does
  (`build_sigma_schedule`: its x_T, drawn at σ_T, enters the sampler at the largest node ≤ σ_T).
  """
  sigmas = np.asarray(sigmas, np.float64)
  if sigmas.ndim != 1 or np.any(np.diff(sigmas) >= 0):
    raise ValueError(f'truncate_sigmas: sigmas must be a strictly decreasing 1-D grid, got shape {sigmas.shape}.')
  smallest = sigmas[sigmas > 0].min()
  if not sigma_t > smallest:
    raise ValueError(f'truncate_sigmas: sigma_T = {sigma_t} must exceed the smallest positive node '
                     f'sigma_min = {smallest:.6g} of the grid.')
  below = sigmas[sigmas < sigma_t] if start_at_sigma_t else sigmas[sigmas <= sigma_t]
  return np.concatenate([[sigma_t], below]) if start_at_sigma_t else below


def logsnr_sigmas(sigma_max: float, sigma_min: float, num_nodes: int) -> np.ndarray:
  """σ_i uniform in λ = -log σ (half the log-SNR; DPM-Solver's 'logSNR' steps), i < n, in float64."""
  if not 0 < sigma_min < sigma_max or num_nodes < 2:
    raise ValueError(f'logsnr_sigmas: need 0 < sigma_min < sigma_max and >= 2 nodes, got {sigma_min}, {sigma_max}, '
                     f'{num_nodes}.')
  return np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), num_nodes))


def time_uniform_sigmas(sde: sde_lib.SDE, t_start: float, t_end: float, num_nodes: int) -> np.ndarray:
  """σ(t_i) for t_i uniform in the SDE's time from t_start to t_end (DPM-Solver's 'time_uniform'), in float64."""
  return np.asarray(sde.edm_sigma(np.linspace(np.float64(t_start), np.float64(t_end), num_nodes)), np.float64)


# The σ grid when sampling.schedule is unset: logSNR-uniform nodes for every deterministic solver on every
# SDE, measured on the 64² exact Gaussian (docs/results.md, "Few-step defaults"; KL per dimension, floor
# 0.0029): VE DPM-Solver++(2M) 0.074 / 0.030 / 0.011 / 0.0032 at NFE 4 / 5 / 6 / 8 on logsnr against
# 0.37 / 0.084 / 0.019 / 0.0050 on Karras ρ 7 (the peers' best, k-diffusion's and diffusers' on their
# 'exponential' σ's, are this grid); Euler, Heun (at 5 and 15 NFE), UniPC, iPNDM alike; on VP logsnr beats
# Karras 1.3-6x and time_uniform 6-13x. The stochastic samplers keep the grid of their papers.
DEFAULT_SCHEDULE = 'logsnr'
METHOD_SCHEDULES = {'ancestral': 'karras', 'edm_stochastic': 'karras', 'restart': 'karras'}


def default_schedule(method: str) -> str:
  """The σ grid of `method` when sampling.schedule is unset."""
  return METHOD_SCHEDULES.get(method, DEFAULT_SCHEDULE)


def read_tuned_sigmas(path: Optional[str], method: str, num_nodes: int, sigma_max: float) -> np.ndarray:
  """The positive nodes of a `--mode tune_schedule` file for `method` with `num_nodes` nodes from σ_max.

  Raises:
    ValueError naming the file and what does not match (missing, another method, node count or σ_max).
  """
  import json
  import os
  if not path:
    raise ValueError("config.sampling.schedule = 'tuned' needs config.sampling.schedule_path (a "
                     '<workdir>/schedule/<method>_<nfe>.json of --mode tune_schedule).')
  if not os.path.isfile(path):
    raise ValueError(f'{path}: schedule file not found (config.sampling.schedule_path); write it with '
                     f'--mode tune_schedule --config.sampling.method={method}.')
  try:
    with open(path) as f:
      spec = json.load(f)
    sigmas = np.asarray(spec['sigmas'], np.float64)
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f'{path}: not a schedule file of --mode tune_schedule ({type(e).__name__}: {e}).') from e
  positive = sigmas[sigmas > 0]
  if spec.get('method') != method:
    raise ValueError(f'{path}: a schedule tuned for method {spec.get("method")!r}; this run samples with {method!r}.')
  if len(positive) != num_nodes:
    raise ValueError(f'{path}: {len(positive)} nodes (NFE {spec.get("nfe")}); config.sampling.num_steps = '
                     f'{num_nodes} needs a schedule of that many nodes (tune one with --mode tune_schedule).')
  if np.any(np.diff(positive) >= 0) or abs(positive[0] / sigma_max - 1) > 1e-4:
    raise ValueError(f'{path}: the schedule starts at sigma {positive[0]:.6g}, this run at {sigma_max:.6g} '
                     '(another model, SDE or init); tune one for this run.')
  return positive


def sigma_grid(fields, ctx: Context, method: str) -> np.ndarray:
  """The grid of `ctx.num_steps` nodes from σ(t_start) to σ_min (σ(eps), or the alias's) of
  sampling.schedule (default `default_schedule`), then 0 when `noise_removal`."""
  nodes = ctx.num_steps
  if nodes < 2:
    raise ValueError(f'config.sampling.num_steps = {nodes}: the {method} grid needs >= 2 nodes.')
  sigma_min = ctx.sigma_min if ctx.sigma_min is not None else float(ctx.sde.edm_sigma(np.float64(ctx.eps)))
  schedule = fields[SCHEDULE] or default_schedule(method)
  if schedule == 'karras':
    sigmas = karras_sigmas(ctx.start.sigma, sigma_min, nodes, float(fields[RHO]), append_zero=False)
  elif schedule == 'logsnr':
    sigmas = logsnr_sigmas(ctx.start.sigma, sigma_min, nodes)
  elif schedule == 'time_uniform':
    sigmas = time_uniform_sigmas(ctx.sde, ctx.start.t, float(ctx.sde.edm_time(np.float64(sigma_min))), nodes)
    sigmas[0] = ctx.start.sigma  # σ(t(σ_T)) round-trips to σ_T ± ulps
  elif schedule == 'tuned':
    sigmas = read_tuned_sigmas(fields[SCHEDULE_PATH], method, nodes, ctx.start.sigma)
  else:
    raise ValueError(f'config.sampling.schedule = {schedule!r}; choose one of {SCHEDULES}.')
  return np.concatenate([sigmas, [0.]]) if fields[NOISE_REMOVAL] else sigmas


# ----------------------------------------------------------------------------- denoisers


def _score_denoiser(score_fn: ScoreFn, x: jax.Array, sigma: jax.Array, *, sde: sde_lib.SDE) -> jax.Array:
  sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), (x.shape[0],))
  t = sde.edm_time(sigma)
  m = sde.edm_scale(t)
  return x + batch_mul(sigma ** 2 * m, score_fn(batch_mul(m, x), t))


def denoiser_from_score(score_fn: ScoreFn, sde: sde_lib.SDE) -> Partial:
  """D(x̃, σ) = x̃ + σ² m s(m x̃, t(σ)) for a score model s(x, t) of a VE, VP or sub-VP SDE.

  t(σ) = `sde.edm_time(σ)` and m = m(t). For VE (m = 1) this is x + σ² s(x, σ); for VP/sub-VP the
  EDM variable x̃ is mapped to the model's x_t = m x̃, and the chain rule gives the score m s(m x̃, t).
  The result is a `Partial` (a pytree: the bound arrays of `score_fn` stay jit arguments); σ may be
  a scalar or a (B,) vector. The score model is only trained for t ∈ [eps, 1]: keep σ in its range.
  """
  score_fn = score_fn if isinstance(score_fn, Partial) else Partial(score_fn)
  return Partial(functools.partial(_score_denoiser, sde=sde), score_fn)


# ----------------------------------------------------------------------------- Langevin corrector on a grid


class GridLangevin(eqx.Module):
  """score_sde's Langevin corrector (`pc.LangevinCorrector`, with PDS's M) at chosen nodes of a σ grid.

  Before the step from node σ_i, when `levels[i]`, `n_steps` corrector steps at t(σ_i) move x = m x̃ in the
  model's variable (x̃ = x / m after), with ε = 2 α (snr ‖M ξ‖ / ‖M Mᵀ s‖)², as PC's corrector before its
  predictor. It keeps p_σ stationary, so it corrects a stochastic predictor's law at σ_i without changing
  its target; after a deterministic predictor it does not help (docs/method.md §14; docs/results.md,
  "A few-step PC").
  `levels` (num_steps,) bool is a leaf (numpy on the host); `snr`, `n_steps` and `num_nodes` (how many
  levels are on) are static.
  """
  levels: np.ndarray
  snr: float = eqx.field(static=True)
  n_steps: int = eqx.field(static=True)
  num_nodes: int = eqx.field(static=True)

  def __init__(self, levels, snr: float, n_steps: int):
    if not snr > 0 or int(n_steps) != n_steps or n_steps < 1:
      raise ValueError(f'Langevin corrector: need sampling.snr > 0 and sampling.langevin_steps >= 1, got snr = {snr}, '
                       f'langevin_steps = {n_steps}.')
    self.levels, self.snr, self.n_steps = np.asarray(levels, bool), float(snr), int(n_steps)
    self.num_nodes = int(np.sum(self.levels))

  @property
  def evaluations(self) -> int:
    """Score evaluations per sample over the whole grid."""
    return self.n_steps * self.num_nodes

  def correct(self, solver: 'SigmaGridSolver', score_fn: ScoreFn, preconditioner, state: 'GridState', i, sigma):
    """The state after the corrector steps at node i (σ = σ_i), or the state itself where levels[i] is off."""
    sde = solver.sde

    def run(state):
      rng, step_rng = split(state.rng)
      t = sde.edm_time(sigma)
      m = sde.edm_scale(t)
      corrector = pc.LangevinCorrector(sde, score_fn, self.snr, self.n_steps, preconditioner, solver.axis_name)
      x, _ = corrector.update_fn(step_rng, m * state.x, jnp.full(state.x.shape[:1], t))
      return state._replace(x=x / m, rng=rng)

    return jax.lax.cond(self.levels[i], run, lambda state: state, state)


def grid_langevin(fields, sigmas: np.ndarray, method: str) -> Optional[GridLangevin]:
  """The Langevin corrector of a σ-grid SDE method from its fields (None when langevin_steps is 0)."""
  steps = fields[LANGEVIN_STEPS]
  if int(steps) != steps or steps < 0:
    raise ValueError(f'config.sampling.langevin_steps = {steps!r} must be an integer >= 0 ({method}).')
  if not steps:
    return None
  sigma_max = fields[LANGEVIN_SIGMA_MAX]
  nodes = np.asarray(sigmas[:-1], np.float64)  # the node each step starts from
  levels = nodes > 0 if sigma_max is None else (nodes > 0) & (nodes <= float(sigma_max))
  if not levels.any():
    raise ValueError(f'config.sampling.langevin_sigma_max = {sigma_max} is below every node of the {method} grid '
                     f'(smallest {nodes[nodes > 0].min():.4g}): no Langevin step would run; raise it or set '
                     'langevin_steps = 0.')
  return GridLangevin(levels, float(fields['snr']), int(steps))


# ----------------------------------------------------------------------------- solvers on a σ grid


class GridState(NamedTuple):
  """x̃ (B, H, W, C), the per-sample keys (stochastic methods) and past denoiser outputs (multistep)."""
  x: jax.Array
  rng: Optional[jax.Array] = None
  history: tuple = ()


class SigmaGridSolver(Solver):
  """A method on a decreasing grid σ_0 = σ(t_start) > … > σ_last ≥ 0 in EDM's variables.

  `sigmas` (num_steps + 1,) is a leaf: float64 numpy on the host (grids are built in float64, as
  EDM does), float32 inside the driver's jitted scan. `sigma_last` (static) is its last entry.
  Subclasses implement `grid_step(denoise, preconditioner, state, i, sigma, sigma_next)` for a step
  to σ_next > 0 and `evaluations(i)`; a step to σ_next = 0 is the denoising step D(x̃, σ).
  `langevin` (stochastic methods only): a `GridLangevin` run before the steps from its nodes, or None.
  """
  sigmas: np.ndarray
  sigma_last: float = eqx.field(static=True)
  langevin: Optional[GridLangevin]

  def __init__(self, sde: sde_lib.SDE, sigmas, langevin: Optional[GridLangevin] = None):
    sigmas = np.asarray(sigmas, np.float64)
    if sigmas.ndim != 1 or sigmas.shape[0] < 2 or np.any(np.diff(sigmas) >= 0) or sigmas[-1] < 0:
      raise ValueError(f'{self.name}: sigmas must be a strictly decreasing 1-D grid of >= 2 noise levels '
                       f'ending at >= 0, got {sigmas}.')
    t_start = float(sde.edm_time(sigmas[0]))
    super().__init__(sde, sde.T if abs(t_start - sde.T) < 1e-9 else t_start)  # σ(T) round-trips to T ± ulps
    self.sigmas, self.sigma_last = sigmas, float(sigmas[-1])
    if langevin is not None and (not self.stochastic or langevin.levels.shape != (self.num_steps,)):
      raise ValueError(f'{self.name}: Langevin corrector steps (sampling.langevin_steps) need a stochastic method '
                       'of the same grid (ancestral, or dpm_solver with dpm_solver_variant dpm_solver++_sde): after the '
                       'deterministic DPM-Solver++(2M) they left 42 % noise samples on the shipped model.')
    self.langevin = langevin

  @property
  def num_steps(self) -> int:
    return self.sigmas.shape[0] - 1

  def step_times(self) -> np.ndarray:
    return np.asarray(self.sde.edm_time(np.asarray(self.sigmas[:-1])))

  @property
  def static_nfe(self) -> int:
    to_zero = int(self.sigma_last == 0)
    corrector = 0 if self.langevin is None else self.langevin.evaluations
    return sum(self.evaluations(i) for i in range(self.num_steps - to_zero)) + to_zero + corrector

  def evaluations(self, i: int) -> int:
    """Score evaluations of step i to σ_{i+1} > 0."""
    return 1

  def init(self, rng, x):
    x = x / self.sde.edm_scale(jnp.float32(self.t_start))
    return GridState(x=x, rng=rng if self.stochastic else None, history=self.init_history(x))

  def init_history(self, x: jax.Array) -> tuple:
    return ()

  def settings(self) -> dict:
    positive = np.asarray(self.sigmas)[np.asarray(self.sigmas) > 0]
    settings = {'sigma_max': float(positive[0]), 'sigma_min': float(positive[-1])}
    if self.langevin is not None:
      settings['langevin_nodes'] = self.langevin.num_nodes
    return settings

  def output(self, state):
    last = self.sigma_last
    return state.x if last == 0 else self.sde.edm_scale(jnp.float32(self.sde.edm_time(np.float64(last)))) * state.x

  def step(self, score_fn, preconditioner, state, i):
    denoise = denoiser_from_score(score_fn, self.sde)
    sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
    if self.langevin is not None:
      state = self.langevin.correct(self, score_fn, preconditioner, state, i, sigma)
    if self.sigma_last > 0:
      return self.grid_step(denoise, preconditioner, state, i, sigma, sigma_next)
    to_zero = lambda state: state._replace(x=denoise(state.x, sigma))
    return jax.lax.cond(sigma_next > 0, lambda state: self.grid_step(denoise, preconditioner, state, i, sigma,
                                                                     sigma_next), to_zero, state)

  def grid_step(self, denoise, preconditioner, state, i, sigma, sigma_next):
    raise NotImplementedError


class WeightedMultistepSolver(SigmaGridSolver):
  """A multistep σ-grid method whose per-step weights on its history are computed once on the host.

  `order` and `variant` (static) are checked against the class's ORDERS / VARIANTS; None takes the
  default declared for its config field ORDER_FIELD / VARIANT_FIELD (which errors name); `weights` =
  `weight_table()` is a leaf (float64 numpy on the host, float32 in the driver's scan). iPNDM and UniPC.
  """
  order: int = eqx.field(static=True)
  variant: str = eqx.field(static=True)
  weights: np.ndarray
  ORDERS: tuple = ()
  VARIANTS: tuple = ()
  ORDER_FIELD = 'solver_order'
  VARIANT_FIELD = 'variant'

  def __init__(self, sde: sde_lib.SDE, sigmas, order: Optional[int] = None, variant: Optional[str] = None):
    super().__init__(sde, sigmas)
    settings = {}
    for field, value, choices in ((self.ORDER_FIELD, order, self.ORDERS), (self.VARIANT_FIELD, variant, self.VARIANTS)):
      value = declared_fields()[field].default if value is None else value
      if value not in choices:
        raise ValueError(f'{self.name}: config.sampling.{field} = {value!r}; choose one of {choices}.')
      settings[field] = value
    self.order, self.variant = int(settings[self.ORDER_FIELD]), str(settings[self.VARIANT_FIELD])
    self.weights = self.weight_table()

  @classmethod
  def from_fields(cls, fields: dict, ctx: Context) -> 'WeightedMultistepSolver':
    """The solver of a resolved config (a `register_method` builder)."""
    return cls(ctx.sde, sigma_grid(fields, ctx, cls.name), fields[cls.ORDER_FIELD], fields[cls.VARIANT_FIELD])

  @property
  def real_steps(self) -> int:
    """Steps to a σ > 0 (all but the denoising step to 0, when the grid has one)."""
    return self.num_steps - int(self.sigmas[-1] == 0)

  def weight_table(self) -> np.ndarray:
    """(num_steps, …) float64 weights of each scan step on the history (the method's own layout)."""
    raise NotImplementedError

