"""The DPM-Solver family as exponential integrators of the probability-flow ODE (docs/method.md §11).

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
`DPMSolverPPSDE` (`'dpm_solver++_sde'`): its SDE form SDE-DPM-Solver++(kM) (Lu et al. 2022b) with `sampling.eta`,
PDS on its Langevin part (the class docstring derives why that keeps the law). η = 1 and order 2 by measurement
on the shipped VE model (64 samples, seed 9, 20 NFE, benchmarks/stochastic_defaults.py): SWD 55.6 (2M, η 1) against
70.5 (2M, η 0.5) and 80.0 (3M, η 1), PC-200's 62.7 at 400 NFE, and no noise samples; at 200 samples 2M η 1 gives
SWD 41.8 / FD 12.0 at 20 NFE against PC-200's 30.6 / 10.7 (benchmarks/results/samplers_shipped200.json).
With `sampling.langevin_steps` (`grid.GridLangevin`, docs/method.md §14) score_sde's Langevin corrector runs
before the steps from the nodes σ_i <= `langevin_sigma_max`: a few-step PC with this predictor, the sampler that
reaches PC-200's quality on the shipped model in 34 NFE (docs/results.md, "A few-step PC").
A final step to σ = 0 is the denoising step D(x̃, σ_min) (1 NFE), as for every σ-grid method: it is
first order itself, so the official `lower_order_final` (lower orders on the last steps of runs of
fewer than 10 steps) is off by default here, and when set it counts that step as the last one, so
two first-order updates never follow each other (docs/results.md, "Few-step defaults": lowering
the last step before the denoising step made DPM-Solver++(2M) 1.9-4.6x worse at 5-10 NFE).
"""
from __future__ import annotations

from typing import Optional

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from pds_jax import sde_lib
from pds_jax.samplers.driver import normal, split
from pds_jax.samplers.grid import (GRID_FIELDS, LANGEVIN_FIELDS, GridLangevin, SigmaGridSolver, grid_langevin,
                                   sigma_grid)
from pds_jax.samplers.methods import declare_field, register_method

ORDERS = (1, 2, 3)
VARIANTS = ('dpm_solver', 'dpm_solver++', 'dpm_solver++_sde')
LOWER_ORDER_FINAL = declare_field('lower_order_final', False, bool, "DPM-Solver++: the official lower orders on "
                                   'the last steps of runs of < 10 steps (the denoising step to 0 counts as one)')
SOLVER_ORDER = declare_field('solver_order', 2, int, 'the order of DPM-Solver (1, 2, 3)')
VARIANT = declare_field('dpm_solver_variant', 'dpm_solver++', str, "'dpm_solver' (singlestep, noise prediction), "
                                                                   "'dpm_solver++' (multistep, data prediction) or "
                                                                   "'dpm_solver++_sde' (its SDE form, sampling.eta)")
ETA = declare_field('eta', 1., float, "dpm_solver++_sde: the noise of each step, σ' sqrt(1 - e^{-2ηh}) (0: "
                                      "dpm_solver++, 1: the reverse SDE; default measured on the shipped model)")


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

  def __init__(self, sde: sde_lib.SDE, sigmas, order: int = 2, lower_order_final: bool = False,
               langevin: Optional[GridLangevin] = None):
    super().__init__(sde, sigmas, langevin)
    self.order = _check_order(order, self.name)
    to_zero = int(self.sigmas[-1] == 0)
    real = self.num_steps - to_zero  # steps to σ > 0
    orders = [min(self.order, j + 1) for j in range(real)]
    if lower_order_final and real < 10:  # the official rule; the first-order step to 0 counts as the last
      orders = [min(k, real - j + to_zero) for j, k in enumerate(orders)]
    self.orders = jnp.asarray(orders + [1] * (self.num_steps - real), jnp.int32)
    self.lambdas = -np.log(np.where(self.sigmas > 0, self.sigmas, 1.))  # λ = -log σ (unused at σ = 0)

  def init_history(self, x):
    return tuple(jnp.zeros_like(x) for _ in range(self.order - 1))

  def grid_step(self, denoise, preconditioner, state, i, sigma, sigma_next):
    d0 = denoise(state.x, sigma)
    x = self._update(state.x, d0, state.history, i, sigma, sigma_next)
    return state._replace(x=x, history=((d0,) + state.history)[:self.order - 1])

  def _update(self, x, d0, history, i, sigma, sigma_next, eta: float = 0.):
    """The multistep update of order `orders[i]` without noise, at noise parameter η (a Python float): the
    ODE step at η = 0, the SDE step's mean x̃'_mean otherwise (`DPMSolverPPSDE`)."""
    lam = self.lambdas
    h = lam[i + 1] - lam[i]
    h_eta = (1. + eta) * h
    h0 = lam[i] - lam[jnp.maximum(i - 1, 0)]
    h1 = lam[jnp.maximum(i - 1, 0)] - lam[jnp.maximum(i - 2, 0)]
    phi_1 = jnp.expm1(-h_eta)
    base = (sigma_next / sigma) * (jnp.exp(-eta * h) if eta else 1.) * x - phi_1 * d0

    def second(_):
      d1 = (d0 - history[0]) / (h0 / h)
      return base - 0.5 * phi_1 * d1

    def third(_):
      r0, r1 = h0 / h, h1 / h
      d1_0, d1_1 = (d0 - history[0]) / r0, (history[0] - history[1]) / r1
      d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
      d2 = (d1_0 - d1_1) / (r0 + r1)
      phi_2 = phi_1 / h_eta + 1
      phi_3 = phi_2 / h_eta - 0.5
      return base + phi_2 * d1 - phi_3 * d2

    branches = (lambda _: base, second, third)[:self.order]
    return jax.lax.switch(self.orders[i] - 1, branches, None) if self.order > 1 else base


class DPMSolverPPSDE(DPMSolverPP):
  """Multistep SDE-DPM-Solver++(kM) (Lu et al. 2022b, §5 and App. B; k-diffusion's dpmpp_2m_sde / 3m_sde); 1 NFE a step.

  The reverse SDE with η times the ODE's step in λ = -log σ as noise, h = λ' - λ, h_η = (1 + η) h:
    x̃' = (σ'/σ) e^{-ηh} x̃ + (1 - e^{-h_η}) D_0 + C_k(h_η) + σ' sqrt(1 - e^{-2ηh}) z,   z ~ N(0, I)
  with the multistep corrections of DPMSolverPP at h_η: C_2 = ½ (1 - e^{-h_η}) D₁ (midpoint, D₁ = (D_0 - D_{-1}) / r₀)
  and C_3 = φ₂ D₁ - φ₃ D₂ (φ₂ = (e^{-h_η} - 1) / h_η + 1, φ₃ = φ₂ / h_η - ½). η = 0 is DPM-Solver++(kM); at
  order 1 and η = 1 it is the DDPM posterior step of `ancestral`.

  PDS (an extension that keeps the law): the step is the ODE step plus a Langevin move at σ'. In the
  continuum limit (u = σ², du = -2σ² dλ) the η-part is x̃ += ε ∇log p_u + sqrt(2ε) z with ε = ½ η |du|, which
  keeps p_u for any K = M Mᵀ as ε K ∇log p_u + sqrt(2ε) M z (the preconditioned Langevin of PDS, Ma et al.). So
  with a preconditioner
    x̃' = x̃'_ODE + K (x̃'_mean - x̃'_ODE) + σ' sqrt(1 - e^{-2ηh}) M z,
  x̃'_ODE the step at η = 0 and x̃'_mean the SDE step without noise; the prior is not multiplied by M
  (p_T itself is the law to keep). The identity preconditioner is the plain step bit for bit.

  `pds` (static) switches this preconditioned step on: the registry declares PDS per method, and
  `dpm_solver` (whose ODE variants have none) is registered without it, so `sampling.method = dpm_solver`
  builds the solver with pds=False and refuses masks; the API (`DPMSolverPPSDE(..., pds=True)`) has it.
  """
  eta: float = eqx.field(static=True)
  preconditioned_by_pds: bool = eqx.field(static=True)
  name = 'dpm_solver++_sde'
  stochastic = True
  precondition_prior = False

  def __init__(self, sde: sde_lib.SDE, sigmas, order: int = 2, eta: float = 1., lower_order_final: bool = False,
               pds: bool = True, langevin: Optional[GridLangevin] = None):
    super().__init__(sde, sigmas, order, lower_order_final, langevin)
    if not eta >= 0:
      raise ValueError(f'{self.name}: sampling.eta = {eta} must be >= 0.')
    self.eta, self.preconditioned_by_pds = float(eta), bool(pds)

  def check_preconditioner(self, preconditioner) -> None:
    if not preconditioner.is_identity and not self.preconditioned_by_pds:
      raise ValueError("dpm_solver_variant = 'dpm_solver++_sde' has PDS on its Langevin part only through the API "
                       "(DPMSolverPPSDE(..., pds=True)): sampling.method = 'dpm_solver' is registered without PDS; "
                       'unset --freq_mask_path / --space_mask_path (or use the ancestral or pc method).')

  def grid_step(self, denoise, preconditioner, state, i, sigma, sigma_next):
    rng, step_rng = split(state.rng)
    x, history = state.x, state.history
    d0 = denoise(x, sigma)
    x_next = self._update(x, d0, history, i, sigma, sigma_next, self.eta)
    if self.eta:
      h = self.lambdas[i + 1] - self.lambdas[i]
      std = sigma_next * jnp.sqrt(-jnp.expm1(-2. * self.eta * h))
      if not preconditioner.is_identity:  # K on the Langevin part, M on its noise (docstring)
        x_ode = self._update(x, d0, history, i, sigma, sigma_next, 0.)
        x_next = x_ode + preconditioner.apply_mmt(x_next - x_ode)
      x_next = x_next + std * preconditioner.apply(normal(step_rng, x.shape))
    return state._replace(x=x_next, rng=rng, history=((d0,) + history)[:self.order - 1])


@register_method('dpm_solver', default_steps=20,
                 fields=GRID_FIELDS + (SOLVER_ORDER, VARIANT, LOWER_ORDER_FINAL, ETA) + LANGEVIN_FIELDS)
def _dpm_solver(fields, ctx):
  if fields[VARIANT] not in VARIANTS:
    raise ValueError(f'config.sampling.dpm_solver_variant = {fields[VARIANT]!r}; choose one of {VARIANTS}.')
  sigmas = sigma_grid(fields, ctx, 'dpm_solver')
  langevin = grid_langevin(fields, sigmas, fields[VARIANT])
  if langevin is not None and fields[VARIANT] != 'dpm_solver++_sde':
    raise ValueError(f'config.sampling.langevin_steps = {fields["langevin_steps"]} needs the stochastic '
                     f"dpm_solver_variant 'dpm_solver++_sde' (got {fields[VARIANT]!r}): after a deterministic "
                     'DPM-Solver++(2M) the Langevin steps left 42 % noise samples on the shipped model.')
  if fields[VARIANT] == 'dpm_solver':
    return DPMSolver(ctx.sde, sigmas, fields[SOLVER_ORDER])
  if fields[VARIANT] == 'dpm_solver++_sde':
    # pds=False: the registry's PDS flag is per method (DPMSolverPPSDE's docstring)
    return DPMSolverPPSDE(ctx.sde, sigmas, fields[SOLVER_ORDER], float(fields[ETA]), bool(fields[LOWER_ORDER_FINAL]),
                          pds=False, langevin=langevin)
  return DPMSolverPP(ctx.sde, sigmas, fields[SOLVER_ORDER], bool(fields[LOWER_ORDER_FINAL]))
