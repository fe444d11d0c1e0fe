"""score_sde's predictor–corrector method with PDS: predictors, correctors and the PC solver.

Names, registries and numerics follow score_sde's `sampling.py` (Song et al., ICLR 2021);
`reverse_diffusion` and `langevin` follow the official PDS code (Ma et al., IJCV 2025). The PC
solver runs under the one driver (`pds_jax.samplers.driver.Sampler`) as method 'pc'.

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
Langevin-type steps then keep their stationary law for any constant M (docs/method.md §3), and the
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
(docs/method.md §4), so this variant changes how fast the corrector mixes, never what it targets.
"""

from __future__ import annotations

import abc
import functools
from typing import Callable, Mapping, NamedTuple, Optional, Tuple, Type, Union

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from pds_jax import sde_lib
from pds_jax.preconditioning import Preconditioner
from pds_jax.samplers.driver import Sampler, ScoreFn, Solver, normal, split
from pds_jax.samplers.methods import Context, register_method
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
  predictor: Type[Predictor] = eqx.field(static=True)
  corrector: Type[Corrector] = eqx.field(static=True)
  snr: float = eqx.field(static=True)
  n_steps: int = eqx.field(static=True)
  probability_flow: bool = eqx.field(static=True)
  denoise: bool = eqx.field(static=True)
  eps: float = eqx.field(static=True)
  pds_variant: str = eqx.field(static=True)
  kappa: float = eqx.field(static=True)
  run_sde: sde_lib.SDE
  run_eps: float = eqx.field(static=True)
  time_grid: jax.Array
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
    self.kappa = self.t_start / sde.T
    self.run_sde = sde if self.kappa == 1 else sde.truncate(self.t_start)
    self.run_eps = eps / self.kappa
    # t_i = linspace(T, eps, N), the float32 grid score_sde's step computes in-graph, computed by the
    # same jitted expression (bit-identical); a leaf, so the compiled scan holds neither grid nor computation.
    self.time_grid = _linspace(self.run_sde.T, self.run_eps, self.run_sde.N)

  @property
  def precondition_prior(self) -> bool:
    return self.pds_variant != 'corrector_only'

  @property
  def num_steps(self) -> int:
    return self.run_sde.N

  def step_times(self) -> np.ndarray:
    return np.linspace(self.run_sde.T, self.run_eps, self.num_steps, dtype=np.float32) * self.kappa

  @property
  def static_nfe(self) -> int:
    evals = (self.predictor is not NonePredictor) + (self.corrector is not NoneCorrector) * self.n_steps
    return self.num_steps * evals

  def init(self, rng, x):
    return PCState(rng, x, x)

  def step(self, score_fn, preconditioner, state, i):
    if self.kappa != 1:
      score_fn = Partial(functools.partial(_rescaled_time_score, kappa=self.kappa), score_fn)
    rng, x, x_mean = state[:3]
    t = self.time_grid[i]
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

  def settings(self) -> dict:
    return {'eps': self.eps}

  def output(self, state):
    return state.x_mean if self.denoise else state.x

  def snapshot(self, state):
    return state.x_mean


class PCSampler(Sampler):
  """The PC method under the driver, with score_sde's `get_pc_sampler` arguments.

  Called as sampler(rng, score_fn, preconditioner, num_chunks=, progress=, callback=, x_init=)
  (`pds_jax.samplers.driver.Sampler`); `rng` is one key (score_sde's stream) or per-sample keys (B, 2).
  """

  def __init__(self, sde: sde_lib.SDE, shape, predictor='reverse_diffusion', corrector='langevin',
               inverse_scaler: Callable = lambda x: x, snr: float = 0.16, n_steps: int = 1,
               probability_flow: bool = False, denoise: bool = True, eps: float = 1e-3,
               pds_variant: str = 'official', axis_name: Optional[str] = None, pmap: bool = False,
               mesh: Optional[jax.sharding.Mesh] = None):
    solver = PCSolver(sde, predictor, corrector, snr, n_steps, probability_flow, denoise, eps, pds_variant)
    super().__init__(solver.with_axis_name(axis_name), shape, inverse_scaler, pmap=pmap, mesh=mesh)

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


def truncated_num_steps(num_steps: int, t_start: float, eps: float, T: float = 1.) -> int:
  """The PC steps on [eps, t_start] with the spacing of num_steps steps on [eps, T]: round((N - 1)(t - eps)/(T - eps)) + 1."""
  return max(1, int(round((num_steps - 1) * (t_start - eps) / (T - eps))) + 1)


PC_FIELDS = ('predictor', 'corrector', 'snr', 'n_steps_each', 'probability_flow', 'noise_removal', 'pds_variant',
             'num_steps', 'speed_up')


@register_method('pc', fields=PC_FIELDS, pds=True, prior_start=True)
def _pc(fields: Mapping, ctx: Context) -> PCSolver:
  """score_sde's PC method: N = sampling.num_steps with score_sde's eps, or PDS's speed_up k (N =
  int(num_scales / k), eps · k; from an init, the same spacing in t)."""
  if ctx.num_steps is not None:
    run_sde, run_eps = ctx.sde.with_num_scales(ctx.num_steps), ctx.eps
  else:
    run_sde, run_eps = speed_up_schedule(ctx.sde, ctx.eps, fields['speed_up'])
    run_sde = run_sde.with_num_scales(truncated_num_steps(run_sde.N, ctx.start.t, run_eps, ctx.sde.T))
  return PCSolver(run_sde, fields['predictor'].lower(), fields['corrector'].lower(), fields['snr'],
                  fields['n_steps_each'], fields['probability_flow'], fields['noise_removal'], run_eps,
                  fields['pds_variant'], ctx.start.t)
