"""The probability-flow ODE solved with diffrax: score_sde's `ode` sampler and the likelihood's ODE.

score_sde's `get_ode_sampler` integrates the probability-flow ODE (Song et al. 2021, eq. 13)
  dx/dt = f(x, t) - ½ g(t)² ∇log p_t(x)
from T to eps with scipy's RK45 (rtol = atol = 1e-5) and then optionally takes one reverse-diffusion
predictor step at eps without its noise (`denoise`). Here the same ODE is solved by diffrax's
Dormand–Prince 5(4) (`'RK45'`/`'dopri5'`, scipy's RK45 method) or Tsitouras 5(4) (`'tsit5'`)
with a PID step-size controller, under `jit`, with no host round-trips.

Each sample is solved as its own ODE (the solve is `vmap`ped over the batch): its step sizes and
NFE depend on that sample only, so samples do not depend on how a batch is split over devices
(score_sde solves the flattened batch as one system, with one step size). The model is still
evaluated on the whole batch at every solver iteration.

NFE: both methods are 7-stage FSAL pairs, so an attempted step (accepted or rejected) costs 6 score
evaluations and the solve 1 more at the start: nfe = 6 · num_steps + 1 (+1 for `denoise`), per
sample, from diffrax's statistics (tested against counted evaluations).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Tuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from pds_jax import sde_lib
from pds_jax.samplers.driver import NonFiniteSampleError, Solver
from pds_jax.samplers.grid import NOISE_REMOVAL
from pds_jax.samplers.methods import declare_field, register_method

METHODS = {'rk45': diffrax.Dopri5, 'dopri5': diffrax.Dopri5, 'tsit5': diffrax.Tsit5}
EVALS_PER_STEP = 6  # new evaluations per attempted step of a 7-stage FSAL method
ODE_METHOD = declare_field('ode_method', 'RK45', str, "the probability-flow ODE solver: 'RK45' (Dormand–Prince "
                                                      "5(4), score_sde's) or 'tsit5'")
ODE_RTOL = declare_field('ode_rtol', 1e-5, float, "the PID controller's relative tolerance (score_sde: 1e-5)")
ODE_ATOL = declare_field('ode_atol', 1e-5, float, "the PID controller's absolute tolerance (score_sde: 1e-5)")


def get_ode_method(name: str) -> diffrax.AbstractSolver:
  """The diffrax solver of score_sde's `method` name ('RK45') or a diffrax name ('dopri5', 'tsit5')."""
  if name.lower() not in METHODS:
    raise ValueError(f"sampling.ode_method = {name!r}; choose one of 'RK45' (scipy's name), {sorted(METHODS)[:2]}.")
  return METHODS[name.lower()]()


def solve(vector_field: Callable, y0, t0: float, t1, args, *, rtol: float, atol: float, method: str = 'RK45',
          max_steps: int = 4096) -> Tuple[object, jax.Array, jax.Array]:
  """Solves dy/dt = vector_field(t, y, args) for one sample from t0 to t1 (adaptive, PID controller).

  Args:
    vector_field: f(t, y, args) for a scalar t and one sample's pytree y.
    y0: the state at t0 (a pytree); t1 may be traced.
    args: passed to the vector field (e.g. the score function, a pytree of model weights).

  Returns:
    (y(t1), nfe: score evaluations (int32), ok: whether the solve reached t1 (bool)).
  """
  sol = diffrax.diffeqsolve(diffrax.ODETerm(vector_field), get_ode_method(method), t0=t0, t1=t1, dt0=None, y0=y0,
                            args=args, stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
                            saveat=diffrax.SaveAt(t1=True), max_steps=max_steps, throw=False)
  y1 = jax.tree_util.tree_map(lambda y: y[-1], sol.ys)
  nfe = EVALS_PER_STEP * sol.stats['num_steps'] + 1
  return y1, nfe.astype(jnp.int32), sol.result == diffrax.RESULTS.successful


def probability_flow_drift(sde: sde_lib.SDE) -> Callable:
  """f(t, x, score_fn) = f(x, t) - ½ g(t)² s(x, t) for one sample x (H, W, C) at a scalar t."""

  def drift(t, x, score_fn):
    out, _ = sde.reverse(score_fn, probability_flow=True).sde(x[None], jnp.reshape(t, (1,)))
    return out[0]

  return drift


HUTCHINSON_TYPES = ('Rademacher', 'Gaussian', 'exact')


def divergence_drift(sde: sde_lib.SDE, hutchinson_type: str = 'Rademacher') -> Callable:
  """The probability-flow ODE augmented with its divergence, for the likelihood (score_sde's `get_div_fn`).

  Returns field(t, (x, _), (score_fn, ε)) = (f̃(t, x), ∇·f̃(t, x)) for one sample, f̃ the
  `probability_flow_drift`. Along the flow d/dt log p_t(x(t)) = -∇·f̃, so integrating the second
  component from eps to T gives log p_eps(x) = log p_T(x_T) + ∫ ∇·f̃ dt (Song et al. 2021, eq. 39).
    'Rademacher', 'Gaussian'  Hutchinson–Skilling: ∇·f̃ ≈ εᵀ (∂f̃/∂x) ε with the sample's fixed ε
                              (one Jacobian-vector product; score_sde uses a vector-Jacobian one);
    'exact'                   the trace of ∂f̃/∂x from D Jacobian-vector products (small images).
  """
  if hutchinson_type not in HUTCHINSON_TYPES:
    raise ValueError(f'likelihood: hutchinson_type = {hutchinson_type!r}; choose one of {HUTCHINSON_TYPES}.')
  drift = probability_flow_drift(sde)

  def field(t, y, args):
    x, _ = y
    score_fn, noise = args
    flow = lambda x: drift(t, x, score_fn)
    if hutchinson_type == 'exact':
      basis = jnp.eye(x.size, dtype=x.dtype).reshape((x.size,) + x.shape)
      f, columns = jax.vmap(lambda v: jax.jvp(flow, (x,), (v,)), out_axes=(None, 0))(basis)
      return f, jnp.trace(columns.reshape(x.size, x.size))
    f, jvp = jax.jvp(flow, (x,), (noise,))
    return f, jnp.sum(jvp * noise)

  return field


class ODEState(NamedTuple):
  x: jax.Array
  nfe: jax.Array  # (B,) int32
  ok: jax.Array   # (B,) bool: the adaptive solve reached eps


class AdaptiveODESolver(Solver):
  """A method made of one adaptive diffrax solve per sample (`solve`): the ODE sampler and the likelihood.

  Fields (static): eps (the solve's end near 0: score_sde's eps), rtol / atol (the PID controller's
  tolerances), method ('RK45' = 'dopri5', or 'tsit5'), max_steps (the step budget per sample).
  Class attributes: `goal` (where the solve ends, for messages: 'eps' or 'T'), `items` ('samples'
  or 'images'), `tolerance_fields` (the config fields to loosen).
  """
  eps: float = eqx.field(static=True)
  rtol: float = eqx.field(static=True)
  atol: float = eqx.field(static=True)
  method: str = eqx.field(static=True)
  max_steps: int = eqx.field(static=True)
  goal = 'eps'
  items = 'samples'
  tolerance_fields = 'sampling.ode_rtol / sampling.ode_atol'

  def __init__(self, sde: sde_lib.SDE, t_start: float, eps: float, rtol: float, atol: float, method: str,
               max_steps: int):
    super().__init__(sde, t_start)
    limit = sde.T if self.goal == 'T' else self.t_start  # the solve runs between eps and this time
    if not 0 < eps < limit:
      raise ValueError(f'{self.name}: eps must lie in (0, {limit}), got {eps}.')
    if not (rtol > 0 and atol > 0):
      raise ValueError(f'{self.name}: {self.tolerance_fields} must be > 0, got {rtol}, {atol}.')
    if int(max_steps) < 1:
      raise ValueError(f'{self.name}: max_steps must be >= 1, got {max_steps}.')
    get_ode_method(method)
    self.eps, self.rtol, self.atol, self.method, self.max_steps = eps, rtol, atol, method, int(max_steps)

  @property
  def static_nfe(self):
    return None

  def nfe(self, state):
    return state.nfe

  def settings(self) -> dict:
    return {'eps': self.eps}

  def check_final(self, state) -> None:
    ok = np.asarray(state.ok)
    if not ok.all():
      raise NonFiniteSampleError(
          0, self.step_times()[0], self.num_steps, self.name,
          reason=f'the adaptive solve of {int((~ok).sum())} of {ok.size} {self.items} did not reach {self.goal} '
                 f'within {self.max_steps} steps (a non-finite score or a very stiff ODE)',
          hint=f'Check the model, or loosen {self.tolerance_fields}.')


class ODESolver(AdaptiveODESolver):
  """score_sde's probability-flow ODE sampler: step 0 solves from t_start to eps, step 1 denoises.

  Args:
    sde: the model's SDE; t_start: the time of x_T (sde.T, or t(σ_T) from an init).
    eps: the end time (score_sde's sampling eps).
    rtol, atol: the PID controller's tolerances (score_sde: 1e-5 both).
    method: 'RK45' (= 'dopri5') or 'tsit5'.
    denoise: score_sde's `denoise`: x - rev_f(x, eps), the reverse-diffusion predictor's mean at
      eps (Tweedie's formula for VE), 1 more NFE.
    max_steps: the solver's step budget per sample.
  """
  denoise: bool = eqx.field(static=True)
  name = 'ode'

  def __init__(self, sde: sde_lib.SDE, eps: float, t_start: float = None, rtol: float = 1e-5, atol: float = 1e-5,
               method: str = 'RK45', denoise: bool = True, max_steps: int = 4096):
    super().__init__(sde, sde.T if t_start is None else t_start, eps, rtol, atol, method, max_steps)
    self.denoise = denoise

  @property
  def num_steps(self) -> int:
    return 1 + int(self.denoise)

  def step_times(self) -> np.ndarray:
    return np.array([self.t_start, self.eps][:self.num_steps])

  @property
  def static_nfe(self):
    return None

  def init(self, rng, x):
    b = x.shape[0]
    return ODEState(x=x, nfe=jnp.zeros((b,), jnp.int32), ok=jnp.ones((b,), bool))

  def _solve(self, score_fn, state):
    drift = probability_flow_drift(self.sde)
    per_sample = lambda x: solve(drift, x, self.t_start, self.eps, score_fn, rtol=self.rtol, atol=self.atol,
                                 method=self.method, max_steps=self.max_steps)
    x, nfe, ok = jax.vmap(per_sample)(state.x)
    return ODEState(x=x, nfe=state.nfe + nfe, ok=ok)

  def _denoise(self, score_fn, state):
    t = jnp.full((state.x.shape[0],), self.eps, state.x.dtype)
    rev_f, _ = self.sde.reverse(score_fn, probability_flow=False).discretize(state.x, t)
    return state._replace(x=state.x - rev_f, nfe=state.nfe + 1)

  def step(self, score_fn, preconditioner, state, i):
    if not self.denoise:
      return self._solve(score_fn, state)
    return jax.lax.cond(i == 0, lambda s: self._solve(score_fn, s), lambda s: self._denoise(score_fn, s), state)

  def output(self, state):
    return state.x


@register_method('ode', fields=(ODE_METHOD, ODE_RTOL, ODE_ATOL, NOISE_REMOVAL))
def _ode(fields, ctx):
  return ODESolver(ctx.sde, ctx.eps, ctx.start.t, fields[ODE_RTOL], fields[ODE_ATOL], fields[ODE_METHOD],
                   fields[NOISE_REMOVAL])
