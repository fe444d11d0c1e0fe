"""score_sde's samplers with PDS: the predictor–corrector method and `get_sampling_fn` for every method.

Names, registries and numerics follow score_sde's `sampling.py` (Song et al., ICLR 2021);
`reverse_diffusion` and `langevin` follow the official PDS code (Ma et al., IJCV 2025).
`get_sampling_fn(config, ...)` dispatches on `config.sampling.method` to one of the registered
methods (`pc` here; `ode` in `pds_jax.ode`; `euler`, `heun`, `ancestral` in `pds_jax.edm`;
`dpm_solver` in `pds_jax.dpm_solver`), all run by the one driver `pds_jax.driver.Sampler`.

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

`pds_variant = 'corrector_only'` preconditions the Langevin corrector only: the predictor and the
prior are the plain ones. Langevin with K = M Mᵀ keeps p_t stationary for any constant M
(METHOD.md §2), so this variant changes how fast the corrector mixes, never what it targets.
"""
from __future__ import annotations

import abc
import functools
import logging
import os
from typing import Callable, Dict, NamedTuple, Optional, Tuple, Type, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from pds_jax import dpm_solver, edm, ode, sde_lib
from pds_jax.driver import Sampler, ScoreFn, Solver, normal, split
from pds_jax.driver import NonFiniteSampleError, sample_keys  # noqa: F401  (public here, as before the driver)
from pds_jax.init_aware import store
from pds_jax.preconditioning import Preconditioner
from pds_jax.utils import batch_mul, registry_decorator

_CORRECTORS = {}
_PREDICTORS = {}
PDS_VARIANTS = ('official', 'marginal_preserving', 'corrector_only')


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
    if preconditioner is None or pds_variant == 'corrector_only':
      preconditioner = Preconditioner()
    self.preconditioner = preconditioner
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



# ----------------------------------------------------------------------------- the PC method


class PCState(NamedTuple):
  rng: jax.Array
  x: jax.Array
  x_mean: jax.Array


def _linspace(start: float, stop: float, num: int) -> jax.Array:
  """`jnp.linspace(start, stop, num)` of constants as a jitted program computes it (XLA may fold the
  constants differently from an eager call with array arguments, by an ulp: keep them constants)."""
  return jax.jit(lambda: jnp.linspace(start, stop, num))()


def _rescaled_time_score(score_fn: ScoreFn, x: jax.Array, t: jax.Array, *, kappa: float) -> jax.Array:
  return score_fn(x, kappa * t)


class PCSolver(Solver):
  """score_sde's predictor–corrector method with PDS, one scan step per time t_i = linspace(T, eps, N)[i].

  Step i runs the corrector, then the predictor (official PDS order), splitting the rng as
  score_sde does; the output is the last x_mean when `denoise` (score_sde's noise removal).

  From an init-aware x_T at t_start < T, the grid is that of the same process on [0, t_start]
  (`sde.truncate(t_start)`: for VE the VESDE from σ_min to σ_T, for VP/sub-VP a VP SDE with
  rescaled β), whose t' is the model's t = t_start · t'; eps' = eps / t_start keeps the last
  noise level. The chain starts at x_T itself.
  """
  name = 'pc'
  stochastic = True
  preconditioned_by_pds = True

  def __init__(self, sde: sde_lib.SDE, predictor: Union[str, Type[Predictor]] = 'reverse_diffusion',
               corrector: Union[str, Type[Corrector]] = 'langevin', snr: float = 0.16, n_steps: int = 1,
               probability_flow: bool = False, denoise: bool = True, eps: float = 1e-3,
               pds_variant: str = 'official', t_start: Optional[float] = None):
    super().__init__(sde, sde.T if t_start is None else t_start)
    self.predictor = get_predictor(predictor) if isinstance(predictor, str) else predictor
    self.corrector = get_corrector(corrector) if isinstance(corrector, str) else corrector
    if pds_variant not in PDS_VARIANTS:
      raise ValueError(f'sampling.pds_variant = {pds_variant!r}; choose one of {PDS_VARIANTS}.')
    if not 0 < eps < self.t_start:
      raise ValueError(f'eps must lie in (0, T = {self.t_start}), got {eps}.')
    self.snr, self.n_steps, self.probability_flow = snr, int(n_steps), probability_flow
    self.denoise, self.eps, self.pds_variant = denoise, eps, pds_variant
    self.precondition_prior = pds_variant != 'corrector_only'
    self.kappa = self.t_start / sde.T
    self.run_sde = sde if self.kappa == 1 else sde.truncate(self.t_start)
    self.run_eps = eps / self.kappa
    self._time_grid = None

  @property
  def num_steps(self) -> int:
    return self.run_sde.N

  def step_times(self) -> np.ndarray:
    return np.linspace(self.run_sde.T, self.run_eps, self.num_steps, dtype=np.float32) * self.kappa

  @property
  def static_nfe(self) -> int:
    evals = (self.predictor is not NonePredictor) + (self.corrector is not NoneCorrector) * self.n_steps
    return self.num_steps * evals

  def tables(self) -> dict:
    """t_i = linspace(T, eps, N) (N,) and run_sde's discrete schedules: jit arguments of the driver's scan.

    The grid is the float32 array score_sde's step computes in-graph, `jnp.linspace(T, eps, N)`,
    computed once by the same jitted expression (bit-identical to the in-graph values), so the
    compiled scan holds neither the N-long grid nor its computation.
    """
    grid = self._time_grid
    if grid is None:
      grid = _linspace(self.run_sde.T, self.run_eps, self.run_sde.N)
      if not isinstance(grid, jax.core.Tracer):  # called under a trace (step outside the driver): no caching
        self._time_grid = grid
    return {'t': grid, 'sde': self.run_sde.tables()}

  def bind(self, tables):
    solver = super().bind(tables)
    if solver is not self:
      solver.run_sde = self.run_sde.with_tables(tables['sde'])
    return solver

  def init(self, rng, x):
    return PCState(rng, x, x)

  def step(self, score_fn, preconditioner, state, i):
    if self.kappa != 1:
      score_fn = Partial(functools.partial(_rescaled_time_score, kappa=self.kappa), score_fn)
    rng, x, x_mean = state[:3]
    t = self.table('t')[i]
    vec_t = jnp.ones(x.shape[0]) * t
    corrector = self.corrector(self.run_sde, score_fn, self.snr, self.n_steps, preconditioner, self.axis_name)
    predictor = self.predictor(self.run_sde, score_fn, self.probability_flow, preconditioner, self.pds_variant)
    rng, step_rng = split(rng)
    x, x_mean = self.update(corrector.update_fn, step_rng, x, vec_t, state)
    rng, step_rng = split(rng)
    x, x_mean = self.update(predictor.update_fn, step_rng, x, vec_t, state)
    return state._replace(rng=rng, x=x, x_mean=x_mean)

  def update(self, update_fn: Callable, rng: jax.Array, x: jax.Array, t: jax.Array, state) -> Tuple[jax.Array, jax.Array]:
    """One corrector or predictor update (x, x_mean) = update_fn(rng, x, t); conditional samplers wrap it."""
    return update_fn(rng, x, t)

  def output(self, state):
    return state.x_mean if self.denoise else state.x

  def snapshot(self, state):
    return state.x_mean


class PCSampler(Sampler):
  """The PC method under the driver, with score_sde's `get_pc_sampler` arguments.

  Called as sampler(rng, score_fn, preconditioner, num_chunks=, progress=, callback=, x_init=)
  (`pds_jax.driver.Sampler`); `rng` is one key (score_sde's stream) or per-sample keys (B, 2).
  """

  def __init__(self, sde: sde_lib.SDE, shape, predictor='reverse_diffusion', corrector='langevin',
               inverse_scaler: Callable = lambda x: x, snr: float = 0.16, n_steps: int = 1,
               probability_flow: bool = False, denoise: bool = True, eps: float = 1e-3,
               pds_variant: str = 'official', axis_name: Optional[str] = None, pmap: bool = False,
               mesh: Optional[jax.sharding.Mesh] = None):
    solver = PCSolver(sde, predictor, corrector, snr, n_steps, probability_flow, denoise, eps, pds_variant)
    solver.axis_name = axis_name
    super().__init__(solver, shape, inverse_scaler, pmap=pmap, mesh=mesh)

  @property
  def nfe(self) -> int:
    return self.solver.static_nfe


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


# ----------------------------------------------------------------------------- α(N)

ALPHA_FEW_STEPS = 5.  # the official default α, kept where PDS pays (N = 10 … 25)
ALPHA_STEPS_PER_UNIT = 5.  # α grows as N / 5 beyond
ALPHA_VERY_FEW_STEPS = 500.  # and as 500 / N² below 10 steps, where α = 5 diverges


def pds_alpha(num_steps: int) -> float:
  """The default PDS mask strength for N sampler steps: α(N) = max(5, N / 5, 500 / N²).

  The paper notes that strong preconditioning pays at few iterations and weak at many (α → ∞ is
  the vanilla sampler). Measured on the exact 64² Gaussian (reverse_diffusion + langevin, official
  variant, KL per dimension of 256 samples; `benchmarks/samplers.py --target resolution` checks
  64², 256², 1024²): the best α was 5 at N = 10 (α ≤ 3 diverge), 3-5 at N = 20-33, 10 at N = 66-100,
  and α = 5 lost to vanilla from N = 100 on (low-frequency variance bias), while α ≥ 10 never did.
  Below 10 steps (`--target alpha_few`; also the 32² natural Gaussian) α = 5 loses to vanilla, by
  59× in KL at N = 5, and the best α grows again: about 50 at N = 3, 20 at N = 5, 10 at N = 7.
  max(5, N / 5, 500 / N²) follows those optima: the official α = 5 (and its 6-12× gain in KL at
  N = 10-20) from 10 to 25 steps, stronger damping of the preconditioner below, and one that fades
  towards the plain sampler (M → I) as N grows. Set `sampling.alpha` to a number for a constant α
  (the official PDS code: 5).
  """
  if not num_steps >= 1:
    raise ValueError(f'pds_alpha: the number of steps must be >= 1, got {num_steps}.')
  return max(ALPHA_FEW_STEPS, num_steps / ALPHA_STEPS_PER_UNIT, ALPHA_VERY_FEW_STEPS / num_steps ** 2)


def method_num_steps(config) -> int:
  """The steps N of config.sampling's method, as the α(N) rule sees them (PC steps, σ-grid nodes)."""
  plan = _plan(config)
  if plan.num_steps is not None:
    return plan.num_steps
  if plan.method == 'pc':
    return int(config.model.num_scales / config.sampling.speed_up)
  return DEFAULT_NUM_STEPS.get(plan.method, 1)


def resolve_alpha(config) -> float:
  """config.sampling.alpha, or α(N) of the method's steps when it is None (the default)."""
  alpha = config.sampling.alpha
  return pds_alpha(method_num_steps(config)) if alpha is None else float(alpha)


def pds_schedule(config, sde: sde_lib.SDE, eps: float) -> Tuple[sde_lib.SDE, float]:
  """PDS's `speed_up` k: N = int(model.num_scales / k) steps and eps · k (official `run_lib.evaluate`)."""
  return speed_up_schedule(sde.with_num_scales(config.model.num_scales), eps, config.sampling.speed_up)


def speed_up_schedule(sde: sde_lib.SDE, eps: float, speed_up: float) -> Tuple[sde_lib.SDE, float]:
  """PDS's `speed_up` k applied to an SDE of N steps: N' = int(N / k) steps and eps · k."""
  k = speed_up
  if not k > 0:
    raise ValueError(f'config.sampling.speed_up must be > 0, got {k}.')
  n = int(sde.N / k)
  if n < 1:
    raise ValueError(f'config.sampling.speed_up = {k} leaves int(num_scales / speed_up) = {n} steps '
                     f'(model.num_scales = {sde.N}); use speed_up <= {sde.N}.')
  return sde.with_num_scales(n), eps * k


# ----------------------------------------------------------------------------- get_sampling_fn

_METHODS = {}
register_method = registry_decorator(_METHODS, 'sampling method')
# Steps of the fixed-step methods when sampling.num_steps is unset (EDM's 18 nodes for Heun).
DEFAULT_NUM_STEPS = {'heun': 18, 'euler': 35, 'ancestral': 35, 'dpm_solver': 20}
INIT_AWARE = 'init_aware'


def get_method(name: str) -> Callable:
  if name not in _METHODS:
    raise ValueError(f'config.sampling.method = {name!r}; choose one of {sorted(_METHODS) + [INIT_AWARE]}.')
  return _METHODS[name]


class Plan(NamedTuple):
  """A method's resolved settings: the config's sampling fields after the init_aware alias."""
  method: str
  num_steps: Optional[int]
  rho: float
  sigma_min: Optional[float]  # σ-grid methods: the last noise level (None: σ(eps) of the SDE)
  eps_scaled_by_speed_up: bool


def _plan(config) -> Plan:
  s = config.sampling
  method = s.method.lower()
  if method == INIT_AWARE:  # today's init-aware sampler: init_sampler on the Karras grid from σ_T
    return Plan(s.init_sampler.lower(), int(s.init_nodes), float(s.init_rho), float(s.init_sigma_min), False)
  get_method(method)
  num_steps = s.num_steps if s.num_steps is None else int(s.num_steps)
  if num_steps is not None and num_steps < 1:
    raise ValueError(f'config.sampling.num_steps = {num_steps} must be >= 1.')
  return Plan(method, num_steps, float(s.rho), None, num_steps is None)


class Start(NamedTuple):
  """Where a run starts: the SDE time of x_T and its EDM noise level (T and σ(T), or t(σ_T) and σ_T)."""
  t: float
  sigma: float


def _sigma_grid(sde: sde_lib.SDE, plan: Plan, config, eps: float, start: Start) -> np.ndarray:
  """The Karras grid from σ(t_start) to σ_min with num_steps nodes, then 0 when noise_removal."""
  nodes = plan.num_steps or DEFAULT_NUM_STEPS[plan.method]
  sigma_min = plan.sigma_min if plan.sigma_min is not None else float(sde.edm_sigma(np.float64(eps)))
  if nodes < 2:
    raise ValueError(f'config.sampling.num_steps = {nodes}: the {plan.method} grid needs >= 2 nodes.')
  return edm.karras_sigmas(start.sigma, sigma_min, nodes, plan.rho, append_zero=bool(config.sampling.noise_removal))


def truncated_num_steps(num_steps: int, t_start: float, eps: float, T: float = 1.) -> int:
  """The PC steps on [eps, t_start] with the spacing of num_steps steps on [eps, T]: round((N - 1)(t - eps)/(T - eps)) + 1."""
  return max(1, int(round((num_steps - 1) * (t_start - eps) / (T - eps))) + 1)


@register_method(name='pc')
def _pc(config, sde: sde_lib.SDE, plan: Plan, eps: float, start: Start) -> Solver:
  s = config.sampling
  if plan.num_steps is not None:  # N set directly: score_sde's eps
    run_sde, run_eps = sde.with_num_scales(plan.num_steps), eps
  else:  # PDS's speed_up k: N = num_scales / k, eps · k; from an init, the same spacing in t
    run_sde, run_eps = pds_schedule(config, sde, eps)
    run_sde = run_sde.with_num_scales(truncated_num_steps(run_sde.N, start.t, run_eps, sde.T))
  return PCSolver(run_sde, s.predictor.lower(), s.corrector.lower(), s.snr, s.n_steps_each, s.probability_flow,
                  s.noise_removal, run_eps, s.pds_variant, start.t)


@register_method(name='ode')
def _ode(config, sde, plan, eps, start):
  s = config.sampling
  return ode.ODESolver(sde, eps, start.t, s.ode_rtol, s.ode_atol, s.ode_method, s.noise_removal)


@register_method(name='euler')
def _euler(config, sde, plan, eps, start):
  return edm.EulerSolver(sde, _sigma_grid(sde, plan, config, eps, start))


@register_method(name='heun')
def _heun(config, sde, plan, eps, start):
  return edm.HeunSolver(sde, _sigma_grid(sde, plan, config, eps, start))


@register_method(name='ancestral')
def _ancestral(config, sde, plan, eps, start):
  return edm.AncestralSolver(sde, _sigma_grid(sde, plan, config, eps, start))


@register_method(name='dpm_solver')
def _dpm_solver(config, sde, plan, eps, start):
  s = config.sampling
  variants = {'dpm_solver': dpm_solver.DPMSolver, 'dpm_solver++': dpm_solver.DPMSolverPP}
  if s.dpm_solver_variant not in variants:
    raise ValueError(f'config.sampling.dpm_solver_variant = {s.dpm_solver_variant!r}; choose one of '
                     f'{sorted(variants)}.')
  return variants[s.dpm_solver_variant](sde, _sigma_grid(sde, plan, config, eps, start), s.solver_order)


def _load_init(kind: str, config, sde: sde_lib.SDE, shape, workdir: Optional[str]) -> Tuple[object, Start]:
  """(q_T, Start(t(σ_T), σ_T)) of init `kind` from the fit_init folder, or (None, Start(T, σ(T))) for the prior."""
  sigma_max = float(sde.edm_sigma(np.float64(sde.T)))
  if kind == store.PRIOR:
    return None, Start(sde.T, sigma_max)
  folder = store.init_folder(config, workdir or '.')
  init, sigma_t = store.load_init(folder, kind, tuple(shape[1:]))
  if not sigma_t <= sigma_max * (1 + 1e-6):
    raise ValueError(f'{os.path.join(folder, "init.json")}: sigma_T = {sigma_t} exceeds the largest noise level '
                     f'{sigma_max:.6g} of the model\'s {type(sde).__name__}.')
  return init, Start(min(float(sde.edm_time(np.float64(sigma_t))), sde.T), sigma_t)


class SamplingFn:
  """What `get_sampling_fn` returns: fn(rng, score_fn, progress=False, callback=None) -> (samples, nfe).

  Attributes: `sampler` (the driver), `preconditioner`, `settings` (the resolved method settings
  for run.json / report.json) and `nfe` (score evaluations per sample; None for the adaptive ODE
  until it ran, then the mean of its last call).
  """

  def __init__(self, sampler: Sampler, preconditioner: Preconditioner, num_chunks: int, settings: Dict):
    self.sampler, self.preconditioner, self.num_chunks, self.settings = sampler, preconditioner, num_chunks, settings
    self.nfe = sampler.solver.static_nfe

  def __call__(self, rng: jax.Array, score_fn: ScoreFn, progress: bool = False,
               callback: Optional[Callable] = None, x_init: Optional[jax.Array] = None):
    samples, self.nfe = self.sampler(rng, score_fn, self.preconditioner, num_chunks=self.num_chunks,
                                     progress=progress, callback=callback, x_init=x_init)
    return samples, self.nfe


def get_sampling_fn(config, sde: sde_lib.SDE, shape, inverse_scaler: Callable, eps: float,
                    preconditioner: Optional[Preconditioner] = None, axis_name: Optional[str] = None,
                    pmap: bool = False, mesh: Optional[jax.sharding.Mesh] = None,
                    workdir: Optional[str] = None) -> SamplingFn:
  """score_sde/PDS's `get_sampling_fn` for every method of `config.sampling.method`.

  `sde` and `eps` are score_sde's (N = model.num_scales). Methods (config.sampling fields):
    pc          predictor, corrector, snr, n_steps_each, probability_flow, pds_variant; N steps from
                num_steps (eps kept) or PDS's speed_up k (N = int(num_scales / k), eps · k).
    ode         score_sde's probability-flow sampler: diffrax ode_method, ode_rtol, ode_atol.
    euler, heun, ancestral   EDM's σ-grid samplers: num_steps Karras nodes (rho) from σ(T) to σ(eps).
    dpm_solver  dpm_solver_variant ('dpm_solver': singlestep, 'dpm_solver++': multistep) of
                solver_order 1/2/3 on the same grid.
    init_aware  the alias of the earlier init-aware sampler: init_sampler on init_nodes Karras nodes
                (init_rho) from σ_T to init_sigma_min, init from sampling.init.
  sampling.init: 'prior' (the SDE's prior at T), or a q_T fitted by --mode fit_init
  ('spectral_gaussian', 'flow', 'gaussian', 'empirical'), loaded from sampling.init_path
  (default <workdir>/init), for every method. noise_removal: the final denoising step.
  PDS (a non-identity `preconditioner`) applies to 'pc' and 'ancestral' and is refused elsewhere.

  Raises:
    ValueError naming the field for any invalid setting, before anything is compiled.
  """
  s = config.sampling
  plan = _plan(config)
  kind = store.init_kind(config)
  init, start = _load_init(kind, config, sde, shape, workdir)
  solver = get_method(plan.method)(config, sde, plan, eps, start)
  preconditioner = Preconditioner() if preconditioner is None else preconditioner
  solver.check_preconditioner(preconditioner)
  if not preconditioner.is_identity and not isinstance(sde, sde_lib.VESDE):
    logging.warning('PDS with a %s: on the exact 64² VP Gaussian reference PC + PDS needed 196 score evaluations '
                    'to come within 5 %% of PC-2000, the plain PC sampler 93 (README, Results); PDS targets VE '
                    'models.', type(sde).__name__)
  solver.axis_name = axis_name
  sampler = Sampler(solver, shape, inverse_scaler, init=init, pmap=pmap, mesh=mesh)
  settings = {'method': plan.method, 'sde': type(sde).__name__, 'num_steps': solver.num_steps,
              'nfe': solver.static_nfe, 'init': kind,
              'sigma_t': None if init is None else start.sigma, 'pds_variant': s.pds_variant,
              'preconditioned': not preconditioner.is_identity}
  if plan.method == 'pc':
    settings.update(eps=solver.eps, predictor=s.predictor, corrector=s.corrector, snr=s.snr,
                    n_steps_each=s.n_steps_each, speed_up=s.speed_up if plan.eps_scaled_by_speed_up else None)
  elif plan.method == 'ode':
    settings.update(eps=solver.eps, ode_method=s.ode_method, ode_rtol=s.ode_rtol, ode_atol=s.ode_atol)
  else:
    settings.update(rho=plan.rho, sigma_max=float(solver.sigmas[0]), sigma_min=float(solver.sigmas[solver.sigmas > 0][-1]))
    if plan.method == 'dpm_solver':
      settings.update(solver_order=s.solver_order, dpm_solver_variant=s.dpm_solver_variant)
  if s.method.lower() == INIT_AWARE:
    settings['alias'] = INIT_AWARE
  return SamplingFn(sampler, preconditioner, s.num_chunks, settings)
