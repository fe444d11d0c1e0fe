"""The method registry: each sampling method registers itself, as score_sde's `register_predictor`.

A method declares, in its own file,
  - its name (`config.sampling.method`), its default number of steps and the `config.sampling`
    fields it reads (`register_method`; fields are declared once with their defaults by
    `declare_field`, and `configs/default_pds.py` adds every declared field to a config);
  - how its solver is built from those fields and a `Context` (the SDE, eps, where the run starts).
`resolve(config.sampling)` is the one place that reads `config.sampling.method`: it validates the
method's fields, translates the `init_aware` alias and returns a `Resolved` plan. A new solver is
one file with a `@register_method` builder plus one import line in `pds_jax/samplers/__init__.py`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Tuple

from pds_jax import sde_lib
from pds_jax.init_aware import inits
from pds_jax.samplers.driver import Solver

INIT_AWARE = 'init_aware'  # the alias of the earlier init-aware sampler (sampling.init_sampler …)
PRIOR = 'prior'
AUTO = 'auto'  # sampling.init's default: a fitted q_T for the ODE-like solvers on VE models (Solver.fitted_start), else the prior
INIT_AWARE_DEFAULT = 'spectral_gaussian'  # what the alias samples from when sampling.init is 'prior'


class Field(NamedTuple):
  """A `config.sampling` field: its default (None: an unset placeholder of `kind`) and its meaning."""
  default: Any
  kind: type
  doc: str


@dataclasses.dataclass(frozen=True)
class Method:
  """A registered sampling method."""
  name: str
  build: Callable[[Mapping[str, Any], 'Context'], Solver]
  fields: Tuple[str, ...]
  default_steps: Optional[int]
  pds: bool  # whether PDS's preconditioner is defined for the method (else masks are refused)
  prior_start: bool  # whether its default solver starts VE models from the prior under sampling.init = 'auto'


class Start(NamedTuple):
  """Where a run starts: the SDE time of x_T and its EDM noise level (T and σ(T), or t(σ_T) and σ_T)."""
  t: float
  sigma: float


@dataclasses.dataclass(frozen=True)
class Context:
  """What a builder gets besides the method's fields.

  sde, eps: score_sde's SDE (N = model.num_scales) and sampling eps; start: where x_T lives;
  num_steps: the method's steps (sampling.num_steps, else its default; None for methods without);
  sigma_min: the last noise level of σ-grid methods (None: σ(eps) of the SDE; the alias sets it);
  speed_up: PDS's k when the PC steps come from it (num_steps unset), else None.
  """
  sde: sde_lib.SDE
  eps: float
  start: Start
  num_steps: Optional[int]
  sigma_min: Optional[float] = None
  speed_up: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class Resolved:
  """`config.sampling` resolved once: the method, the values of its fields, the init kind, the alias."""
  method: Method
  fields: Dict[str, Any]
  num_steps: Optional[int]
  init: str
  sigma_min: Optional[float] = None
  alias: Optional[str] = None

  def context(self, sde: sde_lib.SDE, eps: float, start: Start) -> Context:
    speed_up = self.fields.get('speed_up') if self.num_steps is None else None
    steps = self.num_steps if self.num_steps is not None else self.method.default_steps
    return Context(sde, eps, start, steps, self.sigma_min, speed_up)

  def build(self, sde: sde_lib.SDE, eps: float, start: Start) -> Solver:
    """The method's solver for this SDE and start; raises ValueError naming the field at fault."""
    solver = self.method.build(self.fields, self.context(sde, eps, start))
    if solver.preconditioned_by_pds != self.method.pds:
      raise ValueError(f'sampling method {self.method.name!r} is registered with pds={self.method.pds} but its '
                       f'solver {type(solver).__name__} has preconditioned_by_pds={solver.preconditioned_by_pds}.')
    return solver

  def settings(self) -> Dict[str, Any]:
    """The resolved fields for run.json / report.json (speed_up only when it set the steps)."""
    fields = dict(self.fields)
    if 'speed_up' in fields and self.num_steps is not None:
      fields['speed_up'] = None
    return {'method': self.method.name, **fields, **({'alias': self.alias} if self.alias else {})}


_METHODS: Dict[str, Method] = {}
_FIELDS: Dict[str, Field] = {}


def declare_field(name: str, default: Any, kind: type, doc: str) -> str:
  """Declares `config.sampling.<name>` (once; a second declaration must agree) and returns the name."""
  field = Field(default, kind, doc)
  if name in _FIELDS and _FIELDS[name][:2] != field[:2]:
    raise ValueError(f'config.sampling.{name} is declared twice with different defaults: {_FIELDS[name]} / {field}.')
  _FIELDS.setdefault(name, field)
  return name


def register_method(name: str, *, fields: Tuple[str, ...] = (), default_steps: Optional[int] = None,
                    pds: bool = False, prior_start: bool = False):
  """Registers `build(fields, context) -> Solver` as `config.sampling.method = name`.

  fields: the `config.sampling` fields the method reads (declared with `declare_field`, or
  score_sde's own, which every config sets); default_steps: its steps when sampling.num_steps
  is unset (None: the method sets its steps otherwise); pds: whether its solvers define PDS
  (`Solver.preconditioned_by_pds`); prior_start: whether its default solver starts a VE model from the
  prior under sampling.init = 'auto' (`not Solver.fitted_start`; named in messages that recommend a method
  for a VE model without a fitted q_T).
  """

  def register(build: Callable) -> Callable:
    if name in _METHODS:
      raise ValueError(f'sampling method {name!r} is already registered.')
    _METHODS[name] = Method(name, build, tuple(fields), default_steps, pds, prior_start)
    return build

  return register


def get_method(name: str) -> Method:
  if name not in _METHODS:
    raise ValueError(f'config.sampling.method = {name!r}; choose one of {sorted(_METHODS) + [INIT_AWARE]}.')
  return _METHODS[name]


def method_names() -> Tuple[str, ...]:
  return tuple(sorted(_METHODS))


def pds_methods() -> Tuple[str, ...]:
  """The methods PDS's preconditioner applies to."""
  return tuple(name for name in sorted(_METHODS) if _METHODS[name].pds)


def prior_start_methods() -> Tuple[str, ...]:
  """The methods that sample VE models from the prior with their defaults (their noise washes out the
  trained denoiser's error at large σ; named in messages about a VE model without a fitted q_T)."""
  return tuple(name for name in sorted(_METHODS) if _METHODS[name].prior_start)


def declared_fields() -> Dict[str, Field]:
  """Every declared `config.sampling` field, for configs/default_pds.py."""
  return dict(_FIELDS)


def _field(sampling, name: str) -> Any:
  if name not in sampling:
    raise ValueError(f'config.sampling.{name} is missing (the method {sampling.method!r} reads it); '
                     'configs built on configs/default_pds.py have it.')
  return sampling[name]


def _init_kind(sampling, alias: bool) -> str:
  kind = sampling.get('init', PRIOR)
  if kind not in (AUTO, PRIOR) + inits.KINDS:
    raise ValueError(f'config.sampling.init = {kind!r}; choose one of {(AUTO, PRIOR) + inits.KINDS}.')
  return INIT_AWARE_DEFAULT if alias and kind in (AUTO, PRIOR) else kind


INIT_SAMPLERS = ('heun', 'euler', 'ancestral', 'pc')  # of the init_aware alias (sampling.init_sampler)


def resolve(sampling) -> Resolved:
  """`config.sampling` resolved and validated once (the only reader of `sampling.method`).

  The alias method 'init_aware' becomes `init_sampler` with init_nodes steps (Karras ρ = init_rho
  down to init_sigma_min for the σ-grid samplers) from sampling.init ('prior' reads as
  'spectral_gaussian').

  Raises:
    ValueError naming the field for an unknown method, a missing field or a bad step count.
  """
  name = str(sampling.method).lower()
  alias = None
  if name == INIT_AWARE:
    alias, name = INIT_AWARE, str(sampling.init_sampler).lower()
    if name not in INIT_SAMPLERS:
      raise ValueError(f'config.sampling.init_sampler = {name!r}; choose one of {INIT_SAMPLERS}.')
  method = get_method(name)
  fields = {field: _field(sampling, field) for field in method.fields}
  num_steps, sigma_min = fields.get('num_steps'), None
  if alias:
    num_steps, sigma_min = int(sampling.init_nodes), float(sampling.init_sigma_min)
    fields.update({k: v for k, v in (('num_steps', num_steps), ('rho', float(sampling.init_rho))) if k in fields})
  if num_steps is not None:
    if int(num_steps) != num_steps or num_steps < 1:
      raise ValueError(f'config.sampling.num_steps = {num_steps} must be an integer >= 1.')
    num_steps = int(num_steps)
  return Resolved(method, fields, num_steps, _init_kind(sampling, alias is not None), sigma_min, alias)
