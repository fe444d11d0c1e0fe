"""EDM samplers on a σ grid: Euler, Heun (Karras et al. 2022) and the VE ancestral step (METHOD.md §5).

Everything is written for the VE variable x = x_0 + σ ε and a denoiser D(x, σ) ≈ E[x_0 | x]:
  probability-flow ODE   dx/dσ = (x - D(x, σ)) / σ                     (EDM eq. 3 with s(t) = 1, σ(t) = t)
  Euler step             x' = x + (σ' - σ) d,  d = (x - D(x, σ)) / σ
  Heun step              x' = x + (σ' - σ) (d + d') / 2, d' at (x_Euler, σ')   (EDM Algorithm 1)
  ancestral step         x' = (1 - r) D(x, σ) + r x + (σ'/σ) sqrt(σ² - σ'²) z,  r = σ'² / σ²
The ancestral step is the DDPM posterior q(x_σ' | x_σ, x_0 = D) of the VE process, as in the
toy code of Fassina et al. (`ddpm_one_step`). Heun's second-order correction is skipped on a
step to σ' = 0 (EDM's `i < num_steps - 1` on its grids, which end in 0).

Samplers share one signature, in the k-diffusion style:
  sampler(denoiser, x, sigmas, rng, *, preconditioner=None, callback=None) -> (samples, nfe)
with x = x_T (B, ...) drawn at σ_0 = sigmas[0], sigmas (N + 1,) decreasing (the last may be 0),
and `denoiser(x, sigma)` taking σ as a (B,) vector. Each sampler is one `lax.scan` over the
steps, pure and jittable (`jax.jit(sampler)` when the denoiser is a `jax.tree_util.Partial`, as
`denoiser_from_score` returns); rng is used by the ancestral sampler only; nfe is the number of
denoiser evaluations, a traced int32 scalar.

PDS (an extension in the spirit of pds_jax.sampling): with a `Preconditioner` M, K = M Mᵀ is
applied to the update direction as the official PDS code applies it to the whole reverse drift,
and the ancestral noise becomes M z:
  Euler/Heun   x' = x + (σ' - σ) K d        (resp. K (d + d') / 2)
  ancestral    x' = x + (1 - r) K (D - x) + (σ'/σ) sqrt(σ² - σ'²) M z
(note (1 - r) D + r x = x + (1 - r)(D - x), so the ancestral update direction is σ² (1 - r) s).
With the identity preconditioner K and M are no-ops and the samplers are bit-for-bit the plain ones.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from pds_jax import sampling, sde_lib
from pds_jax.preconditioning import Preconditioner
from pds_jax.utils import batch_mul, registry_decorator

Denoiser = Callable[[jax.Array, jax.Array], jax.Array]
ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]

_SAMPLERS = {}
register_sampler = registry_decorator(_SAMPLERS, 'EDM sampler')


def get_sampler(name: str) -> Callable:
  """The EDM sampler registered under `name` ('euler', 'heun', 'ancestral')."""
  if name not in _SAMPLERS:
    raise ValueError(f'Unknown EDM sampler {name!r}; registered: {sorted(_SAMPLERS)}.')
  return _SAMPLERS[name]


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


def _root(a, b, c):
  """The non-negative root of a t² + b t = c (a, b ≥ 0, c ≥ 0), as 2c / (b + sqrt(b² + 4ac))."""
  return 2 * c / (b + jnp.sqrt(b ** 2 + 4 * a * c))


def sigma_to_time(sde: sde_lib.SDE, sigma: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """(t, m): the SDE time whose marginal, rescaled to the VE form x / m = x_0 + σ ε, has noise σ.

  VE:     σ(t) = σ_min (σ_max / σ_min)^t, m = 1, so t = log(σ / σ_min) / log(σ_max / σ_min);
  VP:     x_t = m(t) x_0 + sqrt(1 - m²) ε with log m = -¼ t² Δβ - ½ t β_0, so σ = sqrt(1 - m²) / m,
          m = 1 / sqrt(1 + σ²) and t solves ¼ Δβ t² + ½ β_0 t = ½ log(1 + σ²) (EDM's `vp_sigma_inv`);
  sub-VP: std = 1 - m², so σ = (1 - m²) / m, m = (sqrt(σ² + 4) - σ) / 2 and ¼ Δβ t² + ½ β_0 t = -log m.
  """
  if isinstance(sde, sde_lib.VESDE):
    t = jnp.log(sigma / sde.sigma_min) / np.log(sde.sigma_max / sde.sigma_min)
    return t, jnp.ones_like(sigma)
  if isinstance(sde, (sde_lib.VPSDE, sde_lib.subVPSDE)):
    if isinstance(sde, sde_lib.VPSDE):
      m = jax.lax.rsqrt(1 + sigma ** 2)
      c = 0.5 * jnp.log1p(sigma ** 2)
    else:
      m = 0.5 * (jnp.sqrt(sigma ** 2 + 4) - sigma)
      c = -jnp.log(m)
    return _root(0.25 * (sde.beta_1 - sde.beta_0), 0.5 * sde.beta_0, c), m
  raise TypeError(f'sigma_to_time: unsupported SDE {type(sde).__name__}; use VESDE, VPSDE or subVPSDE.')


def _score_denoiser(score_fn: ScoreFn, x: jax.Array, sigma: jax.Array, *, sde: sde_lib.SDE) -> jax.Array:
  sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), (x.shape[0],))
  t, m = sigma_to_time(sde, sigma)
  return x + batch_mul(sigma ** 2 * m, score_fn(batch_mul(m, x), t))


def denoiser_from_score(score_fn: ScoreFn, sde: sde_lib.SDE) -> Partial:
  """D(x, σ) = x + σ² m s(m x, t(σ)) for a score model s(x, t) of a VE, VP or sub-VP SDE.

  (t, m) = `sigma_to_time(sde, σ)`. For VE (m = 1) this is the VE denoiser x + σ² s(x, σ). For
  VP/sub-VP the VE variable x is mapped to the model's x_t = m x, and the chain rule gives the VE
  score m s(m x, t). The result is a `Partial` (a pytree: the bound arrays of `score_fn` stay jit
  arguments); σ may be a scalar or a (B,) vector. The score model is only trained for
  t ∈ [eps, 1]: keep the σ grid inside the model's range.
  """
  score_fn = score_fn if isinstance(score_fn, Partial) else Partial(score_fn)
  return Partial(functools.partial(_score_denoiser, sde=sde), score_fn)


# ----------------------------------------------------------------------------- samplers


def _prepare(x: jax.Array, sigmas, preconditioner: Optional[Preconditioner]):
  sigmas = jnp.asarray(sigmas, x.dtype)
  if sigmas.ndim != 1 or sigmas.shape[0] < 2:
    raise ValueError(f'EDM sampler: sigmas must be a 1-D grid of >= 2 noise levels, got shape {sigmas.shape}.')
  preconditioner = Preconditioner() if preconditioner is None else preconditioner
  return jnp.stack([sigmas[:-1], sigmas[1:]], axis=1), preconditioner


def _report(callback, i, sigma, sigma_next, x, denoised):
  if callback is not None:
    jax.debug.callback(callback, {'i': i, 'sigma': sigma, 'sigma_next': sigma_next, 'x': x, 'denoised': denoised},
                       ordered=True)


def _ode_sampler(denoiser: Denoiser, x: jax.Array, sigmas, preconditioner, callback, second_order: bool):
  pairs, precond = _prepare(x, sigmas, preconditioner)
  k = precond.apply_mmt
  ones = jnp.ones((x.shape[0],), x.dtype)

  def step(carry, inputs):
    x, nfe = carry
    i, (sigma, sigma_next) = inputs
    denoised = denoiser(x, sigma * ones)
    d = (x - denoised) / sigma
    x_next = x + (sigma_next - sigma) * k(d)
    if second_order:
      def correct(x_next):
        d_prime = (x_next - denoiser(x_next, sigma_next * ones)) / sigma_next
        return x + (sigma_next - sigma) * k(0.5 * d + 0.5 * d_prime)
      x_next = jax.lax.cond(sigma_next > 0, correct, lambda x_next: x_next, x_next)
      nfe = nfe + 1 + (sigma_next > 0).astype(jnp.int32)
    else:
      nfe = nfe + 1
    _report(callback, i, sigma, sigma_next, x_next, denoised)
    return (x_next, nfe), None

  (x, nfe), _ = jax.lax.scan(step, (x, jnp.int32(0)), (jnp.arange(pairs.shape[0]), pairs))
  return x, nfe


@register_sampler(name='euler')
def euler_sampler(denoiser: Denoiser, x: jax.Array, sigmas, rng: Optional[jax.Array] = None, *,
                  preconditioner: Optional[Preconditioner] = None, callback: Optional[Callable] = None
                  ) -> Tuple[jax.Array, jax.Array]:
  """Euler steps of the probability-flow ODE, x' = x + (σ' - σ) K (x - D(x, σ)) / σ; 1 NFE per step.

  Args:
    denoiser: D(x, σ) with σ of shape (B,).
    x: x_T (B, ...) at σ = sigmas[0].
    sigmas: (N + 1,) decreasing noise levels (`karras_sigmas`, `truncate_sigmas`).
    rng: unused (deterministic sampler; kept for the shared signature).
    preconditioner: PDS M (None = identity = EDM).
    callback: called (outside jit) with {'i', 'sigma', 'sigma_next', 'x', 'denoised'} after each step.

  Returns:
    (x_0 (B, ...), nfe).
  """
  del rng
  return _ode_sampler(denoiser, x, sigmas, preconditioner, callback, second_order=False)


@register_sampler(name='heun')
def heun_sampler(denoiser: Denoiser, x: jax.Array, sigmas, rng: Optional[jax.Array] = None, *,
                 preconditioner: Optional[Preconditioner] = None, callback: Optional[Callable] = None
                 ) -> Tuple[jax.Array, jax.Array]:
  """EDM's deterministic sampler (S_churn = 0): Heun steps, Euler on a last step to σ = 0.

  2 NFE per step (1 on a step to 0). Arguments and returns as `euler_sampler`.
  """
  del rng
  return _ode_sampler(denoiser, x, sigmas, preconditioner, callback, second_order=True)


def _step_key(rng: jax.Array, i: jax.Array) -> jax.Array:
  """fold_in(rng, i) for one key, or for each of per-sample keys (B, 2)."""
  return jax.vmap(jax.random.fold_in, (0, None))(rng, i) if rng.ndim == 2 else jax.random.fold_in(rng, i)


@register_sampler(name='ancestral')
def ancestral_sampler(denoiser: Denoiser, x: jax.Array, sigmas, rng: jax.Array, *,
                      preconditioner: Optional[Preconditioner] = None, callback: Optional[Callable] = None
                      ) -> Tuple[jax.Array, jax.Array]:
  """VE ancestral (DDPM posterior) steps x' = x + (1 - r) K (D - x) + (σ'/σ) sqrt(σ² - σ'²) M z.

  r = σ'² / σ². Step i draws z from fold_in(rng, i); rng is one key or per-sample keys (B, 2)
  (then item b's noise depends on its own key only). 1 NFE per step. Other arguments and
  returns as `euler_sampler`.
  """
  pairs, precond = _prepare(x, sigmas, preconditioner)
  ones = jnp.ones((x.shape[0],), x.dtype)

  def step(x, inputs):
    i, (sigma, sigma_next) = inputs
    denoised = denoiser(x, sigma * ones)
    r = sigma_next ** 2 / sigma ** 2
    std = sigma_next / sigma * jnp.sqrt(sigma ** 2 - sigma_next ** 2)
    noise = precond.apply(sampling.normal(_step_key(rng, i), x.shape))
    x_next = x + (1 - r) * precond.apply_mmt(denoised - x) + std * noise
    _report(callback, i, sigma, sigma_next, x_next, denoised)
    return x_next, None

  x, _ = jax.lax.scan(step, x, (jnp.arange(pairs.shape[0]), pairs))
  return x, jnp.int32(pairs.shape[0])


# ----------------------------------------------------------------------------- the PC sampler from σ_T


def _rescaled_time_score(score_fn: ScoreFn, x: jax.Array, t: jax.Array, *, kappa: float) -> jax.Array:
  return score_fn(x, kappa * t)


def pc_sample_from(rng: jax.Array, score_fn: ScoreFn, sde: sde_lib.VESDE, x_t: jax.Array, sigma_t: float, *,
                   num_steps: Optional[int] = None, predictor='reverse_diffusion', corrector='langevin',
                   snr: float = 0.16, n_steps: int = 1, probability_flow: bool = False, denoise: bool = True,
                   eps: float = 1e-5, preconditioner: Optional[Preconditioner] = None,
                   pds_variant: str = 'official') -> Tuple[jax.Array, int]:
  """score_sde's PC sampler (pds_jax.sampling) started from x_T at σ(t) = σ_T of a VE model.

  The VE time grid truncated at σ_T is the PC sampler of the sub-SDE VESDE(σ_min, σ_T, N'),
  whose σ'(t') = σ_min (σ_T / σ_min)^{t'} equals the model's σ(κ t') with
  κ = log(σ_T / σ_min) / log(σ_max / σ_min): the model is queried at t = κ t', the discrete
  σ's of reverse_diffusion/ancestral run from σ_T down, and eps' = eps / κ keeps the last
  noise level σ(eps). By default N' = round((N - 1)(κ - eps) / (1 - eps)) + 1 keeps the
  original spacing in t. The chain starts at x_T itself (no prior draw and no M applied to it).

  Args:
    rng: one PRNG key (score_sde's stream) or per-sample keys (B, 2).
    score_fn: the VE model's s(x, t), t of shape (B,).
    sde: the model's VESDE.
    x_t: x_T (B, H, W, C) drawn from q_T ≈ p_{σ_T}.
    sigma_t: σ_T, with σ(eps) < σ_T ≤ σ_max.
    num_steps: N' (default above).
    Others: as `pds_jax.sampling.PCSampler`.

  Returns:
    (samples, nfe).
  """
  if not isinstance(sde, sde_lib.VESDE):
    raise TypeError(f'pc_sample_from: needs a VESDE model, got {type(sde).__name__}.')
  kappa = float(np.log(sigma_t / sde.sigma_min) / np.log(sde.sigma_max / sde.sigma_min))
  if not (eps < kappa <= 1):
    sigma_eps = sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** eps
    raise ValueError(f'pc_sample_from: sigma_T = {sigma_t} must lie in (sigma(eps) = {sigma_eps:.6g}, '
                     f'sigma_max = {sde.sigma_max}].')
  if num_steps is None:
    num_steps = int(round((sde.N - 1) * (kappa - eps) / (1 - eps))) + 1
  sub_sde = sde_lib.VESDE(sde.sigma_min, sigma_t, num_steps)
  score_fn = score_fn if isinstance(score_fn, Partial) else Partial(score_fn)
  sub_score = Partial(functools.partial(_rescaled_time_score, kappa=kappa), score_fn)
  sampler = sampling.PCSampler(sub_sde, x_t.shape, predictor, corrector, snr=snr, n_steps=n_steps,
                               probability_flow=probability_flow, denoise=denoise, eps=eps / kappa,
                               pds_variant=pds_variant)
  try:
    return sampler(rng, sub_score, preconditioner, x_init=x_t)
  except sampling.NonFiniteSampleError as e:
    t = float(np.linspace(1., eps / kappa, sub_sde.N)[e.step]) * kappa  # the model's time
    raise sampling.NonFiniteSampleError(e.step, t, sub_sde.N) from None
