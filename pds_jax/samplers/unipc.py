"""UniPC (Zhao et al. 2023): the unified predictor-corrector, data prediction, on a σ grid for VE, VP and sub-VP.

In EDM's variables (`pds_jax.samplers.grid`) x̃ = x / m and λ = -log σ, the exact probability-flow
solution from λ_s to λ_t = λ_s + h in data prediction is (DPM-Solver++, Lu et al. 2022b, divided by α_t)
  x̃_t = (σ_t / σ_s) x̃_s + σ_t ∫_{λ_s}^{λ_t} e^{λ} D(x̃_λ, λ) dλ .
UniPC with order p (Zhao et al. 2023, §3: UniC-p, Algorithm 1; UniP-p, Algorithm 2; the official
`multistep_uni_pc_bh_update` with `predict_x0=True`) writes, with the nodes λ_{s_k} = λ_s + r_k h of
the past evaluations (r_k < 0; r_p = 1 is λ_t), D_k = (D(λ_{s_k}) - D(λ_s)) / r_k and
B(h) = -h (bh1) or e^{-h} - 1 (bh2):
  predictor UniP-p:  x̃_t = (σ_t/σ_s) x̃_s - (e^{-h} - 1) D_s - B(h) Σ_{k<p} a_k D_k
  corrector UniC-p:  x̃_t^c = (σ_t/σ_s) x̃_s - (e^{-h} - 1) D_s - B(h) (Σ_{k<p} c_k D_k + c_p D_t)
where D_t = D(x̃_t, σ_t) - D_s is the model's value at the predicted x̃_t, and c (p unknowns) solves the
order conditions R c = g / B(h), (R)_{jk} = r_k^{j-1}, g_j = j! (-h) φ_{j+1}(-h) for j = 1 … p
(φ_1(z) = (e^z - 1)/z, φ_{j+1}(z) = (φ_j(z) - 1/j!)/z), and a (p - 1 unknowns) the first p - 1 of
them on r_1 … r_{p-1}; UniP-2 uses a_1 = 1/2 and UniC-1 c_1 = 1/2 (the paper's choices; UniP-2
with bh2 is DPM-Solver++(2M)). The conditions make each update exact when D is a polynomial of
degree < p (UniP) or ≤ p (UniC) in λ (but for the fixed 1/2 choices).
UniC raises the order by one: UniPC-p converges at order p + 1 (Theorem 3.1). Where c or a solve
the conditions, only the products B(h) c = R⁻¹ g enter the update, so bh1 and bh2 differ only in the
fixed 1/2 choices: UniP-2 and UniC-1 (for p = 3, in the two warm-start steps).

The model value at the predicted x̃_t is the next step's D_s: the corrector costs no evaluation,
so a grid of n nodes σ_0 > … > σ_{n-1} > 0 costs n NFE. Scan step i (from σ_i):
  1. d_i = D(x̃_i^pred, σ_i)                                  (the one evaluation)
  2. x̃_i = x̃_i^pred + Σ_k C_ik d_{i-k}       (UniC of step i-1 minus its UniP; 0 for i = 0)
  3. x̃_{i+1}^pred = (σ_{i+1}/σ_i) x̃_i + Σ_k P_ik d_{i-k}   (UniP of order min(p, i + 1))
The weights P, C (num_steps, p + 1) are computed once on the host in float64 from the λ grid.
With `noise_removal` the grid ends with σ = 0 and the last step is the denoising step
x̃ = D(x̃_{n-1}^pred, σ_{n-1}) (the official `denoise_to_zero`), so the last update to σ_{n-1} is
not corrected (the official "no corrector at the last step"): `num_steps` nodes = NFE. Without it
the last step ends at σ_{n-1} uncorrected and NFE = num_steps - 1 (nodes) as for the other methods.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from pds_jax.samplers.dpm_solver import SOLVER_ORDER
from pds_jax.samplers.grid import GRID_FIELDS, WeightedMultistepSolver
from pds_jax.samplers.methods import declare_field, register_method

ORDERS = (1, 2, 3)
VARIANTS = ('bh1', 'bh2')
UNIPC_VARIANT = declare_field('unipc_variant', 'bh2', str, "UniPC's B(h): 'bh1' (B = h) or 'bh2' (B = e^h - 1; "
                                                           'the default, measured in docs/results.md)')


def unipc_coefficients(lam_hist, lam_next, variant: str, corrector: bool) -> np.ndarray:
  """UniP-p or UniC-p weights on the data predictions of one step, in float64.

  Args:
    lam_hist: (p,) λ of the past evaluations, newest first: λ_s = lam_hist[0], λ_{s_k} = lam_hist[k].
    lam_next: λ_t of the step's end (λ_t > λ_s).
    variant: 'bh1' or 'bh2'.
    corrector: UniC-p (weights on D_t too) instead of UniP-p.

  Returns:
    (p + 1,) weights w with x̃_t = (σ_t/σ_s) x̃_s + Σ_j w_j D_j, D_0 = D_t (0 for the predictor) and
    D_j = D(λ_hist[j - 1]) for j ≥ 1.
  """
  lam_hist = np.asarray(lam_hist, np.float64)
  p = lam_hist.shape[0]
  h = float(lam_next - lam_hist[0])
  hh = -h  # data prediction: the official `hh = -h`
  b_h = hh if variant == 'bh1' else math.expm1(hh)
  r = np.concatenate([(lam_hist[1:] - lam_hist[0]) / h, [1.]])  # r_1 … r_{p-1}, r_p = 1
  # hh φ_{k+1}(hh), hh = -h: φ_2 from e^{hh} - 1, then hh φ_{k+2} = hh φ_{k+1} / hh - 1 / (k+1)!
  phi = math.expm1(hh) / hh - 1
  b, factorial = [], 1
  for k in range(1, p + 1):
    b.append(phi * factorial / b_h)
    factorial *= k + 1
    phi = phi / hh - 1. / factorial
  b = np.asarray(b)
  big_r = np.stack([r ** (k - 1) for k in range(1, p + 1)])  # (R)_{kj} = r_j^{k-1}
  w = np.zeros(p + 1)
  w[1] = -math.expm1(hh)  # the first-order (DDIM) part: -(e^{-h} - 1) D_s
  if corrector:
    rho = np.array([0.5]) if p == 1 else np.linalg.solve(big_r, b)
    w[0] = -b_h * rho[-1]
    w[1] += b_h * rho[-1]  # D_t = D(λ_t) - D_s
    diffs = rho[:-1]
  else:
    diffs = np.zeros(0) if p == 1 else (np.array([0.5]) if p == 2 else np.linalg.solve(big_r[:-1, :-1], b[:-1]))
  for k, rho_k in enumerate(diffs, start=1):  # -B(h) ρ_k (D(λ_{s_k}) - D_s) / r_k
    w[k + 1] -= b_h * rho_k / r[k - 1]
    w[1] += b_h * rho_k / r[k - 1]
  return w


class UniPCSolver(WeightedMultistepSolver):
  """Multistep UniPC-p (UniP-p predictor, UniC-p corrector, data prediction) on a σ grid; 1 NFE per step.

  The state's history holds the denoiser outputs (B, H, W, C) of the previous p steps, newest
  first. `weights` (num_steps, 2, p + 1): [i, 0] the corrector's and [i, 1] the predictor's weights
  on (d_i, d_{i-1}, …, d_{i-p}) of scan step i (module docstring); a leaf, float64 numpy on the host.
  """
  name = 'unipc'
  ORDERS, VARIANTS = ORDERS, VARIANTS
  ORDER_FIELD, VARIANT_FIELD = SOLVER_ORDER, UNIPC_VARIANT

  def weight_table(self) -> np.ndarray:
    n, p, real = self.num_steps, self.order, self.real_steps
    lam = -np.log(np.where(self.sigmas > 0, self.sigmas, 1.))
    pred, corr = np.zeros((n, p + 1)), np.zeros((n, p + 1))
    for i in range(real):
      k = min(p, i + 1)  # warm start: the order the history allows (the official code's)
      hist = lam[i::-1][:k]
      pred[i, :k] = unipc_coefficients(hist, lam[i + 1], self.variant, corrector=False)[1:]
      if i + 1 < real:  # UniC of step i, applied at step i + 1 (not after the last update)
        corr[i + 1, :k + 1] = unipc_coefficients(hist, lam[i + 1], self.variant, corrector=True)
        corr[i + 1, 1:k + 1] -= pred[i, :k]
    return np.stack([corr, pred], axis=1)

  def init_history(self, x):
    return tuple(jnp.zeros_like(x) for _ in range(self.order))

  def grid_step(self, denoise, preconditioner, state, i, sigma, sigma_next):
    d = denoise(state.x, sigma)
    stack = (d,) + state.history  # d_i, d_{i-1}, …, d_{i-p}
    combine = lambda w: sum(w[k] * stack[k] for k in range(len(stack)))
    x = state.x + combine(self.weights[i, 0])  # UniC-p of the step that ended here (Algorithm 1)
    x = (sigma_next / sigma) * x + combine(self.weights[i, 1])  # UniP-p to σ_{i+1} (Algorithm 2)
    return state._replace(x=x, history=stack[:self.order])


register_method('unipc', fields=GRID_FIELDS + (SOLVER_ORDER, UNIPC_VARIANT), default_steps=10)(UniPCSolver.from_fields)
