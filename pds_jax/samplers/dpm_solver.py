"""The DPM-Solver family as exponential integrators of the probability-flow ODE, for VE, VP and sub-VP.

In EDM's variables (`pds_jax.samplers.grid`) x̃ = x / m and σ, the PF-ODE is dx̃/dσ = ε̂(x̃, σ) with the noise
prediction ε̂ = (x̃ - D(x̃, σ)) / σ. With λ = -log σ (half the log-SNR: for VP σ = sqrt(1 - m²) / m,
so this is DPM-Solver's log-SNR time; for VE it is -log σ) its exact solution from λ_s to
λ_t = λ_s + h is (Lu et al. 2022, eq. 3.4 with α = 1 in x̃)
  x̃_t = x̃_s - ∫_{λ_s}^{λ_t} e^{-λ} ε̂(x̃_λ, λ) dλ ,
and DPM-Solver-k replaces ε̂ by its Taylor expansion of order k - 1 in λ. Since x / m is x̃, these are exactly the
VP DPM-Solver updates divided by α_t (the official code's x_t / α_t), so one implementation serves
every SDE.

`DPMSolver` (`dpm_solver_variant = 'dpm_solver'`): singlestep DPM-Solver-1/2/3 (Lu et al. 2022,
Algorithms 1 and 2 with r₁ = 1/2 for order 2 and r₁ = 1/3, r₂ = 2/3 for order 3), noise prediction,
k NFE per step; DPM-Solver-1 is DDIM = Euler in σ.
`DPMSolverPP` (`'dpm_solver++'`): multistep DPM-Solver++(kM) (Lu et al. 2022b, data prediction,
1 NFE per step, orders 1/2/3) with the official warm-up (order min(k, i + 1) at step i).
A final step to σ = 0 is the denoising step D(x̃, σ_min) (1 NFE), as for every σ-grid method: it is
first order itself, so the official `lower_order_final` (lower orders on the last steps of runs of
fewer than 10 steps) is off by default here, and when set it counts that step as the last one, so
two first-order updates never follow each other (docs/results.md, "Few-step defaults": lowering
the last step before the denoising step made DPM-Solver++(2M) 1.9-4.6x worse at 5-10 NFE).
"""
from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from pds_jax import sde_lib
from pds_jax.samplers.grid import GRID_FIELDS, SigmaGridSolver, sigma_grid
from pds_jax.samplers.methods import declare_field, register_method

ORDERS = (1, 2, 3)
VARIANTS = ('dpm_solver', 'dpm_solver++')
LOWER_ORDER_FINAL = declare_field('lower_order_final', False, bool, "DPM-Solver++: the official lower orders on "
                                   'the last steps of runs of < 10 steps (the denoising step to 0 counts as one)')
SOLVER_ORDER = declare_field('solver_order', 2, int, 'the order of DPM-Solver (1, 2, 3)')
VARIANT = declare_field('dpm_solver_variant', 'dpm_solver++', str, "'dpm_solver' (singlestep, noise prediction) "
                                                                   "or 'dpm_solver++' (multistep, data prediction)")


def _check_order(order: int, name: str) -> int:
  if order not in ORDERS:
    raise ValueError(f'{name}: sampling.solver_order = {order!r}; choose one of {ORDERS}.')
  return int(order)


class DPMSolver(SigmaGridSolver):
  """Singlestep DPM-Solver-k (noise prediction) on a σ grid; k NFE per step."""
  order: int = eqx.field(static=True)
  name = 'dpm_solver'

  def __init__(self, sde: sde_lib.SDE, sigmas, order: int = 2):
    super().__init__(sde, sigmas)
    self.order = _check_order(order, self.name)
    real = self.num_steps - int(self.sigmas[-1] == 0)
    if self.order == 3 and real < 2:
      raise ValueError('singlestep DPM-Solver-3 with one step (num_steps = 2 nodes, 4 NFE) diverges (KL 87 on the '
                       'exact VE Gaussian): use num_steps >= 3, solver_order 2, or dpm_solver_variant dpm_solver++.')

  def evaluations(self, i):
    return self.order

  def grid_step(self, denoise, preconditioner, state, i, sigma, sigma_next):
    x = state.x
    eps = lambda x, s: (x - denoise(x, s)) / s
    h = jnp.log(sigma / sigma_next)  # λ' - λ
    e0 = eps(x, sigma)
    x_first = x - (sigma - sigma_next) * e0  # σ'(e^h - 1) = σ - σ'
    if self.order == 1:
      return state._replace(x=x_first)
    if self.order == 2:
      r1 = 0.5
      s1 = sigma * jnp.exp(-r1 * h)
      u1 = x - (sigma - s1) * e0
      return state._replace(x=x_first - (sigma - sigma_next) / (2 * r1) * (eps(u1, s1) - e0))
    r1, r2 = 1. / 3., 2. / 3.
    s1, s2 = sigma * jnp.exp(-r1 * h), sigma * jnp.exp(-r2 * h)
    u1 = x - (sigma - s1) * e0
    d1 = eps(u1, s1) - e0
    phi_22 = jnp.expm1(r2 * h) / (r2 * h) - 1
    u2 = x - (sigma - s2) * e0 - (r2 / r1) * s2 * phi_22 * d1
    d2 = eps(u2, s2) - e0
    phi_2 = jnp.expm1(h) / h - 1
    return state._replace(x=x_first - sigma_next * phi_2 / r2 * d2)


class DPMSolverPP(SigmaGridSolver):
  """Multistep DPM-Solver++(kM) (data prediction) on a σ grid; 1 NFE per step.

  The state's history holds the denoiser outputs of the previous k - 1 steps. `orders` (num_steps,)
  is the order of each step and `lambdas` (num_steps + 1,) the grid in λ = -log σ: leaves, float64
  / int32 numpy on the host.
  """
  order: int = eqx.field(static=True)
  orders: np.ndarray
  lambdas: np.ndarray
  name = 'dpm_solver++'

  def __init__(self, sde: sde_lib.SDE, sigmas, order: int = 2, lower_order_final: bool = False):
    super().__init__(sde, sigmas)
    self.order = _check_order(order, self.name)
    to_zero = int(self.sigmas[-1] == 0)
    real = self.num_steps - to_zero  # steps to σ > 0
    orders = [min(self.order, j + 1) for j in range(real)]
    if lower_order_final and real < 10:  # the official rule; the first-order step to 0 counts as the last
      orders = [min(k, real - j + to_zero) for j, k in enumerate(orders)]
    self.orders = np.asarray(orders + [1] * (self.num_steps - real), np.int32)
    self.lambdas = -np.log(np.where(self.sigmas > 0, self.sigmas, 1.))  # λ = -log σ (unused at σ = 0)

  def init_history(self, x):
    return tuple(jnp.zeros_like(x) for _ in range(self.order - 1))

  def grid_step(self, denoise, preconditioner, state, i, sigma, sigma_next):
    x, history = state.x, state.history
    lam = self.lambdas
    h = lam[i + 1] - lam[i]
    h0 = lam[i] - lam[jnp.maximum(i - 1, 0)]
    h1 = lam[jnp.maximum(i - 1, 0)] - lam[jnp.maximum(i - 2, 0)]
    d0 = denoise(x, sigma)
    phi_1 = jnp.expm1(-h)
    base = (sigma_next / sigma) * x - phi_1 * d0  # DPM-Solver++(1) = DDIM

    def first(_):
      return base

    def second(_):
      r0 = h0 / h
      d1 = (d0 - history[0]) / r0
      return base - 0.5 * phi_1 * d1

    def third(_):
      r0, r1 = h0 / h, h1 / h
      d1_0, d1_1 = (d0 - history[0]) / r0, (history[0] - history[1]) / r1
      d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
      d2 = (d1_0 - d1_1) / (r0 + r1)
      phi_2 = phi_1 / h + 1
      phi_3 = phi_2 / h - 0.5
      return base + phi_2 * d1 - phi_3 * d2

    branches = (first, second, third)[:self.order]
    x = jax.lax.switch(self.orders[i] - 1, branches, None) if self.order > 1 else base
    return state._replace(x=x, history=((d0,) + history)[:self.order - 1])


@register_method('dpm_solver', fields=GRID_FIELDS + (SOLVER_ORDER, VARIANT, LOWER_ORDER_FINAL), default_steps=20)
def _dpm_solver(fields, ctx):
  if fields[VARIANT] not in VARIANTS:
    raise ValueError(f'config.sampling.dpm_solver_variant = {fields[VARIANT]!r}; choose one of {VARIANTS}.')
  sigmas = sigma_grid(fields, ctx, 'dpm_solver')
  if fields[VARIANT] == 'dpm_solver':
    return DPMSolver(ctx.sde, sigmas, fields[SOLVER_ORDER])
  return DPMSolverPP(ctx.sde, sigmas, fields[SOLVER_ORDER], bool(fields[LOWER_ORDER_FINAL]))
