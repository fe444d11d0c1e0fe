"""EDM's stochastic sampler (Karras et al. 2022, Algorithm 2) and the noise-then-Heun step it shares with Restart.

Both methods are sequences of the same step, in EDM's variables (`pds_jax.samplers.grid`):
  x̂ = x̃ + sqrt(σ̂² - σ_from²) S_noise z,  z ~ N(0, I)         raise the noise level σ_from → σ̂
  d = (x̂ - D(x̂, σ̂)) / σ̂,  x̃_E = x̂ + (σ_to - σ̂) d            Euler step of dx̃/dσ = (x̃ - D) / σ (EDM eq. 3)
  x̃' = x̂ + (σ_to - σ̂) (d + d') / 2,  d' at (x̃_E, σ_to)       Heun's correction: 2 NFE
                                                              (σ_to = 0: x̃' = D(x̂, σ̂), 1 NFE)
`NoiseHeunSolver` holds the three per-step arrays σ_from, σ̂, σ_to (leaves, float64 on the host); a step
with σ̂ = σ_from adds no noise. If x̃ ~ p_{σ_from} = p_data * N(0, σ_from² I), then x̂ ~ p_σ̂ exactly, so a
stochastic step is the exact forward process followed by the probability-flow ODE, and the error it
leaves is the ODE's, contracted by the added noise (EDM §4; Xu et al. 2023, Theorem 2).

`sampling.method = 'edm_stochastic'` (Algorithm 2, EDM's lines 4-8): on the σ grid σ_0 > … > σ_{N-1} > σ_N = 0
of N = `num_steps` nodes (`grid.sigma_grid`), step i uses
  γ_i = min(S_churn / N, √2 - 1) if S_tmin ≤ σ_i ≤ S_tmax else 0,   σ̂_i = (1 + γ_i) σ_i   (EDM eq. 7 / Alg. 2 line 5)
capped at σ(T), the largest noise level the score model knows; NFE = 2N - 1, as Heun's (EDM's 18 nodes: 35).
With S_churn = 0 it is `heun` bit for bit.

Defaults (EDM's ImageNet-64 settings S_churn 40, S_tmin 0.05, S_tmax 50, S_noise 1.003, kept by measurement on the
shipped VE model, 64 samples, seed 9, benchmarks/stochastic_defaults.py): at N ≤ 96 nodes S_churn = 40 is the
largest churn γ = √2 - 1 on every node in [0.05, 50]; at 11 nodes (21 NFE) it took FD 85.0 → 42.6, KID 3.42 → 0.80
and the noise samples 37.5 % → 9.4 % against S_churn = 0 (= heun), at the same SWD (97.6 / 98.0).

PDS is not defined for these steps: the injected noise must take p_{σ_from} to p_σ̂ = p_data * N(0, σ̂² I), the
only family the denoiser D(·, σ̂) is trained on. With M on the noise, x̂ has the law
p_data * N(0, σ_from² I + (σ̂² - σ_from²) S_noise² M Mᵀ), which is not p_σ̂ for any σ̂ unless M Mᵀ = I, and the
following ODE step (where K would change the flow map too, `driver.Solver`) starts off the model's family.
The stochastic method with PDS is `ancestral`, or `dpm_solver` with `dpm_solver_variant = 'dpm_solver++_sde'`.
"""
from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from pds_jax import sde_lib
from pds_jax.preconditioning import Preconditioner
from pds_jax.samplers.driver import Solver, normal, split
from pds_jax.samplers.grid import GRID_FIELDS, GridState, denoiser_from_score, sigma_grid
from pds_jax.samplers.methods import declare_field, register_method

S_CHURN = declare_field('s_churn', 40., float, "edm_stochastic: EDM's S_churn (γ_i = min(S_churn / N, √2 - 1)); 0 is "
                                               'heun (default measured on the shipped model)')
S_TMIN = declare_field('s_tmin', 0.05, float, "edm_stochastic: EDM's S_tmin, the smallest σ_i that gets churn")
S_TMAX = declare_field('s_tmax', 50., float, "edm_stochastic: EDM's S_tmax, the largest σ_i that gets churn")
S_NOISE = declare_field('s_noise', 1.003, float, "edm_stochastic: EDM's S_noise, the std of the churn noise")

NO_PDS = ('PDS is not defined for it: its noise must take p_σ to p_σ̂ = p_data * N(0, σ̂² I), the only family the '
          'denoiser knows, and M on that noise leaves it (pds_jax/samplers/edm_stochastic.py). PDS applies to '
          "'pc', 'ancestral' and dpm_solver_variant 'dpm_solver++_sde'; unset --freq_mask_path / --space_mask_path.")


class NoiseHeunSolver(Solver):
  """Steps j = 0 … n-1: raise σ_from[j] → σ_hat[j] with fresh noise, then a Heun step σ_hat[j] → σ_to[j].

  sigma_from, sigma_hat, sigma_to: (n,) leaves (float64 numpy on the host, float32 in the scan) with
  σ_hat ≥ σ_from > 0 and σ_hat > σ_to ≥ 0; σ_to = 0 only at the last step (the denoising step D(x̂, σ̂),
  1 NFE). `s_noise` (static) scales the added noise. The state is a `grid.GridState` (x̃ and the
  per-sample keys). jump_std (n,) = sqrt(σ̂² - σ_from²), computed on the host in float64 (exactly 0 where
  σ̂ = σ_from: in float32 on the device a fused σ̂² - σ² can round below 0).
  """
  sigma_from: np.ndarray
  sigma_hat: np.ndarray
  sigma_to: np.ndarray
  jump_std: np.ndarray
  # From the VE prior on the shipped model 12.5 % (edm_stochastic, 10 nodes) and 16 % (restart, 10 nodes) of the
  # samples were noise, from the fitted q_T none (docs/results.md, "Noise samples"): 'auto' starts from q_T.
  fitted_start = True
  s_noise: float = eqx.field(static=True)
  adds_noise: bool = eqx.field(static=True)
  sigma_last: float = eqx.field(static=True)
  name = 'noise_heun'
  stochastic = True

  def __init__(self, sde: sde_lib.SDE, sigma_from, sigma_hat, sigma_to, s_noise: float = 1.):
    sigma_from, sigma_hat, sigma_to = (np.asarray(a, np.float64) for a in (sigma_from, sigma_hat, sigma_to))
    if not (sigma_from.ndim == 1 and sigma_from.shape == sigma_hat.shape == sigma_to.shape and sigma_from.size):
      raise ValueError(f'{self.name}: sigma_from, sigma_hat, sigma_to must be 1-D of one length >= 1, got '
                       f'{sigma_from.shape}, {sigma_hat.shape}, {sigma_to.shape}.')
    if np.any(sigma_from <= 0) or np.any(sigma_hat < sigma_from) or np.any(sigma_to >= sigma_hat) or \
        np.any(sigma_to[:-1] <= 0) or sigma_to[-1] < 0:
      raise ValueError(f'{self.name}: each step needs sigma_hat >= sigma_from > 0 and sigma_hat > sigma_to >= 0 '
                       f'(0 only at the last step); got from {sigma_from}, hat {sigma_hat}, to {sigma_to}.')
    if not s_noise >= 0:
      raise ValueError(f'{self.name}: s_noise must be >= 0, got {s_noise}.')
    t_start = float(sde.edm_time(sigma_from[0]))
    super().__init__(sde, sde.T if abs(t_start - sde.T) < 1e-9 else t_start)  # σ(T) round-trips to T ± ulps
    self.sigma_from, self.sigma_hat, self.sigma_to = sigma_from, sigma_hat, sigma_to
    self.jump_std = np.sqrt(sigma_hat ** 2 - sigma_from ** 2)  # on the host: exactly 0 where σ̂ = σ_from
    self.s_noise = float(s_noise)
    self.adds_noise = bool(np.any(sigma_hat > sigma_from)) and self.s_noise > 0
    self.sigma_last = float(sigma_to[-1])

  @property
  def num_steps(self) -> int:
    return self.sigma_from.shape[0]

  def step_times(self) -> np.ndarray:
    return np.asarray(self.sde.edm_time(np.asarray(self.sigma_from)))

  @property
  def static_nfe(self) -> int:
    return 2 * self.num_steps - int(self.sigma_last == 0)

  def init(self, rng, x):
    return GridState(x=x / self.sde.edm_scale(jnp.float32(self.t_start)), rng=rng)

  def settings(self) -> dict:
    positive = np.concatenate([self.sigma_from, self.sigma_to[self.sigma_to > 0]])
    return {'sigma_max': float(positive.max()), 'sigma_min': float(positive.min())}

  def output(self, state):
    last = self.sigma_last
    return state.x if last == 0 else self.sde.edm_scale(jnp.float32(self.sde.edm_time(np.float64(last)))) * state.x

  def check_preconditioner(self, preconditioner: Preconditioner) -> None:
    if not preconditioner.is_identity:
      raise ValueError(f"sampling.method = '{self.name}' adds noise before ODE steps, and " + NO_PDS)

  def step(self, score_fn, preconditioner, state, i):
    denoise = denoiser_from_score(score_fn, self.sde)
    sigma_hat, sigma_next = self.sigma_hat[i], self.sigma_to[i]
    rng, step_rng = split(state.rng)
    x = state.x
    if self.adds_noise:  # Algorithm 2, line 6: x̂ = x + sqrt(σ̂² - σ²) S_noise z
      x = x + self.jump_std[i] * self.s_noise * normal(step_rng, x.shape)

    def heun(x):  # Algorithm 2, lines 7-11
      d = (x - denoise(x, sigma_hat)) / sigma_hat
      x_euler = x + (sigma_next - sigma_hat) * d
      d_prime = (x_euler - denoise(x_euler, sigma_next)) / sigma_next
      return x + (sigma_next - sigma_hat) * (0.5 * d + 0.5 * d_prime)

    if self.sigma_last == 0:  # the last step to σ = 0: x + (0 - σ̂) d = D(x̂, σ̂) (Algorithm 2, i = N - 1)
      x = jax.lax.cond(sigma_next > 0, heun, lambda x: denoise(x, sigma_hat), x)
    else:
      x = heun(x)
    return state._replace(x=x, rng=rng)


class EDMStochasticSolver(NoiseHeunSolver):
  """EDM's Algorithm 2 on the σ grid `sigmas` (N + 1,), σ_N ≥ 0: churn γ_i, then a Heun step; 2N - 1 NFE."""
  name = 'edm_stochastic'

  def __init__(self, sde: sde_lib.SDE, sigmas, s_churn: float = 0., s_tmin: float = 0., s_tmax: float = np.inf,
               s_noise: float = 1.):
    sigmas = np.asarray(sigmas, np.float64)
    if sigmas.ndim != 1 or sigmas.shape[0] < 2 or np.any(np.diff(sigmas) >= 0) or sigmas[-1] < 0:
      raise ValueError(f'{self.name}: sigmas must be a strictly decreasing 1-D grid of >= 2 noise levels ending at '
                       f'>= 0, got {sigmas}.')
    if not s_churn >= 0:
      raise ValueError(f'{self.name}: sampling.s_churn = {s_churn} must be >= 0.')
    if not s_tmin <= s_tmax:
      raise ValueError(f'{self.name}: sampling.s_tmin = {s_tmin} must be <= sampling.s_tmax = {s_tmax}.')
    sigma, n = sigmas[:-1], sigmas.shape[0] - 1
    gamma = np.where((s_tmin <= sigma) & (sigma <= s_tmax), min(s_churn / n, np.sqrt(2.) - 1.), 0.)
    sigma_cap = max(float(sde.edm_sigma(np.float64(sde.T))), float(sigma[0]))  # the model's largest noise level
    super().__init__(sde, sigma, np.minimum(sigma * (1. + gamma), sigma_cap), sigmas[1:], s_noise)


@register_method('edm_stochastic', fields=GRID_FIELDS + (S_CHURN, S_TMIN, S_TMAX, S_NOISE), default_steps=18)
def _edm_stochastic(fields, ctx):
  return EDMStochasticSolver(ctx.sde, sigma_grid(fields, ctx, 'edm_stochastic'), float(fields[S_CHURN]),
                             float(fields[S_TMIN]), float(fields[S_TMAX]), float(fields[S_NOISE]))
