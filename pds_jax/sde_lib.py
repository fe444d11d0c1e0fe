"""SDEs of score-based generative modelling: `VESDE`, `VPSDE`, `subVPSDE`.

Interface and float32 numerics follow score_sde's `sde_lib.py` (Song et al., ICLR 2021) so that
samples and scores match the original code: `T`, `N`, `sde(x, t)`, `marginal_prob(x, t)`,
`prior_sampling(rng, shape)`, `prior_logp(z)`, `discretize(x, t)` and `reverse(score_fn,
probability_flow)`. Arrays are NHWC batches; `t` is a (B,) vector. Every method is a pure JAX
function of its arguments.

An SDE is a pytree (an `equinox.Module`, as diffrax's terms): its discrete schedules (the (N,)
arrays `discrete_sigmas`, `discrete_betas`, …) are leaves and its settings (N, σ_min, β_0, …) are
static, so an SDE passed to a jitted function is an argument, never a constant of the program:
a sampler's compiled program does not grow with N.
"""
from __future__ import annotations

import abc
from typing import Callable, Optional, Tuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from pds_jax.utils import batch_mul

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


class SDE(eqx.Module):
  """A forward SDE dx = f(x, t) dt + g(t) dw on t in [0, T], discretised with N steps."""
  N: int = eqx.field(static=True)

  def __init__(self, N: int):
    if int(N) != N or N < 1:
      raise ValueError(f'SDE: the number of discretisation steps N must be a positive integer, got {N!r}.')
    self.N = int(N)

  @property
  def T(self) -> float:
    """End time of the SDE (1 for every score_sde SDE)."""
    return 1

  @abc.abstractmethod
  def sde(self, x: jax.Array, t: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """Drift f(x, t) (shape of x) and diffusion g(t) (shape (B,))."""

  @abc.abstractmethod
  def marginal_prob(self, x: jax.Array, t: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """Mean (shape of x) and std (shape (B,)) of p_t(x(t) | x(0) = x)."""

  @abc.abstractmethod
  def prior_sampling(self, rng: jax.Array, shape) -> jax.Array:
    """One draw of the prior p_T with the given shape."""

  @abc.abstractmethod
  def prior_logp(self, z: jax.Array) -> jax.Array:
    """Log-density of the prior for each item of the batch z, shape (B,)."""

  @abc.abstractmethod
  def with_num_scales(self, N: int) -> 'SDE':
    """The same SDE discretised with N steps (PDS's `speed_up` builds the SDE with N / k)."""

  @abc.abstractmethod
  def truncate(self, t_end: float, N: Optional[int] = None) -> 'SDE':
    """The same process on [0, t_end], with time rescaled to [0, 1]: its t' is this SDE's t_end · t'.

    A sampler started at t_end (from an init-aware x_T) is the plain sampler of this SDE with the
    model queried at t = t_end · t'. N defaults to this SDE's.
    """

  # The EDM view (Karras et al. 2022, eq. 4): x_t = m(t) (x_0 + σ(t) ε), so x̃ = x / m(t) is a VE
  # variable with noise level σ(t) and score m s(m x̃, t). The fast solvers step in x̃ and σ.

  def edm_scale(self, t: jax.Array) -> jax.Array:
    """m(t), the mean coefficient of p_t(x | x_0) (1 for VE)."""
    return self.marginal_prob(jnp.ones_like(t), t)[0]

  @abc.abstractmethod
  def edm_sigma(self, t: jax.Array) -> jax.Array:
    """σ(t) = std(t) / m(t), the noise level of x̃ = x / m(t)."""

  @abc.abstractmethod
  def edm_time(self, sigma: jax.Array) -> jax.Array:
    """The time t with edm_sigma(t) = σ (the inverse of `edm_sigma`)."""

  def discretize(self, x: jax.Array, t: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """Euler–Maruyama discretisation x_{i+1} = x_i + f_i(x_i) + G_i z_i; returns (f, G)."""
    dt = 1 / self.N
    drift, diffusion = self.sde(x, t)
    return drift * dt, diffusion * jnp.sqrt(dt)

  def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> 'ReverseSDE':
    """The reverse-time SDE (or probability-flow ODE) driven by `score_fn(x, t)`."""
    return ReverseSDE(self, score_fn, probability_flow)

  def timestep(self, t: jax.Array) -> jax.Array:
    """The discrete index of continuous time t, as score_sde computes it: int(t (N - 1) / T)."""
    return (t * (self.N - 1) / self.T).astype(jnp.int32)


class ReverseSDE:
  """Reverse-time SDE dx = [f - g² s] dt + g dw̄ (or the ODE with ½ g² s and no noise).

  Attributes mirror score_sde's `RSDE`: `N`, `T`, `probability_flow`, `sde`, `discretize`.
  """

  def __init__(self, forward: SDE, score_fn: ScoreFn, probability_flow: bool = False):
    self.forward = forward
    self.score_fn = score_fn
    self.probability_flow = probability_flow
    self.N = forward.N

  @property
  def T(self) -> float:
    return self.forward.T

  def sde(self, x: jax.Array, t: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """Drift and diffusion of the reverse SDE/ODE."""
    drift, diffusion = self.forward.sde(x, t)
    score = self.score_fn(x, t)
    drift = drift - batch_mul(diffusion ** 2, score * (0.5 if self.probability_flow else 1.))
    diffusion = jnp.zeros_like(diffusion) if self.probability_flow else diffusion
    return drift, diffusion

  def discretize(self, x: jax.Array, t: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """rev_f = f - G² s (× ½ for the probability flow), rev_G = G (0 for the probability flow)."""
    f, G = self.forward.discretize(x, t)
    rev_f = f - batch_mul(G ** 2, self.score_fn(x, t) * (0.5 if self.probability_flow else 1.))
    rev_G = jnp.zeros_like(G) if self.probability_flow else G
    return rev_f, rev_G


def _xp(x):
  """numpy for host scalars/arrays (float64 grids), jax.numpy for traced or device arrays."""
  return jnp if isinstance(x, jax.Array) else np


def _standard_normal_logp(z: jax.Array, var: float = 1.) -> jax.Array:
  """log N(z; 0, var I) for each item of the batch z."""
  n = np.prod(z.shape[1:])
  logp_fn = lambda z: -n / 2. * jnp.log(2 * np.pi * var) - jnp.sum(z ** 2) / (2 * var)
  return jax.vmap(logp_fn)(z)


class _BetaSDE(SDE):
  """Shared parts of the VP and sub-VP SDEs: linear β(t), the DDPM discrete betas, a N(0, I) prior."""
  beta_0: float = eqx.field(static=True)
  beta_1: float = eqx.field(static=True)
  discrete_betas: jax.Array
  alphas: jax.Array
  alphas_cumprod: jax.Array
  sqrt_alphas_cumprod: jax.Array
  sqrt_1m_alphas_cumprod: jax.Array

  def __init__(self, beta_min: float = 0.1, beta_max: float = 20., N: int = 1000):
    super().__init__(N)
    self.beta_0 = beta_min
    self.beta_1 = beta_max
    self.discrete_betas = jnp.linspace(beta_min / self.N, beta_max / self.N, self.N)
    self.alphas = 1. - self.discrete_betas
    self.alphas_cumprod = jnp.cumprod(self.alphas, axis=0)
    self.sqrt_alphas_cumprod = jnp.sqrt(self.alphas_cumprod)
    self.sqrt_1m_alphas_cumprod = jnp.sqrt(1. - self.alphas_cumprod)

  def with_num_scales(self, N: int) -> '_BetaSDE':
    return type(self)(self.beta_0, self.beta_1, N)

  def truncate(self, t_end: float, N: Optional[int] = None) -> '_BetaSDE':
    """β'(t') = t_end β(t_end t') is again linear: β'_0 = t_end β_0, β'_1 = t_end β_0 + t_end² (β_1 - β_0)."""
    beta_max = t_end * self.beta_0 + t_end ** 2 * (self.beta_1 - self.beta_0)
    return type(self)(t_end * self.beta_0, beta_max, self.N if N is None else N)

  def edm_time(self, sigma):
    """Solves ¼ Δβ t² + ½ β_0 t = -log m(σ) for t ≥ 0 (EDM's `vp_sigma_inv`), as 2c / (b + sqrt(b² + 4ac))."""
    xp = _xp(sigma)
    a, b, c = 0.25 * (self.beta_1 - self.beta_0), 0.5 * self.beta_0, -xp.log(self._scale_of_sigma(sigma))
    return 2 * c / (b + xp.sqrt(b ** 2 + 4 * a * c))

  def _log_mean_coeff(self, t):
    return -0.25 * t ** 2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

  def prior_sampling(self, rng, shape):
    return jax.random.normal(rng, shape)

  def prior_logp(self, z):
    return _standard_normal_logp(z)


class VPSDE(_BetaSDE):
  """Variance-preserving SDE (the continuous DDPM): dx = -½ β(t) x dt + sqrt(β(t)) dw."""

  def sde(self, x, t):
    beta_t = self.beta_0 + t * (self.beta_1 - self.beta_0)
    return -0.5 * batch_mul(beta_t, x), jnp.sqrt(beta_t)

  def marginal_prob(self, x, t):
    log_mean_coeff = self._log_mean_coeff(t)
    mean = batch_mul(jnp.exp(log_mean_coeff), x)
    std = jnp.sqrt(1 - jnp.exp(2. * log_mean_coeff))
    return mean, std

  def edm_sigma(self, t):
    """σ = sqrt(1 - m²) / m = sqrt(expm1(-2 log m))."""
    xp = _xp(t)
    return xp.sqrt(xp.expm1(-2. * self._log_mean_coeff(t)))

  @staticmethod
  def _scale_of_sigma(sigma):
    return 1. / _xp(sigma).sqrt(1 + sigma ** 2)

  def discretize(self, x, t):
    """DDPM discretisation: f = sqrt(α_i) x - x, G = sqrt(β_i)."""
    timestep = self.timestep(t)
    beta = self.discrete_betas[timestep]
    alpha = self.alphas[timestep]
    f = batch_mul(jnp.sqrt(alpha), x) - x
    return f, jnp.sqrt(beta)


class subVPSDE(_BetaSDE):
  """The sub-VP SDE: dx = -½ β(t) x dt + sqrt(β(t) (1 - e^{-2∫β})) dw.

  Discretised with Euler–Maruyama as in score_sde. The discrete betas/alphas of the VP SDE are
  kept as for VP (score_sde's subVPSDE lacks them, so its Langevin corrector cannot run on subVP; here the
  corrector uses the same α_i as for VP, which is our documented extension).
  """

  def sde(self, x, t):
    beta_t = self.beta_0 + t * (self.beta_1 - self.beta_0)
    drift = -0.5 * batch_mul(beta_t, x)
    discount = 1. - jnp.exp(-2 * self.beta_0 * t - (self.beta_1 - self.beta_0) * t ** 2)
    return drift, jnp.sqrt(beta_t * discount)

  def marginal_prob(self, x, t):
    log_mean_coeff = self._log_mean_coeff(t)
    mean = batch_mul(jnp.exp(log_mean_coeff), x)
    std = 1 - jnp.exp(2. * log_mean_coeff)
    return mean, std

  def edm_sigma(self, t):
    """σ = (1 - m²) / m = -2 sinh(log m)."""
    return -2. * _xp(t).sinh(self._log_mean_coeff(t))

  @staticmethod
  def _scale_of_sigma(sigma):
    """m solving (1 - m²) / m = σ."""
    return 0.5 * (_xp(sigma).sqrt(sigma ** 2 + 4) - sigma)



class VESDE(SDE):
  """Variance-exploding SDE (continuous SMLD/NCSN): σ(t) = σ_min (σ_max / σ_min)^t."""
  sigma_min: float = eqx.field(static=True)
  sigma_max: float = eqx.field(static=True)
  discrete_sigmas: jax.Array

  def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50., N: int = 1000):
    super().__init__(N)
    if not 0 < sigma_min < sigma_max:
      raise ValueError(f'VESDE: need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}.')
    self.sigma_min = sigma_min
    self.sigma_max = sigma_max
    self.discrete_sigmas = jnp.exp(np.linspace(np.log(sigma_min), np.log(sigma_max), self.N))

  def with_num_scales(self, N: int) -> 'VESDE':
    return type(self)(self.sigma_min, self.sigma_max, N)

  def truncate(self, t_end: float, N: Optional[int] = None) -> 'VESDE':
    """σ'(t') = σ(t_end t') = σ_min (σ(t_end) / σ_min)^{t'}: the VESDE from σ_min to σ(t_end)."""
    sigma_end = float(self.sigma_min * (self.sigma_max / self.sigma_min) ** t_end)
    return type(self)(self.sigma_min, sigma_end, self.N if N is None else N)

  def edm_sigma(self, t):
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

  def edm_time(self, sigma):
    return _xp(sigma).log(sigma / self.sigma_min) / np.log(self.sigma_max / self.sigma_min)

  def sde(self, x, t):
    sigma = self.sigma_min * (self.sigma_max / self.sigma_min) ** t
    diffusion = sigma * jnp.sqrt(2 * (jnp.log(self.sigma_max) - jnp.log(self.sigma_min)))
    return jnp.zeros_like(x), diffusion

  def marginal_prob(self, x, t):
    return x, self.sigma_min * (self.sigma_max / self.sigma_min) ** t

  def prior_sampling(self, rng, shape):
    return jax.random.normal(rng, shape) * self.sigma_max

  def prior_logp(self, z):
    return _standard_normal_logp(z, self.sigma_max ** 2)

  def discretize(self, x, t):
    """SMLD (NCSN) discretisation: f = 0, G = sqrt(σ_i² - σ_{i-1}²)."""
    timestep = self.timestep(t)
    sigma = self.discrete_sigmas[timestep]
    adjacent_sigma = jnp.where(timestep == 0, jnp.zeros_like(timestep), self.discrete_sigmas[timestep - 1])
    return jnp.zeros_like(x), jnp.sqrt(sigma ** 2 - adjacent_sigma ** 2)


_SDES = {'vesde': VESDE, 'vpsde': VPSDE, 'subvpsde': subVPSDE}
_SAMPLING_EPS = {'vesde': 1e-5, 'vpsde': 1e-3, 'subvpsde': 1e-3}


def get_sde(config) -> Tuple[SDE, float]:
  """Builds the SDE of `config.training.sde` with N = model.num_scales, and score_sde's sampling eps.

  Returns:
    (sde, sampling_eps): eps = 1e-5 for VE, 1e-3 for VP and sub-VP (score_sde `run_lib`).
  """
  name = config.training.sde.lower()
  if name not in _SDES:
    raise ValueError(f'config.training.sde = {config.training.sde!r} is unknown; choose one of {sorted(_SDES)}.')
  if name == 'vesde':
    sde = VESDE(sigma_min=config.model.sigma_min, sigma_max=config.model.sigma_max, N=config.model.num_scales)
  else:
    sde = _SDES[name](beta_min=config.model.beta_min, beta_max=config.model.beta_max, N=config.model.num_scales)
  return sde, _SAMPLING_EPS[name]
