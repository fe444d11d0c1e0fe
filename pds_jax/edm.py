"""EDM's σ-grid samplers for any score_sde SDE: Euler, Heun (Karras et al. 2022) and the ancestral step.

They step in EDM's variables (`sde_lib.SDE.edm_sigma`): x̃ = x / m(t) is x_0 + σ ε, and the
denoiser of a score model is D(x̃, σ) = x̃ + σ² m s(m x̃, t(σ)) (`denoiser_from_score`), so one
implementation serves VE (m = 1), VP and sub-VP:
  probability-flow ODE   dx̃/dσ = (x̃ - D(x̃, σ)) / σ                          (EDM eq. 3)
  Euler step             x̃' = x̃ + (σ' - σ) d,  d = (x̃ - D(x̃, σ)) / σ
  Heun step              x̃' = x̃ + (σ' - σ) (d + d') / 2, d' at (x̃_Euler, σ')      (EDM Algorithm 1)
  ancestral step         x̃' = x̃ + (1 - r) K (D - x̃) + (σ'/σ) sqrt(σ² - σ'²) M z,  r = σ'² / σ²
The ancestral step is the DDPM posterior q(x̃_σ' | x̃_σ, x_0 = D) of the VE process, as in the toy
code of Fassina et al. (`ddpm_one_step`); with PDS (an extension: K = M Mᵀ on the score term
σ² (1 - r) s, M on the noise, as the official PDS reverse-diffusion step) it is the only σ-grid
method PDS applies to: K on a deterministic ODE changes its flow map (`driver.Solver`).

Grids: `karras_sigmas` from σ(t_start) (the prior's σ(T), or σ_T of an init) down to σ_min, then
σ = 0: a step to 0 is the denoising step x̃' = D(x̃, σ_min) (Euler, Heun's skipped correction and
the ancestral step all reduce to it), 1 NFE — EDM's `i < num_steps - 1` rule and score_sde's
`denoise`.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from pds_jax import sde_lib
from pds_jax.driver import ScoreFn, Solver, normal, split
from pds_jax.utils import batch_mul


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


# ----------------------------------------------------------------------------- solvers on a σ grid


class GridState(NamedTuple):
  """x̃ (B, H, W, C), the per-sample keys (stochastic methods) and past denoiser outputs (multistep)."""
  x: jax.Array
  rng: Optional[jax.Array] = None
  history: tuple = ()


class SigmaGridSolver(Solver):
  """A method on a decreasing grid σ_0 = σ(t_start) > … > σ_last ≥ 0 in EDM's variables.

  Subclasses implement `grid_step(denoise, preconditioner, state, i, sigma, sigma_next)` for a step
  to σ_next > 0 and `evaluations_per_step`; a step to σ_next = 0 is the denoising step D(x̃, σ).
  """

  def __init__(self, sde: sde_lib.SDE, sigmas):
    sigmas = np.asarray(sigmas, np.float64)
    if sigmas.ndim != 1 or sigmas.shape[0] < 2 or np.any(np.diff(sigmas) >= 0) or sigmas[-1] < 0:
      raise ValueError(f'{self.name}: sigmas must be a strictly decreasing 1-D grid of >= 2 noise levels '
                       f'ending at >= 0, got {sigmas}.')
    t_start = float(sde.edm_time(sigmas[0]))
    super().__init__(sde, sde.T if abs(t_start - sde.T) < 1e-9 else t_start)  # σ(T) round-trips to T ± ulps
    self.sigmas = sigmas

  @property
  def num_steps(self) -> int:
    return len(self.sigmas) - 1

  def step_times(self) -> np.ndarray:
    return np.asarray(self.sde.edm_time(self.sigmas[:-1]))

  @property
  def static_nfe(self) -> int:
    to_zero = int(self.sigmas[-1] == 0)
    return sum(self.evaluations(i) for i in range(self.num_steps - to_zero)) + to_zero

  def evaluations(self, i: int) -> int:
    """Score evaluations of step i to σ_{i+1} > 0."""
    return 1

  def init(self, rng, x):
    x = x / self.sde.edm_scale(jnp.float32(self.t_start))
    return GridState(x=x, rng=rng if self.stochastic else None, history=self.init_history(x))

  def init_history(self, x: jax.Array) -> tuple:
    return ()

  def output(self, state):
    last = self.sigmas[-1]
    return state.x if last == 0 else self.sde.edm_scale(jnp.float32(self.sde.edm_time(last))) * state.x

  def tables(self) -> dict:
    """The grid σ_i as float32 (num_steps + 1,): a jit argument of the driver's scan, not a constant."""
    return {'sigmas': jnp.asarray(self.sigmas, jnp.float32)}

  def step(self, score_fn, preconditioner, state, i):
    denoise = denoiser_from_score(score_fn, self.sde)
    sigmas = self.table('sigmas')
    sigma, sigma_next = sigmas[i], sigmas[i + 1]
    if self.sigmas[-1] > 0:
      return self.grid_step(denoise, preconditioner, state, i, sigma, sigma_next)
    to_zero = lambda state: state._replace(x=denoise(state.x, sigma))
    return jax.lax.cond(sigma_next > 0, lambda state: self.grid_step(denoise, preconditioner, state, i, sigma,
                                                                     sigma_next), to_zero, state)

  def grid_step(self, denoise, preconditioner, state, i, sigma, sigma_next):
    raise NotImplementedError


class EulerSolver(SigmaGridSolver):
  """Euler steps of the probability-flow ODE, x̃' = x̃ + (σ' - σ)(x̃ - D(x̃, σ)) / σ; 1 NFE per step."""
  name = 'euler'

  def grid_step(self, denoise, preconditioner, state, i, sigma, sigma_next):
    d = (state.x - denoise(state.x, sigma)) / sigma
    return state._replace(x=state.x + (sigma_next - sigma) * d)


class HeunSolver(SigmaGridSolver):
  """EDM's deterministic sampler (S_churn = 0): Heun steps, 2 NFE each (1 on the step to σ = 0)."""
  name = 'heun'

  def evaluations(self, i):
    return 2

  def grid_step(self, denoise, preconditioner, state, i, sigma, sigma_next):
    x = state.x
    d = (x - denoise(x, sigma)) / sigma
    x_euler = x + (sigma_next - sigma) * d
    d_prime = (x_euler - denoise(x_euler, sigma_next)) / sigma_next
    return state._replace(x=x + (sigma_next - sigma) * (0.5 * d + 0.5 * d_prime))


class AncestralSolver(SigmaGridSolver):
  """VE ancestral (DDPM posterior) steps x̃' = x̃ + (1 - r) K (D - x̃) + (σ'/σ) sqrt(σ² - σ'²) M z.

  r = σ'² / σ²; with per-sample keys item b's noise depends on its own key only. 1 NFE per step.
  """
  name = 'ancestral'
  stochastic = True
  preconditioned_by_pds = True

  def grid_step(self, denoise, preconditioner, state, i, sigma, sigma_next):
    rng, step_rng = split(state.rng)
    x = state.x
    r = sigma_next ** 2 / sigma ** 2
    std = sigma_next / sigma * jnp.sqrt(sigma ** 2 - sigma_next ** 2)
    noise = preconditioner.apply(normal(step_rng, x.shape))
    x = x + (1 - r) * preconditioner.apply_mmt(denoise(x, sigma) - x) + std * noise
    return state._replace(x=x, rng=rng)
