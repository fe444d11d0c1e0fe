"""EDM's σ-grid samplers for any score_sde SDE: Euler, Heun (Karras et al. 2022) and the ancestral step.

They step in EDM's variables (`pds_jax.samplers.grid`, docs/method.md §9):
  probability-flow ODE   dx̃/dσ = (x̃ - D(x̃, σ)) / σ                          (EDM eq. 3)
  Euler step             x̃' = x̃ + (σ' - σ) d,  d = (x̃ - D(x̃, σ)) / σ
  Heun step              x̃' = x̃ + (σ' - σ) (d + d') / 2, d' at (x̃_Euler, σ')      (EDM Algorithm 1)
  ancestral step         x̃' = x̃ + (1 - r) K (D - x̃) + (σ'/σ) sqrt(σ² - σ'²) M z,  r = σ'² / σ²
The ancestral step is the DDPM posterior q(x̃_σ' | x̃_σ, x_0 = D) of the VE process, as in the toy
code of Fassina et al. (`ddpm_one_step`); with PDS (an extension: K = M Mᵀ on the score term
σ² (1 - r) s, M on the noise, as the official PDS reverse-diffusion step) it is a σ-grid method
PDS applies to: K on a deterministic ODE changes its flow map (`driver.Solver`).
"""
from __future__ import annotations

import jax.numpy as jnp

from pds_jax.samplers.driver import normal, split
from pds_jax.samplers.grid import GRID_FIELDS, LANGEVIN_FIELDS, SigmaGridSolver, grid_langevin, sigma_grid
from pds_jax.samplers.methods import register_method


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


@register_method('euler', fields=GRID_FIELDS, default_steps=35)
def _euler(fields, ctx):
  return EulerSolver(ctx.sde, sigma_grid(fields, ctx, 'euler'))


@register_method('heun', fields=GRID_FIELDS, default_steps=18)  # EDM's 18 nodes: 35 NFE
def _heun(fields, ctx):
  return HeunSolver(ctx.sde, sigma_grid(fields, ctx, 'heun'))


@register_method('ancestral', fields=GRID_FIELDS + LANGEVIN_FIELDS, default_steps=35, pds=True, prior_start=True)
def _ancestral(fields, ctx):
  sigmas = sigma_grid(fields, ctx, 'ancestral')
  return AncestralSolver(ctx.sde, sigmas, grid_langevin(fields, sigmas, 'ancestral'))
