"""Log-likelihoods in bits/dim with the probability-flow ODE: score_sde's `likelihood.py` on the driver.

score_sde's `get_likelihood_fn` (Song et al. 2021, §4.3 and App. D.2) integrates the probability-flow
ODE from eps to T together with the divergence of its drift,
  log p_eps(x) = log p_T(x_T) + ∫_eps^T ∇·f̃(x(t), t) dt,
estimating ∇·f̃ with Hutchinson–Skilling's εᵀ (∂f̃/∂x) ε (one ε per image, Rademacher or Gaussian,
fixed along the path), and reports bits/dim
  bpd = -log p_eps(x) / (D ln 2) + offset,   offset = log2(inverse_scaler'(0)) + 8.
The offset turns a density of data in [0, 1] into the probability of 8-bit pixels (256 bins of
width 1/256), and the log2 of the inverse scaler's slope moves a density of centred data in
[-1, 1] back to [0, 1]. It is only a likelihood of 8-bit data when the images are uniformly
dequantized, x = (255 x_8bit + u) / 256 with u ~ U[0, 1) (`uniform_dequantize`; score_sde's
`eval.bpd_dataset` data): a density evaluated at the 8-bit levels themselves is not bounded by the
bin width and can give negative bits/dim.

Differences from score_sde, all by design:
- Each image is its own ODE (`vmap` over the batch, as the `ode` sampler does), with its own
  adaptive steps and its own Hutchinson noise drawn from its per-sample key, so an image's bpd and
  NFE do not depend on the batch it is in (score_sde solves the flattened batch as one system).
- The solve is diffrax's Dormand–Prince 5(4) ('RK45', scipy's method) or Tsit5 under `jit`, with
  no host round-trips; pmap / shard_map come from the driver, like sampling.
- NFE is per image (evaluations of the augmented vector field, each one score evaluation and its
  Jacobian-vector product); `hutchinson_type = 'exact'` takes the full trace (small images).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Tuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from pds_jax import sde_lib
from pds_jax.samplers import ode
from pds_jax.samplers.driver import Sampler, ScoreFn, split

BITS_OFFSET_8BIT = 8.  # log2(256): density of [0, 1] data -> probability of 8-bit pixels


def bpd_offset(inverse_scaler: Callable) -> float:
  """score_sde's offset log2(grad(inverse_scaler)(0)) + 8 (8 for data in [0, 1], 7 for [-1, 1])."""
  return float(jnp.log2(jax.grad(inverse_scaler)(0.)) + BITS_OFFSET_8BIT)


def uniform_dequantize(images: jax.Array, rng: jax.Array) -> jax.Array:
  """score_sde's uniform dequantization of 8-bit images in [0, 1]: (255 x + u) / 256, u ~ U[0, 1).

  rng: one key, or per-image keys (B, 2) (image i's noise from key i only).
  """
  if rng.ndim == 2:
    u = jax.vmap(lambda key: jax.random.uniform(key, images.shape[1:]))(rng)
  else:
    u = jax.random.uniform(rng, images.shape)
  return (u + images * 255.) / 256.


def hutchinson_noise(rng: jax.Array, shape, hutchinson_type: str) -> Optional[jax.Array]:
  """ε of shape (B, ...) from one key or per-sample keys (B, 2); None for the exact divergence."""
  if hutchinson_type == 'exact':
    return None
  draw = {'Rademacher': lambda key, s: jax.random.rademacher(key, s, jnp.float32),
          'Gaussian': lambda key, s: jax.random.normal(key, s)}[hutchinson_type]
  if rng.ndim == 2:
    return jax.vmap(lambda key: draw(key, shape[1:]))(rng)
  return draw(rng, shape)


class LikelihoodState(NamedTuple):
  x: jax.Array                 # (B, H, W, C): the data at eps, then the latent z at T
  delta_logp: jax.Array        # (B,) ∫_eps^T ∇·f̃ dt
  noise: Optional[jax.Array]   # (B, H, W, C) Hutchinson ε (None: exact divergence)
  nfe: jax.Array               # (B,) int32
  ok: jax.Array                # (B,) bool: the adaptive solve reached T


class LikelihoodSolver(ode.AdaptiveODESolver):
  """The augmented probability-flow ODE from eps to T as one driver step (see the module docstring).

  x_init is the data (in the model's variable) at t = eps; `output` is the latent z = x(T) and
  `aux` holds log p_eps(x) = log p_T(z) + Δ log p per image (nats).
  """
  hutchinson_type: str = eqx.field(static=True)
  name = 'likelihood'
  goal = 'T'
  items = 'images'
  tolerance_fields = 'config.likelihood.rtol / atol'

  def __init__(self, sde: sde_lib.SDE, hutchinson_type: str = 'Rademacher', rtol: float = 1e-5,
               atol: float = 1e-5, method: str = 'RK45', eps: float = 1e-5, max_steps: int = 4096):
    super().__init__(sde, eps, eps, rtol, atol, method, max_steps)  # x_init is the data at t = eps
    if hutchinson_type not in ode.HUTCHINSON_TYPES:
      raise ValueError(f'likelihood: hutchinson_type = {hutchinson_type!r}; choose one of {ode.HUTCHINSON_TYPES}.')
    self.hutchinson_type = hutchinson_type

  @property
  def num_steps(self) -> int:
    return 1

  def step_times(self) -> np.ndarray:
    return np.array([self.eps])

  def init(self, rng, x):
    b = x.shape[0]
    return LikelihoodState(x=x, delta_logp=jnp.zeros((b,), x.dtype),
                           noise=hutchinson_noise(rng, x.shape, self.hutchinson_type),
                           nfe=jnp.zeros((b,), jnp.int32), ok=jnp.ones((b,), bool))

  def step(self, score_fn, preconditioner, state, i):
    field = ode.divergence_drift(self.sde, self.hutchinson_type)

    def per_image(x, noise):
      (z, delta), nfe, ok = ode.solve(field, (x, jnp.zeros((), x.dtype)), self.eps, self.sde.T, (score_fn, noise),
                                      rtol=self.rtol, atol=self.atol, method=self.method, max_steps=self.max_steps)
      return z, delta, nfe, ok

    noise = state.noise if state.noise is not None else jnp.zeros_like(state.x)
    z, delta, nfe, ok = jax.vmap(per_image)(state.x, noise)
    return state._replace(x=z, delta_logp=delta, nfe=state.nfe + nfe, ok=ok)

  def output(self, state):
    return state.x

  def aux(self, state):
    return {'logp': self.sde.prior_logp(state.x) + state.delta_logp}


class LikelihoodFn:
  """What `get_likelihood_fn` returns: fn(rng, score_fn, data) -> (bpd (B,), z (B, H, W, C), nfe).

  `rng`: one key, or per-image keys (B, 2) (required with pmap or a mesh); image i's Hutchinson
  noise comes from its key only. `data`: (B, H, W, C) in the model's variable (after the data
  scaler). `nfe`: evaluations of the augmented vector field per image (an int, or the batch mean).
  The driver (one per data shape) adds jit / pmap / shard_map and the non-finite checks.
  """

  def __init__(self, solver: LikelihoodSolver, inverse_scaler: Callable, pmap: bool = False,
               mesh: Optional[jax.sharding.Mesh] = None):
    self.solver, self.pmap, self.mesh = solver, pmap, mesh
    self.offset = bpd_offset(inverse_scaler)
    self._samplers = {}

  def sampler(self, shape) -> Sampler:
    shape = tuple(shape)
    if shape not in self._samplers:
      self._samplers[shape] = Sampler(self.solver, shape, pmap=self.pmap, mesh=self.mesh)
    return self._samplers[shape]

  def __call__(self, rng: jax.Array, score_fn: ScoreFn, data: jax.Array) -> Tuple[jax.Array, jax.Array, float]:
    data = jnp.asarray(data, jnp.float32)
    z, nfe, aux = self.sampler(data.shape)(rng, score_fn, x_init=data, return_aux=True)
    dim = int(np.prod(data.shape[1:]))
    bpd = -aux['logp'] / (dim * np.log(2.)) + self.offset
    return bpd, z, nfe


def get_likelihood_fn(sde: sde_lib.SDE, inverse_scaler: Callable, hutchinson_type: str = 'Rademacher',
                      rtol: float = 1e-5, atol: float = 1e-5, method: str = 'RK45', eps: float = 1e-5,
                      max_steps: int = 4096, pmap: bool = False,
                      mesh: Optional[jax.sharding.Mesh] = None) -> LikelihoodFn:
  """score_sde's `get_likelihood_fn`: bits/dim, latent codes and NFE of a batch of data.

  Args:
    sde: the model's SDE (its prior gives log p_T).
    inverse_scaler: the inverse data scaler (for the bits/dim offset).
    hutchinson_type: 'Rademacher' or 'Gaussian' (score_sde), or 'exact' (full Jacobian trace).
    rtol, atol, method: the adaptive ODE solver ('RK45' = Dormand–Prince 5(4), or 'tsit5').
    eps: the ODE is integrated from eps (not 0) to T, as in score_sde.
    max_steps: the solver's step budget per image.
    pmap, mesh: score_sde's pmap, or shard_map over a 1-D mesh (`pds_jax.parallel.batch_mesh`).

  Returns:
    likelihood_fn(rng, score_fn, data) -> (bpd (B,), z (B, H, W, C), nfe).
  """
  solver = LikelihoodSolver(sde, hutchinson_type, rtol, atol, method, eps, max_steps)
  return LikelihoodFn(solver, inverse_scaler, pmap=pmap, mesh=mesh)


def image_keys(keys: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """Per-image keys (B, 2) split into (Hutchinson keys, dequantization keys), both (B, 2)."""
  both = split(keys)
  return both[0], both[1]
