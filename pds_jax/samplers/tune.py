"""Searched time steps (`--mode tune_schedule`): GITS's dynamic programming over a fine σ grid, then a
descent of the method's global error against the teacher.

Chen et al. 2024, "On the Trajectory Regularity of ODE-based Diffusion Sampling" (GITS), §4: the
probability-flow trajectories of one model are so alike that the best coarse time steps for a few
seeds are the best for all. In EDM's variables (`pds_jax.samplers.grid`: x̃ = x / m, dx̃/dσ = (x̃ - D) / σ):

  1. fine grid      σ^f_0 = σ_T > σ^f_1 > … > σ^f_F = σ_min, uniform in log σ (F = tune_fine_steps);
                    σ_T and σ_min are the run's own (sampling.init, eps), as for every fixed schedule.
  2. teacher        Heun (EDM Algorithm 1) on the fine grid refined ⌈tune_teacher_steps / F⌉ times
                    (again log-uniform) from S = tune_num_samples starts x̃_T of the run's own init;
                    kept: x̃^f_a (F + 1, S, H, W, C) at the fine nodes and D^f_a = D(x̃^f_a, σ^f_a).
  3. cost           c(a → b) = E_s ‖Φ(x̃^f_a; σ^f_a → σ^f_b) - x̃^f_b‖ / √d, a < b          (F + 1, F + 1)
                    for one step Φ of the method itself (its `grid_step`) from the teacher's point,
                    its first denoiser evaluation being the teacher's cached D^f_a (so a 1-NFE method's
                    cost matrix needs no network evaluation; Heun's second one is evaluated);
                    for DPM-Solver++(2M/3M) the step also reads the previous node's denoiser output,
                    so the cost is a function of the last three nodes (its own second-order step)
                      c(a → b → c) = E_s ‖Φ_2M(x̃^f_b, D^f_b, D^f_a; σ^f_a, σ^f_b → σ^f_c) - x̃^f_c‖ / √d
                    (3M: the same 2M cost — a third-order cost would need a DP over node quadruples);
                    other multistep methods (iPNDM, UniPC) use the first-order Euler step, as GITS
                    does for iPNDM (`tune_cost = 'euler'` forces that for every method).
  4. search         the path 0 = a_0 < a_1 < … < a_K = F with K = num_steps - 1 steps of least total
                    cost, by dynamic programming (numpy): V_m(b) = min_a V_{m-1}(a) + c(a → b), or over
                    pairs of last nodes W_m(b, c) = min_a W_{m-1}(a, b) + c(a → b → c) for 2M.
                    The denoising step σ_min → 0 (`noise_removal`) is the same on every path.
  5. refine         coordinate descent of the global error itself, e(a) = E_s ‖x̂_s(a) - x_s^teacher(0)‖ / √d
                    of the method run on the fine nodes a from the teacher's x_T (K · S network
                    evaluations per try): each interior node moves by ±1, ±2, ±4 fine steps while e
                    decreases, `tune_refine_rounds` sweeps, from the better of the DP path and the best
                    fixed schedule snapped to the fine grid (0 rounds: GITS's DP path as it is).
Summing local errors is the triangle-inequality bound on the global error; it ranks schedules only
when the flow neither expands nor contracts errors much (GITS's assumption). Measured here it does
not hold well enough at 5-10 NFE: in x̃ an error made at σ shrinks by up to sqrt(v + σ_min²) /
sqrt(v + σ²) along a data direction of variance v before the end, so the DP over-weights the large
steps at high σ. DPM-Solver++(2M) at 6 nodes, error against the teacher's samples on its seeds:
  shipped model (8 seeds)   karras 0.353, logsnr 0.172, GITS DP 0.484, DP + refinement 0.112
  16² exact Gaussian (VE)   karras 0.021, logsnr 0.0043, GITS DP 0.0052, DP + refinement 0.0022
(weighting the local error by σ^-p moved the DP path the wrong way for p = 0.5, 1 and did not help
for p = -0.5, -1). So the DP gives the start and the comparison, and the refinement of the
quantity that matters — the method's own global error on the user's model — makes the schedule;
held-out seeds and the project's metrics are in benchmarks/tune_schedule.py. There (held-out seeds,
tuned vs the best fixed schedule): exact 64² Gaussian KL ×0.32 (2M, 6 NFE), ×0.93 (2M, 10), ×0.57
(Heun, 9), ×1.29 (Heun, 5: every schedule diverges, KL > 20); shipped model (64 samples) SWD ×0.88
(2M, 6 NFE), ×0.87 (Heun, 5) but ×1.12 (2M, 10) and ×1.11 (Heun, 9): there the teacher error on the 8
tuning seeds fell ×0.56 / ×0.64 while the held-out SWD rose — the schedule fits the 8 seeds, or the
model's ODE solution is not what SWD rewards (more tune_num_samples is the first thing to try).
Cost: F·r + (F + 1) teacher evaluations per seed, plus (F + 1)F/2 per seed for 2-NFE methods' pair
costs (the 2M triple costs are arithmetic only), plus K · S per refinement try.

Why GITS and not Align-Your-Steps (Sabour et al. 2024): AYS minimises a KL upper bound by
stochastic optimisation of continuous nodes with hundreds of gradient evaluations through the
model, with an objective derived for the discretisation of an SDE and reused for ODE solvers;
GITS needs one short teacher run, its cost is the method's own error, and the DP is exact and
takes a second, so the whole search fits in minutes on 2 CPU cores for the shipped model.

A tuned file (`write` in run_lib's tune_schedule) holds `method`, `nfe`, `sigmas` (the positive
nodes from σ_T, then 0 with noise_removal) and the search's settings and errors;
`sampling.schedule = 'tuned'` with `sampling.schedule_path` reads it (`grid.read_tuned_sigmas`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from pds_jax import sde_lib
from pds_jax.preconditioning import Preconditioner
from pds_jax.samplers.dpm_solver import DPMSolverPP
from pds_jax.samplers.driver import Sampler, ScoreFn, sample_keys
from pds_jax.samplers.edm import EulerSolver, HeunSolver
from pds_jax.samplers.grid import (GridState, NOISE_REMOVAL, SCHEDULE, SCHEDULE_PATH, SigmaGridSolver, default_schedule, NUM_STEPS,
                                   denoiser_from_score, logsnr_sigmas)
from pds_jax.samplers.methods import Resolved, Start, declare_field

COSTS = ('own', 'euler')


@dataclasses.dataclass(frozen=True)
class TuneSettings:
  """`--mode tune_schedule`'s settings, `config.sampling.tune_<name>` (docs in `_TUNE_DOCS`)."""
  fine_steps: int = 60
  teacher_steps: int = 480
  num_samples: int = 8
  cost: str = 'own'
  refine_rounds: int = 3

  @classmethod
  def from_config(cls, sampling) -> 'TuneSettings':
    """Reads config.sampling.tune_* (a config that predates a field gets its default) and checks them."""
    values = {f.name: sampling.get('tune_' + f.name) for f in dataclasses.fields(cls)}
    settings = cls(**{name: value for name, value in values.items() if value is not None})
    if settings.fine_steps < 2 or settings.teacher_steps < 1 or settings.num_samples < 1:
      raise ValueError(f'config.sampling.tune_fine_steps ({settings.fine_steps}) must be >= 2, tune_teacher_steps '
                       f'({settings.teacher_steps}) and tune_num_samples ({settings.num_samples}) >= 1.')
    if settings.refine_rounds < 0:
      raise ValueError(f'config.sampling.tune_refine_rounds = {settings.refine_rounds}; it must be >= 0.')
    return settings


_TUNE_DOCS = {
    'fine_steps': 'intervals of the fine σ grid (log-uniform) the searched nodes are chosen from',
    'teacher_steps': 'Heun steps of the teacher trajectory (rounded up to a multiple of tune_fine_steps)',
    'num_samples': 'teacher trajectories (seeds)',
    'cost': "the step whose local error is the cost: 'own' (the method's; first order for iPNDM/UniPC, as "
            "GITS) or 'euler'",
    'refine_rounds': 'rounds of coordinate descent of the global error after the DP (0: GITS)',
}
for _field in dataclasses.fields(TuneSettings):
  declare_field('tune_' + _field.name, _field.default, type(_field.default),
                '--mode tune_schedule: ' + _TUNE_DOCS[_field.name])
del _field

FIXED_SCHEDULES = ('karras', 'logsnr', 'time_uniform')
TUNE_KEY_OFFSET = 1 << 30  # the teacher's seeds: sample indices 2^30 + s, never those of a sampling run


# ----------------------------------------------------------------------------- dynamic programming


def optimal_path(cost: np.ndarray, num_steps: int) -> Tuple[np.ndarray, float]:
  """The path 0 = a_0 < … < a_K = n - 1 of K = num_steps edges of least Σ_m cost[a_{m-1}, a_m].

  Args:
    cost: (n, n) edge costs; only a < b is read (use inf for forbidden edges).
    num_steps: K, 1 <= K <= n - 1.

  Returns:
    (the nodes (K + 1,) int, the least total cost). V_m(b) = min_{a<b} V_{m-1}(a) + cost[a, b].
  """
  cost = np.asarray(cost, np.float64)
  n = cost.shape[0]
  _check_steps(n, num_steps)
  forward = np.where(np.triu(np.ones((n, n), bool), 1), cost, np.inf)
  value = np.full(n, np.inf)
  value[0] = 0.
  back = []
  for _ in range(num_steps):
    total = value[:, None] + forward  # (a, b)
    back.append(np.argmin(total, axis=0))
    value = total[back[-1], np.arange(n)]
  path = [n - 1]
  for arg in reversed(back):
    path.append(int(arg[path[-1]]))
  return np.asarray(path[::-1]), float(value[n - 1])


def optimal_path_multistep(first: np.ndarray, cost3: np.ndarray, num_steps: int) -> Tuple[np.ndarray, float]:
  """The least-cost path when a step's cost depends on the node before it (a two-step method).

  Total cost of 0 = a_0 < … < a_K = n - 1: first[a_0, a_1] + Σ_{m≥2} cost3[a_{m-2}, a_{m-1}, a_m].
  DP over the last two nodes: W_1(0, b) = first[0, b]; W_m(b, c) = min_a W_{m-1}(a, b) + cost3[a, b, c].

  Args:
    first: (n, n) costs of the first step (no history); cost3: (n, n, n); only increasing indices read.
    num_steps: K, 1 <= K <= n - 1.
  """
  first, cost3 = np.asarray(first, np.float64), np.asarray(cost3, np.float64)
  n = first.shape[0]
  _check_steps(n, num_steps)
  a, b, c = np.meshgrid(*(np.arange(n),) * 3, indexing='ij')
  cost3 = np.where((a < b) & (b < c), cost3, np.inf)
  value = np.full((n, n), np.inf)  # W(a, b): the path's last two nodes
  value[0, 1:] = first[0, 1:]
  back = []
  for _ in range(num_steps - 1):
    total = value[:, :, None] + cost3  # (a, b, c)
    back.append(np.argmin(total, axis=0))  # (b, c) -> a
    value = np.take_along_axis(total, back[-1][None], axis=0)[0]
  last = int(np.argmin(value[:, n - 1]))
  path = [n - 1, last]
  for arg in reversed(back):
    path.append(int(arg[path[-1], path[-2]]))
  return np.asarray(path[::-1]), float(value[last, n - 1])


def path_cost(path: Sequence[int], cost: np.ndarray, cost3: Optional[np.ndarray] = None) -> float:
  """The total cost of a path under `optimal_path` (cost3 None) or `optimal_path_multistep` (cost = first)."""
  path = list(path)
  total = float(cost[path[0], path[1]])
  for m in range(2, len(path)):
    total += float(cost3[path[m - 2], path[m - 1], path[m]] if cost3 is not None else cost[path[m - 1], path[m]])
  return total


def _check_steps(n: int, num_steps: int) -> None:
  if not 1 <= num_steps <= n - 1:
    raise ValueError(f'a path of {num_steps} steps over a fine grid of {n} nodes: need 1 <= steps <= {n - 1}.')


# ----------------------------------------------------------------------------- teacher


class Teacher(NamedTuple):
  """The teacher trajectory at the fine nodes.

  sigmas (F + 1,) float64; x (F + 1, S, H, W, C) x̃ at the nodes (x[0] = x̃_T); denoised (F + 1, S, H, W, C)
  D(x̃_a, σ_a); final (S, H, W, C) the sample after the run's last step (denoising step or x̃_F).
  """
  sigmas: np.ndarray
  x: jax.Array
  denoised: jax.Array
  final: jax.Array


def fine_grid(sigma_max: float, sigma_min: float, fine_steps: int) -> np.ndarray:
  """(fine_steps + 1,) nodes uniform in log σ from σ_max to σ_min (float64)."""
  return logsnr_sigmas(sigma_max, sigma_min, fine_steps + 1)


def teacher_trajectory(score_fn: ScoreFn, sde: sde_lib.SDE, x_start: jax.Array, fine_sigmas: np.ndarray,
                       substeps: int, noise_removal: bool = True, progress: bool = False) -> Teacher:
  """Heun (the project's `HeunSolver` steps) through every fine node, `substeps` log-uniform steps per interval.

  Args:
    x_start: x̃_T (S, H, W, C) at fine_sigmas[0], in EDM's variable (x / m).
  """
  fine = len(fine_sigmas) - 1
  teacher = HeunSolver(sde, logsnr_sigmas(fine_sigmas[0], fine_sigmas[-1], fine * substeps + 1))
  denoise = denoiser_from_score(score_fn, sde)

  @jax.jit
  def interval(solver, denoise, x, start):
    def body(x, i):
      return solver.grid_step(denoise, Preconditioner(), GridState(x=x), i, solver.sigmas[i],
                              solver.sigmas[i + 1]).x, None
    x, _ = jax.lax.scan(body, x, start + jnp.arange(substeps))
    return x

  evaluate = jax.jit(lambda denoise, x, sigma: denoise(x, sigma))
  xs, ds = [x_start], []
  bar = _bar(progress, fine, 'teacher (Heun)', 'interval')
  for a in range(fine):
    ds.append(evaluate(denoise, xs[-1], jnp.float32(fine_sigmas[a])))
    xs.append(interval(teacher, denoise, xs[-1], jnp.int32(a * substeps)))
    jax.block_until_ready(xs[-1])
    bar.update(1)
  bar.close()
  ds.append(evaluate(denoise, xs[-1], jnp.float32(fine_sigmas[-1])))
  final = ds[-1] if noise_removal else xs[-1]
  return Teacher(np.asarray(fine_sigmas, np.float64), jnp.stack(xs), jnp.stack(ds), final)


# ----------------------------------------------------------------------------- costs


def _cached_denoiser(denoise: Callable, cached: Sequence[jax.Array]) -> Callable:
  """D whose first len(cached) calls return the teacher's values (in order), later calls evaluate it."""
  queue = list(cached)

  def fn(x, sigma):
    return queue.pop(0) if queue else denoise(x, sigma)

  return fn


def _rms(a: jax.Array, b: jax.Array) -> jax.Array:
  """E_s ‖a_s - b_s‖ / √d over the leading sample axis (S, ...)."""
  return jnp.mean(jnp.sqrt(jnp.mean(jnp.square(a - b).reshape(a.shape[0], -1), axis=1)))


def _with_nodes(template: SigmaGridSolver, sigmas: jax.Array) -> SigmaGridSolver:
  """The template solver on the (traced) grid `sigmas` (its grid leaves: σ, and λ = -log σ of DPM-Solver++)."""
  solver = eqx.tree_at(lambda s: s.sigmas, template, sigmas)
  if isinstance(template, DPMSolverPP):
    solver = eqx.tree_at(lambda s: s.lambdas, solver, -jnp.log(sigmas))
  return solver


def _edge_error(template, denoise, teacher_x, teacher_d, a, b, sigmas):
  """c(a → b): one step of `template` (2-node grid) from the teacher's x̃_a with its cached D_a."""
  nodes = jnp.stack([sigmas[a], sigmas[b]])
  solver = _with_nodes(template, nodes)
  x = teacher_x[a]
  state = GridState(x=x, history=template.init_history(x))
  out = solver.grid_step(_cached_denoiser(denoise, [teacher_d[a]]), Preconditioner(), state, 0, nodes[0], nodes[1])
  return _rms(out.x, teacher_x[b])


def _triple_error(template, denoise, teacher_x, teacher_d, a, b, c, sigmas):
  """c(a → b → c): the method's step 1 on the grid (σ_a, σ_b, σ_c) from x̃_b, history D_a, cached D_b."""
  nodes = jnp.stack([sigmas[a], sigmas[b], sigmas[c]])
  solver = _with_nodes(template, nodes)
  x = teacher_x[b]
  history = template.init_history(x)
  history = (teacher_d[a],) + history[1:]
  state = GridState(x=x, history=history)
  out = solver.grid_step(_cached_denoiser(denoise, [teacher_d[b]]), Preconditioner(), state, 1, nodes[1], nodes[2])
  return _rms(out.x, teacher_x[c])


def _evaluate(fn, score_fn, teacher: Teacher, index: np.ndarray, chunk: int, progress: bool, what: str) -> np.ndarray:
  """fn over the rows of `index` (P, k), `chunk` rows per jitted vmapped call; returns (P,) float64."""
  sigmas = jnp.asarray(teacher.sigmas, jnp.float32)
  batched = jax.jit(jax.vmap(fn, in_axes=(None, None, None) + (0,) * index.shape[1] + (None,)))
  out = np.empty(len(index))
  bar = _bar(progress, len(index), what, 'step')
  for start in range(0, len(index), chunk):
    rows = index[start:start + chunk]
    pad = chunk - len(rows)  # one compiled shape: pad the last chunk with its first row
    padded = np.concatenate([rows, np.repeat(rows[:1], pad, 0)]) if pad else rows
    values = batched(score_fn, teacher.x, teacher.denoised, *(jnp.asarray(col) for col in padded.T), sigmas)
    out[start:start + len(rows)] = np.asarray(values)[:len(rows)]
    bar.update(len(rows))
  bar.close()
  return out


def edge_costs(template: SigmaGridSolver, sde: sde_lib.SDE, score_fn: ScoreFn, teacher: Teacher, chunk: int = 64,
               progress: bool = False) -> np.ndarray:
  """(F + 1, F + 1) c(a → b) for a < b (inf elsewhere), one batched jitted step per chunk of edges."""
  n = len(teacher.sigmas)
  index = np.argwhere(np.triu(np.ones((n, n), bool), 1))

  def fn(score_fn, x, d, a, b, sigmas):
    return _edge_error(template, denoiser_from_score(score_fn, sde), x, d, a, b, sigmas)

  cost = np.full((n, n), np.inf)
  cost[index[:, 0], index[:, 1]] = _evaluate(fn, score_fn, teacher, index, chunk, progress, 'step costs')
  return cost


def triple_costs(template: SigmaGridSolver, sde: sde_lib.SDE, score_fn: ScoreFn, teacher: Teacher,
                 chunk: int = 256, progress: bool = False) -> np.ndarray:
  """(F + 1,)³ c(a → b → c) for a < b < c (inf elsewhere) of a two-step (multistep order ≥ 2) method."""
  n = len(teacher.sigmas)
  a, b, c = np.meshgrid(*(np.arange(n),) * 3, indexing='ij')
  index = np.stack([a, b, c], -1)[(a < b) & (b < c)]

  def fn(score_fn, x, d, a, b, c, sigmas):
    return _triple_error(template, denoiser_from_score(score_fn, sde), x, d, a, b, c, sigmas)

  cost = np.full((n, n, n), np.inf)
  cost[index[:, 0], index[:, 1], index[:, 2]] = _evaluate(fn, score_fn, teacher, index, chunk, progress,
                                                          'multistep costs')
  return cost


def _bar(progress: bool, total: int, desc: str, unit: str):
  from tqdm.auto import tqdm
  return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=not progress)


# ----------------------------------------------------------------------------- the search


def _with_fields(resolved: Resolved, **fields) -> Resolved:
  return dataclasses.replace(resolved, fields={**resolved.fields, **fields},
                             num_steps=fields.get(NUM_STEPS, resolved.num_steps))


def cost_kind(solver: SigmaGridSolver, cost: str) -> str:
  """How a step's cost is measured for this solver: 'one_step', 'two_step' (DPM-Solver++ kM, k ≥ 2) or 'euler'."""
  if cost not in COSTS:
    raise ValueError(f'config.sampling.tune_cost = {cost!r}; choose one of {COSTS}.')
  if cost == 'euler':
    return 'euler'
  history = solver.init_history(jnp.zeros((1, 1)))
  if not history:
    return 'one_step'
  return 'two_step' if isinstance(solver, DPMSolverPP) else 'euler'


def check_tunable(solver) -> None:
  """Refuses what a schedule search cannot serve: no σ grid, or noise drawn after x_T."""
  if not isinstance(solver, SigmaGridSolver):
    raise ValueError(f"--mode tune_schedule: sampling.method = '{solver.name}' has no σ grid to tune; choose a "
                     "deterministic σ-grid method (euler, heun, dpm_solver, ipndm, unipc).")
  if solver.stochastic:
    raise ValueError(f"--mode tune_schedule: sampling.method = '{solver.name}' draws noise at every step, so "
                     'its trajectories are not the regular ODE paths the search relies on (GITS); tune a '
                     'deterministic method (euler, heun, dpm_solver, ipndm, unipc).')


def search(sampling, sampler: Sampler, score_fn: ScoreFn, eps: float, seed: int,
           progress: bool = False) -> Dict[str, Any]:
  """The σ nodes of config.sampling's method at its num_steps nodes: GITS's DP, then the refinement (module docstring).

  Args:
    sampling: config.sampling (the method, its fields, num_steps and the tune_* fields).
    sampler: the run's `Sampler` of that method (`sampling.get_sampling_fn(...).sampler`): its solver
      gives the SDE, σ_T, t_T and σ_min, its init the q_T of x_T (None: the SDE's prior).
    score_fn: s(x, t) of the model; eps: the run's sampling eps; seed: the run's seed (the teacher's
      x_T use the per-sample keys of indices 2^30 … 2^30 + S - 1, never those of a sampling run).

  Returns:
    the schedule file's content: method, nfe, num_steps, sigmas (positive nodes from σ_T, then 0 with
    noise_removal), the search's settings and costs, and `global_error`: E_s ‖x̂_s - x_s^teacher‖ / √d of
    the tuned and of every fixed schedule on the teacher's seeds (the teacher's own sample at σ = 0).

  Raises:
    ValueError for a method without a deterministic σ grid, or num_steps outside the fine grid.
  """
  from pds_jax.samplers import methods
  started = time.perf_counter()
  score_fn = score_fn if isinstance(score_fn, Partial) else Partial(score_fn)  # a jit argument (model weights)
  resolved = methods.resolve(sampling)
  solver = sampler.solver
  check_tunable(solver)
  settings = TuneSettings.from_config(sampling)
  fine_steps, teacher_steps, num_samples = settings.fine_steps, settings.teacher_steps, settings.num_samples
  sde, sigmas = solver.sde, np.asarray(solver.sigmas, np.float64)
  noise_removal = bool(sigmas[-1] == 0)
  positive = sigmas[sigmas > 0]
  nodes = len(positive)
  if nodes - 1 > fine_steps:
    raise ValueError(f'config.sampling.num_steps = {nodes} nodes need {nodes - 1} steps between sigma_T and '
                     f'sigma_min, more than the fine grid\'s {fine_steps} intervals: raise '
                     f'config.sampling.tune_fine_steps to >= {3 * (nodes - 1)} (the search needs room to choose).')
  start = Start(solver.t_start, float(positive[0]))
  kind = cost_kind(solver, settings.cost)

  keys = sample_keys(seed, TUNE_KEY_OFFSET, num_samples)
  shape = (num_samples,) + tuple(sampler.shape[1:])
  x_t = Sampler(solver, shape, init=sampler.init).initial_carry(keys)[0].x  # x̃_T = x_T / m(t_T)
  fine = fine_grid(positive[0], positive[-1], fine_steps)
  substeps = -(-teacher_steps // fine_steps)
  teacher = teacher_trajectory(score_fn, sde, x_t, fine, substeps, noise_removal, progress)

  template_fields = {NUM_STEPS: 2, SCHEDULE: 'logsnr', NOISE_REMOVAL: False}
  if 'lower_order_final' in resolved.fields:
    template_fields['lower_order_final'] = False
  build = lambda **f: _with_fields(resolved, **f).build(sde, eps, start)
  if kind == 'euler':
    template = EulerSolver(sde, positive[[0, -1]])
  else:
    template = build(**template_fields)
  first = edge_costs(template, sde, score_fn, teacher, chunk=_chunk(template, num_samples), progress=progress)
  if kind == 'two_step':
    cost3 = triple_costs(build(**{**template_fields, NUM_STEPS: 3}), sde, score_fn, teacher, progress=progress)
    path, total = optimal_path_multistep(first, cost3, nodes - 1)
  else:
    path, total = optimal_path(first, nodes - 1)
  rounds = settings.refine_rounds
  x_init = sde.edm_scale(jnp.float32(solver.t_start)) * x_t
  run = jax.jit(_run_solver)
  spec = {'method': resolved.method.name, 'num_steps': nodes, 'nfe': int(solver.static_nfe),
          'sde': type(sde).__name__, 'sigma_max': float(positive[0]), 'sigma_min': float(positive[-1]),
          'settings': _jsonable(resolved.settings()), 'cost': kind, 'fine_steps': fine_steps,
          'teacher': {'solver': 'heun', 'steps': fine_steps * substeps, 'num_samples': num_samples, 'seed': seed,
                      'sample_indices_from': TUNE_KEY_OFFSET, 'grid': 'logsnr'},
          'dp_indices': [int(a) for a in path], 'search_cost': total, 'refine_rounds': rounds}

  with tempfile.TemporaryDirectory() as tmp:
    def schedule_solver(schedule: str, indices=None) -> SigmaGridSolver:
      file = os.path.join(tmp, 'schedule.json')
      if indices is not None:
        with open(file, 'w') as f:
          json.dump({**spec, 'sigmas': _nodes(fine, indices, positive[0], noise_removal)}, f)
      return build(**{SCHEDULE: schedule, SCHEDULE_PATH: file})

    def global_error(run_solver: SigmaGridSolver) -> float:
      samples = run(run_solver, score_fn, x_init)
      return float(_rms(samples / _output_scale(run_solver), teacher.final))

    errors = {name: global_error(schedule_solver(name)) for name in FIXED_SCHEDULES}
    errors['dp'] = global_error(schedule_solver('tuned', path))
    # The descent starts from the better of the DP path and the best fixed schedule on the fine grid.
    best = min(FIXED_SCHEDULES, key=errors.get)
    snapped = snap_to_grid(fine, np.asarray(schedule_solver(best).sigmas)[:nodes])
    start_path, start_error = (path, errors['dp'])
    snapped_error = global_error(schedule_solver('tuned', snapped))
    if snapped_error < start_error:
      start_path, start_error = snapped, snapped_error
    path, error, evaluations = coordinate_descent(
        start_path, start_error, lambda indices: global_error(schedule_solver('tuned', indices)), rounds, progress)
    errors['tuned'] = error
  spec.update({'sigmas': _nodes(fine, path, positive[0], noise_removal), 'fine_indices': [int(a) for a in path],
               'refine_start': 'dp' if start_path is not snapped else f'{best} (on the fine grid)',
               'refine_evaluations': evaluations})
  spec['global_error'] = errors
  spec['default_schedule'] = resolved.fields.get(SCHEDULE) or default_schedule(resolved.method.name)
  spec['wall_seconds'] = time.perf_counter() - started
  return spec


def _run_solver(solver: SigmaGridSolver, score_fn: ScoreFn, x: jax.Array) -> jax.Array:
  """The solver's samples from x_T (S, H, W, C) (no driver: one compiled scan reused for every grid)."""
  state = solver.init(None, x)
  state, _ = jax.lax.scan(lambda state, i: (solver.step(score_fn, Preconditioner(), state, i), None), state,
                          jnp.arange(solver.num_steps))
  return solver.output(state)


def _nodes(fine: np.ndarray, indices, sigma_start: float, noise_removal: bool) -> List[float]:
  """The schedule file's sigmas: the fine nodes of `indices` (σ_0 = σ_T exactly), then 0 with noise_removal."""
  sigmas = [float(fine[a]) for a in indices]
  sigmas[0] = float(sigma_start)
  return sigmas + ([0.] if noise_removal else [])


def snap_to_grid(fine: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
  """The fine-grid indices nearest (in log σ) to decreasing `sigmas`, strictly increasing, ends 0 and F."""
  n = len(fine) - 1
  nearest = np.abs(np.log(fine)[None, :] - np.log(sigmas)[:, None]).argmin(1)
  nearest[0], nearest[-1] = 0, n
  for m in range(1, len(nearest) - 1):  # keep them distinct and inside
    nearest[m] = min(max(nearest[m], nearest[m - 1] + 1), n - (len(nearest) - 1 - m))
  return nearest


def coordinate_descent(path: np.ndarray, error: float, objective: Callable[[np.ndarray], float], rounds: int,
                       progress: bool = False) -> Tuple[np.ndarray, float, int]:
  """Moves one interior node at a time by ±1, ±2, ±4 fine steps while objective(path) decreases.

  Returns (the best path, its objective, the number of evaluations). `rounds` sweeps over the nodes
  (fewer when a sweep changes nothing).
  """
  path, evaluations = np.array(path), 0
  bar = _bar(progress, rounds * (len(path) - 2), 'refining nodes', 'node')
  for _ in range(rounds):
    moved = False
    for m in range(1, len(path) - 1):
      for offset in (1, -1, 2, -2, 4, -4):
        candidate = path.copy()
        candidate[m] += offset
        if not path[m - 1] < candidate[m] < path[m + 1]:
          continue
        value = objective(candidate)
        evaluations += 1
        if value < error:
          path, error, moved = candidate, value, True
      bar.update(1)
    if not moved:
      break
  bar.close()
  return path, error, evaluations


def summary(spec: Dict[str, Any], path: str) -> str:
  """What --mode tune_schedule prints: the file, the nodes, and the tuned vs the fixed schedules' errors."""
  errors = spec['global_error']
  best = min(FIXED_SCHEDULES, key=errors.get)
  lines = [f"wrote {path}: {spec['method']} at {spec['num_steps']} nodes ({spec['nfe']} NFE), searched in "
           f"{spec['wall_seconds']:.0f} s ({spec['cost']} cost, {spec['fine_steps']} fine steps, "
           f"{spec['teacher']['num_samples']} teacher trajectories of {spec['teacher']['steps']} Heun steps)",
           '  sigmas ' + ' '.join(f'{s:.4g}' for s in spec['sigmas']),
           f"  DP (GITS) search cost (sum of local errors) {spec['search_cost']:.4g}; refined from "
           f"{spec['refine_start']} in {spec['refine_evaluations']} evaluations",
           '  error vs the teacher\'s samples (RMS per pixel, teacher seeds): ' + ', '.join(
               f'{k} {v:.4g}' for k, v in errors.items()),
           f"  tuned / best fixed ({best}) = {errors['tuned'] / errors[best]:.3f}; default schedule "
           f"{spec['default_schedule']}",
           f"  use it: --config.sampling.schedule=tuned --config.sampling.schedule_path={path} "
           f"--config.sampling.num_steps={spec['num_steps']}"]
  return '\n'.join(lines)


def _output_scale(solver: SigmaGridSolver) -> jax.Array:
  """m(t(σ_last)) of a solver's output (1 after the denoising step): its samples / m are x̃."""
  last = solver.sigma_last
  return jnp.float32(1.) if last == 0 else solver.sde.edm_scale(jnp.float32(solver.sde.edm_time(np.float64(last))))


def _chunk(template: SigmaGridSolver, num_samples: int) -> int:
  """Edges per jitted call: ~64 images per network evaluation when a step evaluates beyond the cache."""
  return max(1, 64 // num_samples) if template.evaluations(0) > 1 else 256


def _jsonable(settings: Dict) -> Dict:
  return {k: (v if isinstance(v, (str, int, float, bool, type(None))) else str(v)) for k, v in settings.items()}
