"""Restart sampling (Xu et al. 2023, "Restart Sampling for Improving Generative Processes", Algorithm 1).

The main process is EDM's Heun ODE sampler on the σ grid σ_0 > … > σ_{N-1} > σ_N = 0 of N = `num_steps`
nodes (`grid.sigma_grid`). Restart adds K restart iterations in one interval [t_min, t_max] (σ units):
t_min is moved to the main-grid node σ_j nearest `restart_tmin` (the official code's rounding), and after
the main step that reaches σ_j, K times (Xu et al. eq. 3 and Algorithm 1)
  x̃ ← x̃ + sqrt(t_max² - t_min²) z,  z ~ N(0, I)        the forward process from t_min to t_max (exact:
                                                         p_{t_min} * N(0, (t_max² - t_min²) I) = p_{t_max})
  x̃ ← Heun ODE from t_max back to t_min on the Karras grid (ρ = `rho`) of `restart_steps` nodes,
then the main steps go on from σ_j. Each restart iteration contracts the error accumulated above t_min by
the added noise (Xu et al. Theorem 2: the total-variation error of the ODE part is multiplied by
< 1 per iteration) while its own ODE steps add only a small discretization error.

Steps are `edm_stochastic.NoiseHeunSolver` steps (noise raising σ_from to σ̂, then Heun σ̂ → σ_to): the
main steps add no noise, the first step of each restart iteration adds the jump t_min → t_max. The scan
has N + K (restart_steps - 1) steps, and the score evaluations per sample are exactly
  NFE = (2N - 1) + 2 K (restart_steps - 1),
Heun's 2N - 1 on the main grid plus 2 per restart Heun step (t_min > 0, so none is a denoising step);
e.g. EDM's 18 nodes with K = 2, 3 nodes: 35 + 8 = 43, the official CIFAR-10 setting.

Defaults by measurement on the shipped VE model (data in [0, 1]; 64 samples, seed 9, 11 main nodes, K = 2,
3 nodes, 29 NFE; benchmarks/stochastic_defaults.py): the interval [0.03, 0.3] (Xu et al.'s CIFAR-10 [0.06, 0.30]
for data in [-1, 1], halved) gave SWD 76.6 / FD 45.4 against heun's 97.6 / 85.0 at 21 NFE; a high interval
[0.5, 5] removed the noise samples (18.8 % → 0 %) but gave SWD 112.4. 16 main nodes by default: NFE 31 + 8 = 39.

PDS is not defined: the restart jump must map p_{t_min} to p_{t_max} = p_data * N(0, t_max² I), which M on its
noise breaks (as for EDM's churn, `edm_stochastic`), and K on the ODE steps changes their flow map.
"""
from __future__ import annotations

import equinox as eqx
import numpy as np

from pds_jax import sde_lib
from pds_jax.preconditioning import Preconditioner
from pds_jax.samplers.edm_stochastic import NO_PDS, NoiseHeunSolver
from pds_jax.samplers.grid import GRID_FIELDS, RHO, karras_sigmas, sigma_grid
from pds_jax.samplers.methods import declare_field, register_method

RESTART_TMIN = declare_field('restart_tmin', 0.03, float, 'restart: t_min (σ) of the restart interval, moved to '
                                                         'the nearest node of the main grid (default measured)')
RESTART_TMAX = declare_field('restart_tmax', 0.3, float, 'restart: t_max (σ) of the restart interval')
RESTART_K = declare_field('restart_k', 2, int, 'restart: restart iterations K in the interval (0: heun)')
RESTART_STEPS = declare_field('restart_steps', 3, int, 'restart: Karras nodes from t_max to t_min of each restart '
                                                       'iteration (restart_steps - 1 Heun steps, 2 NFE each)')


class RestartSolver(NoiseHeunSolver):
  """Heun on the main grid `sigmas` (N + 1,) with K restart iterations [σ_j, t_max] after reaching σ_j.

  restart_index: j (1 ≤ j ≤ N - 1 with σ_j > 0); restart_sigmas: the Karras nodes (restart_steps,) from t_max
  down to σ_j. NFE = 2N - 1 + 2 K (restart_steps - 1) (without the final 0 node: 2N + 2K(restart_steps - 1)).
  """
  restart_index: int = eqx.field(static=True)
  restart_k: int = eqx.field(static=True)
  name = 'restart'

  def __init__(self, sde: sde_lib.SDE, sigmas, restart_index: int, restart_sigmas, restart_k: int):
    sigmas, restart = np.asarray(sigmas, np.float64), np.asarray(restart_sigmas, np.float64)
    j = int(restart_index)
    if not 1 <= j < sigmas.shape[0] - 1 or not sigmas[j] > 0:
      raise ValueError(f'{self.name}: the restart interval must end at an inner positive node of the main grid; got '
                       f'index {j} of {sigmas.shape[0]} nodes.')
    if restart.ndim != 1 or restart.shape[0] < 2 or restart[-1] != sigmas[j] or np.any(np.diff(restart) >= 0):
      raise ValueError(f'{self.name}: restart nodes must decrease from t_max to the main node {sigmas[j]:.6g} '
                       f'(>= 2 nodes), got {restart}.')
    if int(restart_k) != restart_k or restart_k < 0:
      raise ValueError(f'{self.name}: sampling.restart_k = {restart_k} must be an integer >= 0.')
    main_from, main_to = sigmas[:-1], sigmas[1:]
    rest_from = np.concatenate([[sigmas[j]], restart[1:-1]])  # the jump σ_j → t_max, then plain Heun steps
    rest_hat, rest_to = restart[:-1], restart[1:]
    parts = ([(main_from[:j], main_from[:j], main_to[:j])] + [(rest_from, rest_hat, rest_to)] * int(restart_k)
             + [(main_from[j:], main_from[j:], main_to[j:])])
    super().__init__(sde, *(np.concatenate(p) for p in zip(*parts)), s_noise=1.)
    self.restart_index, self.restart_k = j, int(restart_k)

  def check_preconditioner(self, preconditioner: Preconditioner) -> None:
    if not preconditioner.is_identity:
      raise ValueError("sampling.method = 'restart' re-injects noise from t_min to t_max, and " + NO_PDS)

  def settings(self) -> dict:
    restart = np.asarray(self.sigma_hat)[np.asarray(self.sigma_hat) > np.asarray(self.sigma_from)]
    return {**super().settings(), 'restart_tmin': float(self.sigma_from[self.restart_index]),
            'restart_tmax': float(restart[0]) if restart.size else None}


@register_method('restart', fields=GRID_FIELDS + (RESTART_TMIN, RESTART_TMAX, RESTART_K, RESTART_STEPS),
                 default_steps=16)  # NFE 2·16 - 1 + 2·2·2 = 39
def _restart(fields, ctx):
  sigmas = sigma_grid(fields, ctx, 'restart')
  t_min, t_max = float(fields[RESTART_TMIN]), float(fields[RESTART_TMAX])
  nodes = int(fields[RESTART_STEPS])
  if nodes != fields[RESTART_STEPS] or nodes < 2:
    raise ValueError(f'config.sampling.restart_steps = {fields[RESTART_STEPS]!r} must be an integer >= 2.')
  inner = np.arange(1, sigmas.shape[0] - 1)
  inner = inner[sigmas[inner] > 0]
  if not inner.size:
    raise ValueError(f'config.sampling.num_steps = {ctx.num_steps}: restart needs a main grid with an inner node.')
  j = int(inner[np.argmin(np.abs(sigmas[inner] - t_min))])  # the official rounding of t_min to the main grid
  if not sigmas[j] < t_max <= sigmas[0]:
    raise ValueError(f'config.sampling.restart_tmax = {t_max} must lie in (t_min, σ_max] = ({sigmas[j]:.6g}, '
                     f'{sigmas[0]:.6g}] (t_min = restart_tmin {t_min} moved to the nearest main node).')
  restart = karras_sigmas(t_max, sigmas[j], nodes, float(fields[RHO]), append_zero=False)
  restart[-1] = sigmas[j]  # the ρ-th power of the ρ-th root round-trips to σ_j ± ulps
  return RestartSolver(ctx.sde, sigmas, j, restart, int(fields[RESTART_K]))
