"""Predictor–corrector samplers with PDS preconditioning, as one jitted `lax.scan`.

Names, registries and numerics follow score_sde's `sampling.py` (Song et al., ICLR 2021);
`reverse_diffusion` and `langevin` follow the official PDS code (Ma et al., IJCV 2025).

The one preconditioned mechanism: every predictor and corrector obtains its drift-type term and
its fresh noise through `Predictor.precondition` / `Corrector.precondition`, i.e.
  (K v, M ξ),  K = M Mᵀ,
and combines them exactly as score_sde combines (v, ξ). With the identity preconditioner K v = v
and M ξ = ξ without any arithmetic, so every step is bit-for-bit score_sde's.

Where each step puts M (x' = x_mean + noise · M ξ in every case):
  reverse_diffusion (official PDS)  x_mean = x - M Mᵀ (f - G² s)
  euler_maruyama                    x_mean = x + M Mᵀ (f - g² s) dt            (our extension)
  ancestral_sampling, VE            x_mean = x + (σ_i² - σ_{i-1}²) M Mᵀ s     (our extension)
  ancestral_sampling, VP            x_mean = (x + β_i M Mᵀ s) / sqrt(1 - β_i)  (our extension)
  langevin (official PDS)           x_mean = x + ε M Mᵀ s,  ε from ‖M Mᵀ s‖ and ‖M ξ‖
  ald                               x_mean = x + ε M Mᵀ s,  ε = 2 α (snr σ)²   (our extension)
The extensions precondition the score term only, never a deterministic rescaling of x: the
Langevin-type steps then keep their stationary law for any constant M (METHOD.md §2), and the
ancestral steps become the PDS reverse-diffusion step with the ancestral posterior variance.

`pds_variant = 'marginal_preserving'` (predictors only) replaces the official reverse drift
M Mᵀ (f - g² s) by f - ½ g² (I + M Mᵀ) s and keeps the noise g M dw̄. Derivation: the forward
Fokker–Planck equation ∂p/∂t = -∇·(f p) + ½ g² Δp, run backwards in time, is matched by a
reverse SDE with drift b and noise g M exactly when b p = f p - ½ g² ∇p - ½ g² M Mᵀ ∇p, i.e.
b = f - ½ g² (I + M Mᵀ) ∇log p_t. This holds for any SDE with scalar g(t) — VE (f = 0), VP and
sub-VP (f = -½ β x) alike — so every marginal p_t is kept for any fixed invertible M, while the
official variant also rescales f and the probability-flow part ½ g² s by M Mᵀ. It is implemented
by running the plain predictor with the score ½ (I + M Mᵀ) s and the noise M ξ. For the
probability-flow ODE the marginal-preserving variant uses no preconditioning at all.
"""
from __future__ import annotations

import abc
import functools
from typing import Callable, Optional, Tuple, Type, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec
from jax.tree_util import Partial

from pds_jax import sde_lib
from pds_jax.preconditioning import Preconditioner
from pds_jax.utils import batch_mul, registry_decorator

_CORRECTORS = {}
_PREDICTORS = {}
PDS_VARIANTS = ('official', 'marginal_preserving')

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


register_predictor = registry_decorator(_PREDICTORS, 'predictor')
register_corrector = registry_decorator(_CORRECTORS, 'corrector')


def _lookup(registry: dict, kind: str, name: str):
  if name not in registry:
    raise ValueError(f'Unknown {kind} {name!r}; registered: {sorted(registry)}.')
  return registry[name]


def get_predictor(name: str) -> Type['Predictor']:
  return _lookup(_PREDICTORS, 'predictor', name)


def get_corrector(name: str) -> Type['Corrector']:
  return _lookup(_CORRECTORS, 'corrector', name)


def split(rng: jax.Array) -> jax.Array:
  """Splits a key (2,) into two, or each of per-sample keys (B, 2) into two: shape (2, B, 2)."""
  return jax.vmap(jax.random.split, out_axes=1)(rng) if rng.ndim == 2 else jax.random.split(rng)


def normal(rng: jax.Array, shape) -> jax.Array:
  """N(0, I) of shape (B, ...): one draw from a key, or item i from key i of per-sample keys (B, 2).

  With per-sample keys the noise of an item depends on its own key only, not on the batch.
  """
  if rng.ndim == 2:
    return jax.vmap(lambda key: jax.random.normal(key, shape[1:]))(rng)
  return jax.random.normal(rng, shape)


def sample_keys(seed: int, start: int, count: int) -> jax.Array:
  """Per-sample keys fold_in(PRNGKey(seed), i) for global sample indices i = start … start + count - 1."""
  base = jax.random.PRNGKey(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(start, start + count, dtype=jnp.uint32))


def _precondition(rng: jax.Array, v: jax.Array, mmt: Callable, preconditioner: Preconditioner):
  """The one preconditioned step: (K v, M ξ) with ξ ~ N(0, I) of v's shape."""
  return mmt(v), preconditioner.apply(normal(rng, v.shape))


def _vp_alpha(sde: sde_lib.SDE, t: jax.Array) -> jax.Array:
  """score_sde's Langevin step factor: α_i of the discrete VP/sub-VP chain, 1 for VE."""
  if isinstance(sde, (sde_lib.VPSDE, sde_lib.subVPSDE)):
    return sde.alphas[sde.timestep(t)]
  return jnp.ones_like(t)


class Predictor(abc.ABC):
  """A predictor step of the reverse SDE, preconditioned by M (identity when None)."""

  def __init__(self, sde: sde_lib.SDE, score_fn: ScoreFn, probability_flow: bool = False,
               preconditioner: Optional[Preconditioner] = None, pds_variant: str = 'official'):
    if pds_variant not in PDS_VARIANTS:
      raise ValueError(f'sampling.pds_variant = {pds_variant!r}; choose one of {PDS_VARIANTS}.')
    self.sde = sde
    self.preconditioner = Preconditioner() if preconditioner is None else preconditioner
    self.probability_flow = probability_flow
    marginal_preserving = pds_variant == 'marginal_preserving' and not self.preconditioner.is_identity
    if marginal_preserving and not probability_flow:
      score_fn = functools.partial(_half_identity_plus_mmt, score_fn, self.preconditioner)
    self.score_fn = score_fn
    self.rsde = sde.reverse(score_fn, probability_flow)
    # K of `precondition`: M Mᵀ for the official variant, I when M already sits in the score.
    self._mmt = (lambda v: v) if marginal_preserving else self.preconditioner.apply_mmt

  def precondition(self, rng: jax.Array, v: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """(K v, M ξ): the preconditioned drift term and noise of this step."""
    return _precondition(rng, v, self._mmt, self.preconditioner)

  @abc.abstractmethod
  def update_fn(self, rng: jax.Array, x: jax.Array, t: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """One step from x (B, H, W, C) at times t (B,); returns (x, x_mean without the noise)."""


def _half_identity_plus_mmt(score_fn: ScoreFn, preconditioner: Preconditioner, x, t):
  """½ (I + M Mᵀ) s(x, t): the score of the marginal-preserving PDS reverse SDE."""
  s = score_fn(x, t)
  return 0.5 * (s + preconditioner.apply_mmt(s))


class Corrector(abc.ABC):
  """A corrector (Langevin-type MCMC at fixed t), preconditioned by M (identity when None).

  `axis_name`, when set, averages the Langevin step-size norms over that mapped axis, as
  score_sde does under `pmap(axis_name='batch')`.
  """

  def __init__(self, sde: sde_lib.SDE, score_fn: ScoreFn, snr: float, n_steps: int,
               preconditioner: Optional[Preconditioner] = None, axis_name: Optional[str] = None):
    self.sde = sde
    self.score_fn = score_fn
    self.snr = snr
    self.n_steps = n_steps
    self.preconditioner = Preconditioner() if preconditioner is None else preconditioner
    self.axis_name = axis_name

  def precondition(self, rng: jax.Array, v: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """(M Mᵀ v, M ξ): preconditioned Langevin keeps p_t stationary for any constant M."""
    return _precondition(rng, v, self.preconditioner.apply_mmt, self.preconditioner)

  def _pmean(self, v: jax.Array) -> jax.Array:
    return v if self.axis_name is None else jax.lax.pmean(v, axis_name=self.axis_name)

  @abc.abstractmethod
  def update_fn(self, rng: jax.Array, x: jax.Array, t: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """n_steps corrector steps at times t (B,); returns (x, x_mean)."""


@register_predictor(name='euler_maruyama')
class EulerMaruyamaPredictor(Predictor):
  """x_mean = x + K (f - g² s) dt,  x = x_mean + g sqrt(-dt) M ξ  (dt = -1/N)."""

  def update_fn(self, rng, x, t):
    dt = -1. / self.rsde.N
    drift, diffusion = self.rsde.sde(x, t)
    drift, z = self.precondition(rng, drift)
    x_mean = x + drift * dt
    x = x_mean + batch_mul(diffusion, jnp.sqrt(-dt) * z)
    return x, x_mean


@register_predictor(name='reverse_diffusion')
class ReverseDiffusionPredictor(Predictor):
  """Official PDS: x_mean = x - M Mᵀ rev_f,  x = x_mean + G M ξ  ((rev_f, G) = rsde.discretize)."""

  def update_fn(self, rng, x, t):
    f, G = self.rsde.discretize(x, t)
    f, z = self.precondition(rng, f)
    x_mean = x - f
    x = x_mean + batch_mul(G, z)
    return x, x_mean


@register_predictor(name='ancestral_sampling')
class AncestralSamplingPredictor(Predictor):
  """The ancestral (DDPM / SMLD) sampling predictor; VE and VP SDEs only, as in score_sde."""

  def __init__(self, sde, score_fn, probability_flow=False, preconditioner=None, pds_variant='official'):
    if not isinstance(sde, (sde_lib.VPSDE, sde_lib.VESDE)):
      raise NotImplementedError(f'SDE class {sde.__class__.__name__} not yet supported.')
    if probability_flow:
      raise ValueError('Probability flow not supported by ancestral sampling.')
    super().__init__(sde, score_fn, probability_flow, preconditioner, pds_variant)

  def vesde_update_fn(self, rng, x, t):
    sde = self.sde
    timestep = sde.timestep(t)
    sigma = sde.discrete_sigmas[timestep]
    adjacent_sigma = jnp.where(timestep == 0, jnp.zeros(t.shape), sde.discrete_sigmas[timestep - 1])
    score, noise = self.precondition(rng, self.score_fn(x, t))
    x_mean = x + batch_mul(score, sigma ** 2 - adjacent_sigma ** 2)
    std = jnp.sqrt((adjacent_sigma ** 2 * (sigma ** 2 - adjacent_sigma ** 2)) / (sigma ** 2))
    x = x_mean + batch_mul(std, noise)
    return x, x_mean

  def vpsde_update_fn(self, rng, x, t):
    sde = self.sde
    beta = sde.discrete_betas[sde.timestep(t)]
    score, noise = self.precondition(rng, self.score_fn(x, t))
    x_mean = batch_mul((x + batch_mul(beta, score)), 1. / jnp.sqrt(1. - beta))
    x = x_mean + batch_mul(jnp.sqrt(beta), noise)
    return x, x_mean

  def update_fn(self, rng, x, t):
    if isinstance(self.sde, sde_lib.VESDE):
      return self.vesde_update_fn(rng, x, t)
    return self.vpsde_update_fn(rng, x, t)


@register_predictor(name='none')
class NonePredictor(Predictor):
  """An empty predictor that does nothing."""

  def update_fn(self, rng, x, t):
    return x, x


class _LangevinType(Corrector):
  """Langevin MCMC at fixed t: n_steps of x_mean = x + ε M Mᵀ s, x = x_mean + sqrt(2ε) M ξ."""

  def __init__(self, sde, score_fn, snr, n_steps, preconditioner=None, axis_name=None):
    if not isinstance(sde, (sde_lib.VPSDE, sde_lib.VESDE, sde_lib.subVPSDE)):
      raise NotImplementedError(f'SDE class {sde.__class__.__name__} not yet supported.')
    super().__init__(sde, score_fn, snr, n_steps, preconditioner, axis_name)

  @abc.abstractmethod
  def step_size(self, grad: jax.Array, noise: jax.Array, alpha: jax.Array, t: jax.Array) -> jax.Array:
    """ε (B,) from the preconditioned score and noise of this step."""

  def update_fn(self, rng, x, t):
    alpha = _vp_alpha(self.sde, t)

    def loop_body(step, val):
      rng, x, x_mean = val
      rng, step_rng = split(rng)
      grad, noise = self.precondition(step_rng, self.score_fn(x, t))
      step_size = self.step_size(grad, noise, alpha, t)
      x_mean = x + batch_mul(step_size, grad)
      x = x_mean + batch_mul(noise, jnp.sqrt(step_size * 2))
      return rng, x, x_mean

    _, x, x_mean = jax.lax.fori_loop(0, self.n_steps, loop_body, (rng, x, x))
    return x, x_mean


@register_corrector(name='langevin')
class LangevinCorrector(_LangevinType):
  """Official PDS Langevin: g = M Mᵀ s, ν = M ξ, ε = 2 α (snr ‖ν‖ / ‖g‖)² with batch-mean norms."""

  def step_size(self, grad, noise, alpha, t):
    grad_norm = self._pmean(jnp.linalg.norm(grad.reshape((grad.shape[0], -1)), axis=-1).mean())
    noise_norm = self._pmean(jnp.linalg.norm(noise.reshape((noise.shape[0], -1)), axis=-1).mean())
    return (self.snr * noise_norm / grad_norm) ** 2 * 2 * alpha


@register_corrector(name='ald')
class AnnealedLangevinDynamics(_LangevinType):
  """NCSN's annealed Langevin dynamics, ε = 2 α (snr σ(t))², preconditioned like `langevin`."""

  def step_size(self, grad, noise, alpha, t):
    std = self.sde.marginal_prob(grad, t)[1]
    return (self.snr * std) ** 2 * 2 * alpha


@register_corrector(name='none')
class NoneCorrector(Corrector):
  """An empty corrector that does nothing."""

  def update_fn(self, rng, x, t):
    return x, x


# ----------------------------------------------------------------------------- the PC sampler


class NonFiniteSampleError(FloatingPointError):
  """Samples became NaN/Inf; `step` is the first sampler step (0-based) at which it happened."""

  def __init__(self, step: int, t: float, num_steps: int):
    self.step, self.t = step, t
    super().__init__(f'samples became non-finite (NaN/Inf) at step {step} of {num_steps} (t = {t:.6g}); '
                     'nothing was written. Try a smaller snr, a larger alpha or more steps.')


def _as_pytree_fn(fn: Callable) -> Partial:
  """A score function as a pytree: a `Partial`'s bound arrays (model weights) become jit arguments."""
  return fn if isinstance(fn, Partial) else Partial(fn)


class PCSampler:
  """The predictor–corrector sampler of score_sde with PDS, as a jitted `lax.scan` over steps.

  The carry is (rng, x, x_mean, first_nonfinite_step). Step i uses t_i = linspace(T, eps, N)[i]:
  corrector, then predictor (official PDS order), splitting the rng as score_sde does. A run in K
  chunks executes the same compiled step body on the same carry, so it gives bit-identical samples
  to the single-scan run.

  Random numbers: `rng` is one key (score_sde's stream, split for the whole batch each step) or
  per-sample keys (B, 2), e.g. `sample_keys(seed, first_index, B)`: then every draw of item i comes
  from its own key, so a sample does not depend on how the batch is split over devices or hosts.

  Devices (per-sample keys only; the batch is split evenly; the Langevin norms are averaged with
  `pmean` over the device axis): `pmap=True` is score_sde's `pmap` path over the local devices;
  `mesh=` a 1-D `jax.sharding.Mesh` (`pds_jax.parallel.batch_mesh()`) runs the same per-device
  program with `jax.shard_map` under `jit` — the modern path, which also spans hosts' devices.
  """

  def __init__(self, sde: sde_lib.SDE, shape, predictor: Union[str, Type[Predictor]] = 'reverse_diffusion',
               corrector: Union[str, Type[Corrector]] = 'langevin', inverse_scaler: Callable = lambda x: x,
               snr: float = 0.16, n_steps: int = 1, probability_flow: bool = False, denoise: bool = True,
               eps: float = 1e-3, pds_variant: str = 'official', axis_name: Optional[str] = None,
               pmap: bool = False, mesh: Optional[jax.sharding.Mesh] = None):
    self.predictor = get_predictor(predictor) if isinstance(predictor, str) else predictor
    self.corrector = get_corrector(corrector) if isinstance(corrector, str) else corrector
    if pds_variant not in PDS_VARIANTS:
      raise ValueError(f'sampling.pds_variant = {pds_variant!r}; choose one of {PDS_VARIANTS}.')
    if not 0 < eps < sde.T:
      raise ValueError(f'eps must lie in (0, T = {sde.T}), got {eps}.')
    self.sde, self.shape, self.inverse_scaler = sde, tuple(shape), inverse_scaler
    self.snr, self.n_steps, self.probability_flow = snr, int(n_steps), probability_flow
    self.denoise, self.eps, self.pds_variant, self.axis_name = denoise, eps, pds_variant, axis_name
    evals = (self.predictor is not NonePredictor) + (self.corrector is not NoneCorrector) * self.n_steps
    self.nfe = sde.N * evals
    self.pmap = pmap
    self._first_bad_shape = (mesh.size,) if mesh is not None else (1,)  # one entry per device
    if pmap and mesh is not None:
      raise ValueError('PCSampler: choose pmap=True or a mesh, not both.')
    if pmap:
      self.axis_name = axis_name or 'batch'
      self._init = jax.pmap(self._init_impl, in_axes=(0, None))
      self._run = jax.pmap(self._run_impl, axis_name=self.axis_name, in_axes=(None, None, 0, None),
                           static_broadcasted_argnums=(4,))
      self._finalize = jax.pmap(self._finalize_impl)
    elif mesh is not None:
      self.axis_name = mesh.axis_names[0]
      batch, rep = PartitionSpec(self.axis_name), PartitionSpec()
      carry = (batch,) * 4
      per_device = lambda fn, in_specs, out_specs: jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs)
      self._init = jax.jit(per_device(self._init_impl, (batch, rep), carry))
      self._run = jax.jit(lambda score_fn, precond, c, start, length: per_device(
          functools.partial(self._run_impl, length=length), (rep, rep, carry, rep), carry)(score_fn, precond, c, start),
                          static_argnums=(4,))
      self._finalize = jax.jit(per_device(self._finalize_impl, (carry,), batch))
    else:
      self._init = jax.jit(self._init_impl)
      self._run = jax.jit(self._run_impl, static_argnums=(4,))
      self._finalize = jax.jit(self._finalize_impl)

  @property
  def num_steps(self) -> int:
    return self.sde.N

  def _init_impl(self, rng, preconditioner):
    rng, step_rng = split(rng)
    if rng.ndim == 2:  # per-sample keys: item i of the prior from key i
      prior = jax.vmap(lambda key: self.sde.prior_sampling(key, self.shape[1:]))(step_rng)
    else:
      prior = self.sde.prior_sampling(step_rng, self.shape)
    x = preconditioner.apply(prior)
    return rng, x, x, jnp.full((1,), -1, jnp.int32)

  def _step(self, score_fn, preconditioner, carry, i):
    rng, x, x_mean, first_bad = carry
    t = jnp.linspace(self.sde.T, self.eps, self.sde.N)[i]
    vec_t = jnp.ones(x.shape[0]) * t
    corrector = self.corrector(self.sde, score_fn, self.snr, self.n_steps, preconditioner, self.axis_name)
    predictor = self.predictor(self.sde, score_fn, self.probability_flow, preconditioner, self.pds_variant)
    rng, step_rng = split(rng)
    x, x_mean = corrector.update_fn(step_rng, x, vec_t)
    rng, step_rng = split(rng)
    x, x_mean = predictor.update_fn(step_rng, x, vec_t)
    finite = jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(x_mean))
    first_bad = jnp.where((first_bad < 0) & ~finite, i, first_bad)
    return (rng, x, x_mean, first_bad), None

  def _run_impl(self, score_fn, preconditioner, carry, start, length: int):
    step = functools.partial(self._step, score_fn, preconditioner)
    carry, _ = jax.lax.scan(step, carry, start + jnp.arange(length))
    return carry

  def _finalize_impl(self, carry):
    _, x, x_mean, _ = carry
    return self.inverse_scaler(x_mean if self.denoise else x)

  def __call__(self, rng: jax.Array, score_fn: ScoreFn, preconditioner: Optional[Preconditioner] = None, *,
               num_chunks: int = 1, progress: bool = False,
               callback: Optional[Callable[[int, jax.Array], None]] = None,
               x_init: Optional[jax.Array] = None) -> Tuple[jax.Array, int]:
    """Draws one batch of samples.

    Args:
      rng: a PRNG key, or per-sample keys (B, 2) (required with `pmap=True`).
      score_fn: s(x, t) for x of shape `shape` and t of shape (B,); any pure JAX function. A
        `jax.tree_util.Partial` keeps its bound arrays (model weights) as jit arguments.
      preconditioner: the PDS preconditioner (None = identity = score_sde's sampler).
      num_chunks: run the N steps as this many jitted scans (samples are bit-identical for any value).
      progress: show a tqdm bar over the steps.
      callback: called as callback(steps_done, x_mean) after each chunk (snapshots).
      x_init: the chain's starting state (`shape`) in place of the prior draw (initialization-aware
        sampling starts from x_T ~ q_T); used as given, M is not applied to it.

    Returns:
      (samples after the inverse scaler, number of score evaluations).

    Raises:
      NonFiniteSampleError: if any state became NaN/Inf, with the first step where it did.
    """
    preconditioner = Preconditioner() if preconditioner is None else preconditioner
    score_fn = _as_pytree_fn(score_fn)
    n = self.sde.N
    num_chunks = max(1, min(int(num_chunks), n))
    bounds = np.linspace(0, n, num_chunks + 1).round().astype(int)
    if self.pmap:
      rng = self._per_device(rng)
    if x_init is None:
      carry = self._init(rng, preconditioner)
    else:
      if tuple(x_init.shape) != tuple(self.shape):
        raise ValueError(f'x_init has shape {tuple(x_init.shape)}; the sampler draws {tuple(self.shape)}.')
      if self.pmap:
        x_init = x_init.reshape((rng.shape[0], -1) + tuple(self.shape[1:]))
      first_bad = (rng.shape[0],) + self._first_bad_shape if self.pmap else self._first_bad_shape
      carry = (rng, x_init, x_init, jnp.full(first_bad, -1, jnp.int32))
    bar = None
    if progress:
      from tqdm.auto import tqdm
      bar = tqdm(total=n, desc='sampling', unit='step', leave=False)
    try:
      for start, stop in zip(bounds[:-1], bounds[1:]):
        carry = self._run(score_fn, preconditioner, carry, jnp.int32(start), int(stop - start))
        if bar is not None:
          jax.block_until_ready(carry[1])
          bar.update(int(stop - start))
        if callback is not None:
          callback(int(stop), carry[2])
    finally:
      if bar is not None:
        bar.close()
    samples = self._finalize(carry)
    if self.pmap:
      samples = samples.reshape(self.shape)
    bad = np.asarray(carry[3]).ravel()  # one entry per device
    first_bad = int(bad[bad >= 0].min()) if np.any(bad >= 0) else -1
    if first_bad >= 0:
      t = float(np.linspace(self.sde.T, self.eps, n, dtype=np.float32)[first_bad])
      raise NonFiniteSampleError(first_bad, t, n)
    if not bool(jnp.all(jnp.isfinite(samples))):
      raise NonFiniteSampleError(n - 1, self.eps, n)
    return samples, self.nfe


  def _per_device(self, keys: jax.Array) -> jax.Array:
    """Per-sample keys (B, 2) -> (devices, B / devices, 2) for the pmap path."""
    d = jax.local_device_count()
    if keys.ndim != 2 or keys.shape[0] != self.shape[0]:
      raise ValueError(f'the pmap sampler needs per-sample keys of shape ({self.shape[0]}, 2), got {keys.shape}.')
    if self.shape[0] % d:
      raise ValueError(f'batch size {self.shape[0]} is not divisible by the {d} local devices.')
    return keys.reshape((d, self.shape[0] // d) + keys.shape[1:])


def get_pc_sampler(sde, shape, predictor, corrector, inverse_scaler, snr, n_steps=1,
                   probability_flow=False, denoise=True, eps=1e-3, pds_variant='official',
                   axis_name=None, pmap=False, mesh=None) -> PCSampler:
  """score_sde's `get_pc_sampler`; the returned sampler is called as sampler(rng, score_fn, preconditioner)."""
  return PCSampler(sde, shape, predictor, corrector, inverse_scaler, snr, n_steps, probability_flow,
                   denoise, eps, pds_variant, axis_name, pmap, mesh)


def pc_sample(rng: jax.Array, score_fn: ScoreFn, sde: sde_lib.SDE, shape, *,
              predictor='reverse_diffusion', corrector='langevin', snr: float = 0.16, n_steps: int = 1,
              probability_flow: bool = False, denoise: bool = True, eps: float = 1e-3,
              num_steps: Optional[int] = None, preconditioner: Optional[Preconditioner] = None,
              pds_variant: str = 'official', inverse_scaler: Callable = lambda x: x,
              num_chunks: int = 1, progress: bool = False) -> Tuple[jax.Array, int]:
  """One-call PC sampling: (samples, nfe) from `score_fn(x, t)` with `num_steps` steps (default sde.N)."""
  if num_steps is not None:
    sde = sde.with_num_scales(num_steps)
  sampler = PCSampler(sde, shape, predictor, corrector, inverse_scaler, snr, n_steps, probability_flow,
                      denoise, eps, pds_variant)
  return sampler(rng, score_fn, preconditioner, num_chunks=num_chunks, progress=progress)


def pds_schedule(config, sde: sde_lib.SDE, eps: float) -> Tuple[sde_lib.SDE, float]:
  """PDS's `speed_up` k: N = int(model.num_scales / k) steps and eps · k (official `run_lib.evaluate`)."""
  k = config.sampling.speed_up
  if not k > 0:
    raise ValueError(f'config.sampling.speed_up must be > 0, got {k}.')
  n = int(config.model.num_scales / k)
  if n < 1:
    raise ValueError(f'config.sampling.speed_up = {k} leaves int(num_scales / speed_up) = {n} steps '
                     f'(model.num_scales = {config.model.num_scales}); use speed_up <= {config.model.num_scales}.')
  return sde.with_num_scales(n), eps * k


def get_sampling_fn(config, sde: sde_lib.SDE, shape, inverse_scaler: Callable, eps: float,
                    preconditioner: Optional[Preconditioner] = None, axis_name: Optional[str] = None,
                    pmap: bool = False, mesh: Optional[jax.sharding.Mesh] = None):
  """score_sde/PDS's `get_sampling_fn`: a function rng, score_fn -> (samples, nfe).

  `sde` and `eps` are score_sde's (N = model.num_scales); `config.sampling.speed_up` k then sets
  N = int(num_scales / k) and eps · k as the official PDS code does. Only `sampling.method = 'pc'`
  is a sampler of this module.
  """
  method = config.sampling.method.lower()
  if method != 'pc':
    raise ValueError(f"config.sampling.method = {config.sampling.method!r}: this sampler supports 'pc'.")
  sde, eps = pds_schedule(config, sde, eps)
  sampler = get_pc_sampler(sde, shape, config.sampling.predictor.lower(), config.sampling.corrector.lower(),
                           inverse_scaler, config.sampling.snr, config.sampling.n_steps_each,
                           config.sampling.probability_flow, config.sampling.noise_removal, eps,
                           config.sampling.pds_variant, axis_name, pmap, mesh)
  return functools.partial(sampler, preconditioner=preconditioner, num_chunks=config.sampling.num_chunks)
