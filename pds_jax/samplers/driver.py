"""The one sampling driver: every sampling method runs through `Sampler`.

A method is a `Solver`: a pure step function over a state pytree whose leaves all have the batch
as their leading axis (k-diffusion's uniformity, diffrax's separation of the solver from the loop):

  state = solver.init(rng, x_T)                       x_T (B, H, W, C) at time solver.t_start
  state = solver.init(rng, x_T, cond)                 conditional solvers: cond, batch-leading arrays
  state = solver.step(score_fn, preconditioner, state, i)   i = 0 … solver.num_steps - 1
  x     = solver.output(state)                        samples in the SDE's variable at t = eps / 0
  aux   = solver.aux(state)                           per-sample results beyond x (e.g. log-densities)

A solver is a pytree (an `equinox.Module`, diffrax-style): its per-step arrays (time or σ grids,
the SDE's discrete schedules) are leaves and its settings are static fields. The driver passes
the solver itself to the jitted scan as an argument, so N enters the compiled program only as
the trip count and the arrays' shapes, and nothing is ever bound into a solver.

`Sampler` adds everything else once, for every method:
- x_T: the SDE's prior at T (multiplied by M when the method is preconditioned: official PDS), an
  initialization-aware q_T at σ_T (`pds_jax.init_aware`), or an array given by the caller;
- keys: one key (score_sde's stream) or per-sample keys (B, 2) (`sample_keys`: sample i of a job
  uses fold_in(PRNGKey(seed), i)), so a sample does not depend on how a batch is split;
- `jit`, score_sde's `pmap`, or `jax.shard_map` over a 1-D mesh (one program per device);
- the scan over steps in `num_chunks` jitted chunks (bit-identical for any count), a tqdm bar and a
  snapshot callback between chunks;
- a compiled scan that does not grow with N (the solver is an argument, above);
- `NonFiniteSampleError` naming the first step whose state became NaN/Inf;
- the number of score evaluations per sample, counted from the final state.
"""
from __future__ import annotations

import abc
import copy
import functools
from typing import Any, Callable, Optional

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec
from jax.tree_util import Partial

from pds_jax import sde_lib
from pds_jax.preconditioning import Preconditioner

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]
State = Any


# ----------------------------------------------------------------------------- random numbers


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


# ----------------------------------------------------------------------------- the protocol


class NonFiniteSampleError(FloatingPointError):
  """Samples became NaN/Inf; `step` is the first sampler step (0-based) at which it happened.

  `t` is the SDE time of that step (None where a step spans an interval, e.g. the adaptive ODE solve).
  """

  def __init__(self, step: int, t: Optional[float], num_steps: int, method: str = 'sampler',
               reason: str = 'samples became non-finite (NaN/Inf)',
               hint: str = 'Try a smaller snr, a larger alpha or more steps.'):
    self.step, self.t = step, t
    where = '' if t is None else f' (t = {t:.6g})'
    super().__init__(f'{method}: {reason} at step {step} of {num_steps}{where}; nothing was written. {hint}')


class Solver(eqx.Module):
  """A sampling method: a scan of `num_steps` pure steps over a batch-leading state pytree.

  Fields (pytree): `sde`, the SDE whose variable x_T and the output live in (a pytree itself);
  `t_start`, the SDE time of x_T (sde.T from the prior, t(σ_T) from an init-aware q_T; static);
  `axis_name`, the mapped device axis for methods that reduce over the batch (static; the driver
  gives it with `with_axis_name`). Subclasses add their per-step arrays as leaves and their
  settings as static fields.

  Class attributes:
    name: the method's name in messages.
    stochastic: whether steps draw noise after x_T (then the state carries the rng).
    fitted_start: whether `sampling.init = 'auto'` starts it on a VE model from the fitted q_T when
      there is one (default: the deterministic solvers; also the EDM-stochastic and Restart solvers,
      whose path from σ_max runs mostly on the probability-flow ODE: docs/results.md, "Noise samples").
    preconditioned_by_pds: whether PDS's M is defined for this method (else a non-identity
      preconditioner is refused by `check_preconditioner`).
    precondition_prior: whether a prior draw is multiplied by M (the official PDS prior M ξ σ_max).
  """
  sde: sde_lib.SDE
  t_start: float = eqx.field(static=True)
  axis_name: Optional[str] = eqx.field(static=True)

  name = 'solver'
  stochastic = False
  preconditioned_by_pds = False
  precondition_prior = True

  @property
  def fitted_start(self) -> bool:
    return not self.stochastic

  def __init__(self, sde: sde_lib.SDE, t_start: float, axis_name: Optional[str] = None):
    self.sde, self.t_start, self.axis_name = sde, float(t_start), axis_name

  def with_axis_name(self, axis_name: Optional[str]) -> 'Solver':
    """The same solver reducing over the mapped device axis `axis_name` (a new pytree; static field)."""
    solver = copy.copy(self)
    object.__setattr__(solver, 'axis_name', axis_name)
    return solver

  @property
  @abc.abstractmethod
  def num_steps(self) -> int:
    """Length of the scan."""

  @abc.abstractmethod
  def step_times(self) -> np.ndarray:
    """(num_steps,) SDE time at the start of each step (None entries where undefined; host-side)."""

  @abc.abstractmethod
  def init(self, rng: jax.Array, x: jax.Array) -> State:
    """The state before step 0 from x_T (B, H, W, C) at `t_start` and the keys left after drawing x_T.

    A conditional solver takes a third argument `cond`: the caller's conditioning arrays (a pytree
    of (B, ...) arrays, e.g. observed pixels and a mask), mapped over devices like x_T.
    """

  @abc.abstractmethod
  def step(self, score_fn: ScoreFn, preconditioner: Preconditioner, state: State, i: jax.Array) -> State:
    """Step i (a traced int32) of the scan."""

  @abc.abstractmethod
  def output(self, state: State) -> jax.Array:
    """The samples (B, H, W, C) of the final state, before the inverse data scaler."""

  def snapshot(self, state: State) -> jax.Array:
    """What the snapshot callback sees between chunks (default: `output`)."""
    return self.output(state)

  @property
  @abc.abstractmethod
  def static_nfe(self) -> Optional[int]:
    """Score evaluations per sample when fixed by the method (None for adaptive solvers; host-side)."""

  def nfe(self, state: State) -> jax.Array:
    """(B,) score evaluations spent on each sample of the final state."""
    return jnp.full(self.output(state).shape[:1], self.static_nfe, jnp.int32)

  def settings(self) -> dict:
    """Derived settings for run.json / report.json beyond the config's fields (e.g. the grid's ends)."""
    return {}

  def aux(self, state: State) -> dict:
    """Per-sample results of the final state beyond the samples: a dict of (B, ...) arrays (default none)."""
    return {}

  def check_final(self, state: State) -> None:
    """Host-side check of the final state (e.g. an adaptive solve that stopped early); raises."""

  def check_preconditioner(self, preconditioner: Preconditioner) -> None:
    """Refuses PDS masks where this method leaves them undefined (a static check on the pytree)."""
    if not preconditioner.is_identity and not self.preconditioned_by_pds:
      raise ValueError(
          f"sampling.method = '{self.name}' is a deterministic ODE solver: PDS's K = M Mᵀ would change its flow "
          'map and so the distribution it samples (on the exact Gaussian no +PDS Heun run gets below FD 13). '
          "PDS applies to the 'pc' and 'ancestral' samplers; unset --freq_mask_path / --space_mask_path "
          '(--config.sampling.freq_mask_path= --config.sampling.space_mask_path=) for this method.')


# ----------------------------------------------------------------------------- the driver


def _as_pytree_fn(fn: Callable) -> Partial:
  """A function as a pytree: a `Partial`'s bound arrays (model weights) become jit arguments."""
  return fn if isinstance(fn, Partial) else Partial(fn)


def _all_finite(state: State) -> jax.Array:
  leaves = [leaf for leaf in jax.tree_util.tree_leaves(state)
            if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact)]
  return functools.reduce(jnp.logical_and, [jnp.all(jnp.isfinite(leaf)) for leaf in leaves], jnp.bool_(True))


class _PackedPmap:
  """`jax.pmap(fn)` with fn's dynamic arguments packed in one tuple, trailing arguments static.

  JAX 0.10's pmap takes a flat `in_axes` tuple as per-leaf whenever the arguments happen to hold as
  many leaves as there are arguments (e.g. a solver of 4 leaves, the keys, and 3 empty arguments),
  and then maps a solver's grid over devices; one level of nesting sends it down its general path.
  """

  def __init__(self, fn: Callable, in_axes: tuple, num_static: int = 0, **kwargs):
    self._num_dynamic = len(in_axes)
    static = tuple(range(1, 1 + num_static))
    self._pmapped = jax.pmap(lambda dynamic, *rest: fn(*dynamic, *rest), in_axes=(tuple(in_axes),),
                             static_broadcasted_argnums=static, **kwargs)

  def _split(self, args):
    return (tuple(args[:self._num_dynamic]),) + tuple(args[self._num_dynamic:])

  def __call__(self, *args):
    return self._pmapped(*self._split(args))

  def lower(self, *args):
    return self._pmapped.lower(*self._split(args))


class Sampler:
  """Runs a `Solver` from x_T to samples: sampler(rng, score_fn, preconditioner) -> (samples, nfe).

  Args:
    solver: the method.
    shape: (B, H, W, C) of one batch.
    inverse_scaler: applied to the output (score_sde's data inverse scaler).
    init: x_T's distribution: None for the SDE's prior at T, else an `init_aware` q_T (a pytree
      with `sample(rng, n)`) of the VE-form variable x_0 + σ_T ε, which is mapped to the SDE's
      variable at `solver.t_start` (x = m(t) x̃, m = 1 for VE). A solver starting before T needs
      an init or the `x_init` of each call.
    pmap: score_sde's `pmap` over the local devices (per-sample keys only).
    mesh: a 1-D `jax.sharding.Mesh` (`pds_jax.parallel.batch_mesh()`): the per-device program under
      `jax.shard_map` in `jit`, which also spans hosts' devices (per-sample keys only).
  """

  def __init__(self, solver: Solver, shape, inverse_scaler: Callable = lambda x: x, init: Any = None,
               pmap: bool = False, mesh: Optional[jax.sharding.Mesh] = None):
    if pmap and mesh is not None:
      raise ValueError(f'{type(self).__name__}: choose pmap=True or a mesh, not both.')
    if pmap:
      solver = solver.with_axis_name(solver.axis_name or 'batch')
    elif mesh is not None:
      solver = solver.with_axis_name(mesh.axis_names[0])
    self.solver, self.shape, self.inverse_scaler, self.init = solver, tuple(shape), inverse_scaler, init
    self.pmap, self.mesh = pmap, mesh
    if pmap:
      self._start = _PackedPmap(self._start_impl, (None, 0, None, None, 0))
      self._run = _PackedPmap(self._run_impl, (None, None, None, 0, None), num_static=1, axis_name=solver.axis_name)
      self._finish = _PackedPmap(self._finish_impl, (None, 0))
    elif mesh is not None:
      batch, rep = PartitionSpec(solver.axis_name), PartitionSpec()
      carry = (batch, batch)
      # check_vma=False: diffrax's adaptive while loop (the ODE method) carries values whose
      # device-varying type JAX cannot infer; every per-device program here is batch-parallel.
      per_device = lambda fn, in_specs, out_specs: jax.shard_map(fn, mesh=mesh, in_specs=in_specs,
                                                                 out_specs=out_specs, check_vma=False)
      self._start = jax.jit(per_device(self._start_impl, (rep, batch, rep, rep, batch), carry))
      self._run = jax.jit(lambda solver, score_fn, precond, c, start, length: per_device(
          functools.partial(self._run_impl, length=length), (rep, rep, rep, carry, rep), carry)(
              solver, score_fn, precond, c, start), static_argnums=(5,))
      self._finish = jax.jit(per_device(self._finish_impl, (rep, carry), (batch, batch, batch)))
    else:
      self._start = jax.jit(self._start_impl)
      self._run = jax.jit(self._run_impl, static_argnums=(5,))
      self._finish = jax.jit(self._finish_impl)

  @property
  def num_steps(self) -> int:
    return self.solver.num_steps

  @property
  def sde(self) -> sde_lib.SDE:
    return self.solver.sde

  # -- the jitted pieces (per device under pmap / shard_map)

  def _draw(self, solver: Solver, rng: jax.Array, preconditioner: Preconditioner, init, shape) -> jax.Array:
    """x_T of `shape` (the local batch): prior (times M when preconditioned) or m(t_T) · q_T."""
    sde = solver.sde
    if init is None:
      if rng.ndim == 2:  # per-sample keys: item i of the prior from key i
        prior = jax.vmap(lambda key: sde.prior_sampling(key, shape[1:]))(rng)
      else:
        prior = sde.prior_sampling(rng, shape)
      return preconditioner.apply(prior) if solver.precondition_prior else prior
    if rng.ndim == 2:
      x = jax.vmap(lambda key: init.sample(key, 1)[0])(rng)
    else:
      x = init.sample(rng, shape[0])
    return sde.edm_scale(jnp.float32(solver.t_start)) * x

  def _start_impl(self, solver, rng, preconditioner, init: dict, given: dict):
    """The carry before step 0. `init`: {'q_t': q_T} or {}; `given`: the caller's batch-leading
    {'x_init': x_T, 'cond': cond} entries (dicts of present entries only: pmap mis-maps several None
    arguments beside a pytree of arrays)."""
    rng, init_rng = split(rng)
    x_init = given.get('x_init')
    if x_init is None:
      shape = (rng.shape[0],) + self.shape[1:] if rng.ndim == 2 else self.shape
      x_init = self._draw(solver, init_rng, preconditioner, init.get('q_t'), shape)
    state = solver.init(rng, x_init) if 'cond' not in given else solver.init(rng, x_init, given['cond'])
    return state, jnp.full((1,), -1, jnp.int32)

  def _start_args(self, x_init, cond) -> tuple:
    """(init, given) of `_start_impl`: dicts holding only the entries that are set."""
    given = {k: v for k, v in (('x_init', x_init), ('cond', cond)) if v is not None}
    return ({} if self.init is None else {'q_t': self.init}), given

  def _run_impl(self, solver, score_fn, preconditioner, carry, start, length: int):
    """Steps start … start + length - 1 of `solver` (a jit argument: its per-step arrays are too).

    The step indices are scanned over as start + iota(length), an op of the program, not a constant.
    (Carrying the index as a counter instead made XLA CPU give an FFT of the GSPMD-partitioned
    program a layout its FFT thunk rejects: RET_CHECK IsMonotonicWithDim0Major, jax-ml/jax#22484.)
    """

    def step(carry, i):
      state, first_bad = carry
      state = solver.step(score_fn, preconditioner, state, i)
      first_bad = jnp.where((first_bad < 0) & ~_all_finite(state), i, first_bad)
      return (state, first_bad), None

    carry, _ = jax.lax.scan(step, carry, start + jnp.arange(length))
    return carry

  def _finish_impl(self, solver, carry):
    state, _ = carry
    return self.inverse_scaler(solver.output(state)), solver.nfe(state), solver.aux(state)

  # -- the host loop

  def __call__(self, rng: jax.Array, score_fn: ScoreFn, preconditioner: Optional[Preconditioner] = None, *,
               num_chunks: int = 1, progress: bool = False,
               callback: Optional[Callable[[int, jax.Array], None]] = None,
               x_init: Optional[jax.Array] = None, cond: Any = None, return_aux: bool = False):
    """Draws one batch of samples.

    Args:
      rng: a PRNG key, or per-sample keys (B, 2) (required with `pmap=True` or a mesh).
      score_fn: s(x, t) for x (B, H, W, C) and t (B,); any pure JAX function. A
        `jax.tree_util.Partial` keeps its bound arrays (model weights) as jit arguments.
      preconditioner: the PDS preconditioner (None = identity = the plain method).
      num_chunks: run the steps as this many jitted scans (samples are bit-identical for any value).
      progress: show a tqdm bar over the steps.
      callback: called as callback(steps_done, snapshot (B, H, W, C)) after each chunk.
      x_init: x_T (B, H, W, C) in the SDE's variable at `solver.t_start`, used as given (no M), in
        place of the prior or init draw.
      cond: a conditional solver's conditioning, a pytree of (B, ...) arrays given to `solver.init`.
      return_aux: also return `solver.aux` of the final state (a dict of (B, ...) arrays).

    Returns:
      (samples after the inverse scaler, score evaluations per sample: an int for fixed-step
      methods, the batch mean for adaptive ones), and the aux dict third when `return_aux`.

    Raises:
      NonFiniteSampleError: if any state became NaN/Inf, with the first step where it did.
    """
    preconditioner = Preconditioner() if preconditioner is None else preconditioner
    self.solver.check_preconditioner(preconditioner)
    score_fn = _as_pytree_fn(score_fn)
    n = self.solver.num_steps
    num_chunks = max(1, min(int(num_chunks), n))
    bounds = np.linspace(0, n, num_chunks + 1).round().astype(int)
    if self.pmap:
      rng = self._per_device(rng)
    if x_init is not None:
      if tuple(x_init.shape) != self.shape:
        raise ValueError(f'x_init has shape {tuple(x_init.shape)}; the sampler draws {self.shape}.')
      if self.pmap:
        x_init = x_init.reshape(rng.shape[:2] + self.shape[1:])
    elif self.init is None and self.solver.t_start != self.solver.sde.T:
      raise ValueError(f'{self.solver.name} starts at t = {self.solver.t_start:.6g} < T: pass an init q_T or x_init.')
    if cond is not None:
      for leaf in jax.tree_util.tree_leaves(cond):
        if leaf.shape[:1] != self.shape[:1]:
          raise ValueError(f'cond arrays need the batch ({self.shape[0]}) as their leading axis, got {leaf.shape}.')
      if self.pmap:
        cond = jax.tree_util.tree_map(lambda a: a.reshape(rng.shape[:2] + a.shape[1:]), cond)
    solver = self.solver
    carry = self._start(solver, rng, preconditioner, *self._start_args(x_init, cond))
    bar = None
    if progress:
      from tqdm.auto import tqdm
      bar = tqdm(total=n, desc=f'sampling ({self.solver.name})', unit='step', leave=False)
    try:
      for start, stop in zip(bounds[:-1], bounds[1:]):
        carry = self._run(solver, score_fn, preconditioner, carry, jnp.int32(start), int(stop - start))
        if bar is not None:
          jax.block_until_ready(carry)
          bar.update(int(stop - start))
        if callback is not None:
          callback(int(stop), self.solver.snapshot(carry[0]))
    finally:
      if bar is not None:
        bar.close()
    samples, nfe, aux = self._finish(solver, carry)
    self.solver.check_final(carry[0])
    if self.pmap:
      samples = samples.reshape(self.shape)
      aux = jax.tree_util.tree_map(lambda a: a.reshape(self.shape[:1] + a.shape[2:]), aux)
    bad = np.asarray(carry[1]).ravel()  # one entry per device
    if np.any(bad >= 0):
      first_bad = int(bad[bad >= 0].min())
      raise NonFiniteSampleError(first_bad, self.solver.step_times()[first_bad], n, self.solver.name)
    if not bool(jnp.all(jnp.isfinite(samples))):
      raise NonFiniteSampleError(n - 1, self.solver.step_times()[n - 1], n, self.solver.name)
    nfe = np.asarray(nfe).ravel()
    nfe = int(nfe[0]) if np.all(nfe == nfe[0]) else float(nfe.mean())
    return (samples, nfe, aux) if return_aux else (samples, nfe)

  # -- compile-time studies (benchmarks/compile.py, benchmarks/scaling.py)

  def initial_carry(self, rng: jax.Array, preconditioner: Optional[Preconditioner] = None):
    """The scan's carry before step 0 (x_T drawn), laid out for this sampler's devices."""
    preconditioner = Preconditioner() if preconditioner is None else preconditioner
    return self._start(self.solver, self._per_device(rng) if self.pmap else rng, preconditioner,
                       *self._start_args(None, None))

  def lower_scan(self, score_fn: ScoreFn, preconditioner: Optional[Preconditioner], carry,
                 length: Optional[int] = None) -> jax.stages.Lowered:
    """The jitted scan of `length` steps (default all) lowered for these arguments: `.compile()` it."""
    preconditioner = Preconditioner() if preconditioner is None else preconditioner
    return self._run.lower(self.solver, _as_pytree_fn(score_fn), preconditioner, carry, jnp.int32(0),
                           self.num_steps if length is None else int(length))

  def _per_device(self, keys: jax.Array) -> jax.Array:
    """Per-sample keys (B, 2) -> (devices, B / devices, 2) for the pmap path."""
    d = jax.local_device_count()
    if keys.ndim != 2 or keys.shape[0] != self.shape[0]:
      raise ValueError(f'the pmap sampler needs per-sample keys of shape ({self.shape[0]}, 2), got {keys.shape}.')
    if self.shape[0] % d:
      raise ValueError(f'batch size {self.shape[0]} is not divisible by the {d} local devices.')
    return keys.reshape((d, self.shape[0] // d) + keys.shape[1:])
