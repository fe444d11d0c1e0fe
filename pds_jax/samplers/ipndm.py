"""iPNDM (Zhang & Chen 2023, "Fast sampling of diffusion models with exponential integrator" (DEIS), its improved PNDM):
Adams–Bashforth multistep steps of EDM's probability-flow ODE, for VE, VP and sub-VP.

In EDM's variables (`pds_jax.samplers.grid`) the ODE is dx̃/dσ = ε(x̃, σ) = (x̃ - D(x̃, σ)) / σ
(EDM eq. 3). iPNDM of order p steps from σ_i to σ_{i+1} with the derivatives of the last p nodes
  x̃_{i+1} = x̃_i + (σ_{i+1} - σ_i) Σ_{k<p} β_k ε_{i-k}
with the classical Adams–Bashforth coefficients (DEIS's iPNDM; the GITS / AMED `sample_ipndm`):
  p = 1: 1      p = 2: (3, -1)/2      p = 3: (23, -16, 5)/12      p = 4: (55, -59, 37, -9)/24,
and the lower-order warm start p_i = min(p, i + 1) with the history available (the "improved" of
iPNDM: no Runge–Kutta start, so 1 NFE per step). These coefficients assume equal steps; on a smooth
non-uniform grid (Karras, logSNR) they miss the grid's curvature at O(h³) per step, so iPNDM-p is a
second-order method there (p ≥ 2; order p on a uniform grid) with a small error constant: the
published iPNDM, and the default ('fixed'). `ipndm_variant = 'variable'` uses the variable-step
Adams–Bashforth weights instead: β_{ik} = ∫_{σ_i}^{σ_{i+1}} ℓ_k(s) ds / (σ_{i+1} - σ_i) with ℓ_k the
Lagrange basis on σ_i, …, σ_{i-p+1} (equal to the above on a uniform grid; order p on any grid), which
is 2-20x worse at NFE ≤ 10 on the exact Gaussian (its extrapolation over the large early σ steps).
The order is `ipndm_order`, not DPM-Solver's `solver_order` (whose default, 2, is iPNDM's worst):
default 3, measured (below): iPNDM-3 reaches the 256-sample floor from NFE 6 on VE and VP, where the
published iPNDM-4 stays 1.5-3x above it; iPNDM-4 is better only at NFE 5 on VP (KL 0.0056 vs 0.0125).
With `noise_removal` the last step is the denoising step x̃ = D(x̃, σ_{n-1}) (1 NFE), so a grid of
`num_steps` nodes costs num_steps NFE, as for every σ-grid method.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from pds_jax.samplers.grid import GRID_FIELDS, WeightedMultistepSolver
from pds_jax.samplers.methods import declare_field, register_method

ORDERS = (1, 2, 3, 4)
VARIANTS = ('fixed', 'variable')
ADAMS_BASHFORTH = {1: (1.,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12),
                   4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}
IPNDM_ORDER = declare_field('ipndm_order', 3, int, 'the order of iPNDM (1-4; warm start with lower orders; 3 '
                                                    'measured best at NFE 5-10, 4 is the published one)')
IPNDM_VARIANT = declare_field('ipndm_variant', 'fixed', str, "iPNDM's weights: 'fixed' (the published equal-step "
                                                             "Adams-Bashforth) or 'variable' (variable-step)")


def variable_step_weights(nodes, target: float) -> np.ndarray:
  """(p,) β with ∫_{nodes[0]}^{target} f = (target - nodes[0]) Σ_k β_k f(nodes[k]) for polynomials of degree < p.

  nodes: (p,) distinct past σ nodes, newest first (float64). Exact integration of the Lagrange
  interpolant of f through the nodes (the variable-step Adams–Bashforth weights).
  """
  nodes = np.asarray(nodes, np.float64)
  p, start = nodes.shape[0], nodes[0]
  scale = target - start
  u = (nodes - start) / scale  # in units of the step: u_0 = 0, the integral runs over [0, 1]
  # β solves the moment equations Σ_k β_k u_k^j = 1 / (j + 1), j < p.
  vander = np.stack([u ** j for j in range(p)])
  return np.linalg.solve(vander, 1. / np.arange(1, p + 1))


class IPNDMSolver(WeightedMultistepSolver):
  """iPNDM of order p (Adams–Bashforth, warm start) on a σ grid; 1 NFE per step.

  The state's history holds ε = (x̃ - D) / σ (B, H, W, C) of the previous p - 1 steps, newest first.
  `weights` (num_steps, p) = (σ_{i+1} - σ_i) β_{ik} on (ε_i, …, ε_{i-p+1}): a leaf, float64 numpy
  on the host.
  """
  name = 'ipndm'
  ORDERS, VARIANTS = ORDERS, VARIANTS
  ORDER_FIELD, VARIANT_FIELD = IPNDM_ORDER, IPNDM_VARIANT

  def weight_table(self) -> np.ndarray:
    weights = np.zeros((self.num_steps, self.order))
    for i in range(self.real_steps):
      k = min(self.order, i + 1)
      step = self.sigmas[i + 1] - self.sigmas[i]
      beta = (ADAMS_BASHFORTH[k] if self.variant == 'fixed'
              else variable_step_weights(self.sigmas[i::-1][:k], self.sigmas[i + 1]))
      weights[i, :k] = step * np.asarray(beta)
    return weights

  def init_history(self, x):
    return tuple(jnp.zeros_like(x) for _ in range(self.order - 1))

  def grid_step(self, denoise, preconditioner, state, i, sigma, sigma_next):
    x = state.x
    eps = (x - denoise(x, sigma)) / sigma  # dx̃/dσ, EDM eq. 3
    stack = (eps,) + state.history
    x = x + sum(self.weights[i, k] * stack[k] for k in range(self.order))
    return state._replace(x=x, history=stack[:self.order - 1])


register_method('ipndm', fields=GRID_FIELDS + (IPNDM_ORDER, IPNDM_VARIANT), default_steps=10)(IPNDMSolver.from_fields)
