"""Checkpoint I/O: score_sde's legacy flax files and score_sde_pytorch `.pth` files (docs/method.md §5).

A legacy file `checkpoints/checkpoint_<N>` is a flax msgpack map of score_sde's `State`:
  step (0-d int32), optimizer {target: params, state {step, param_states: params-shaped tree of
  {grad_ema, grad_sq_ema}}}, lr (0-d f32), model_state, ema_rate (0-d f32), params_ema, rng ((2,) u32).
It was written by flax 0.3.1, whose GroupNorm `scale`/`bias` have shape (1, 1, 1, C); today's
`nn.GroupNorm` wants (C,). The file is read as a raw state dict (`flax.optim` no longer exists),
those GroupNorm leaves, and only those, are reshaped, and the result is checked against the
parameter shapes of the model that `config` builds. `save_checkpoint` writes the same layout back.
A sampling-only file holds just `params_ema` (and optionally `step`, `model_state`).
"""
from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import serialization, traverse_util

from pds_jax.io_utils import atomic_write
from pds_jax.models import utils as mutils

Params = Dict[str, Any]
Path = Tuple[str, ...]
Shape = Tuple[int, ...]

_CHECKPOINT_NAME = re.compile(r'checkpoint_(\d+)')
_GROUP_NORM_MODULE = re.compile(r'GroupNorm_\d+')
_MOMENTS = ('grad_ema', 'grad_sq_ema')


class CheckpointError(ValueError):
  """A checkpoint that cannot be used; the message names the file or folder at fault."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
  """No checkpoint file at, or in, the given path."""


class CheckpointMismatchError(CheckpointError):
  """The stored parameters do not fit the model of the config; the message lists every path."""


@flax.struct.dataclass
class AdamState:
  """flax.optim.Adam's state: `grad_ema` / `grad_sq_ema` are params-shaped first / second moments
  (optax's `mu` / `nu`) and `step` the 0-d int32 count used for bias correction."""
  step: jax.Array
  grad_ema: Params
  grad_sq_ema: Params


@flax.struct.dataclass
class State:
  """score_sde's training state with the optimizer unpacked (the `flax.optim.Optimizer` is gone).

  `params` is the optimizer target; sampling uses `params_ema`. Fields a sampling-only checkpoint
  lacks (`params`, `opt_state`, `lr`, `ema_rate`, `rng`) are None; `opt_state` is also None when a
  legacy file has no optimizer state.
  """
  step: jax.Array
  params: Optional[Params]
  params_ema: Params
  model_state: Params
  opt_state: Optional[AdamState]
  lr: Optional[jax.Array]
  ema_rate: Optional[jax.Array]
  rng: Optional[jax.Array]


# --- parameter trees --------------------------------------------------------------------------

def _flatten(tree: Mapping) -> Dict[Path, Any]:
  return traverse_util.flatten_dict(flax.core.unfreeze(tree)) if tree else {}


def _unflatten(flat: Mapping[Path, Any]) -> Params:
  return traverse_util.unflatten_dict(dict(flat)) if flat else {}


def _is_group_norm_leaf(path: Path) -> bool:
  return len(path) >= 2 and path[-1] in ('scale', 'bias') and bool(
    _GROUP_NORM_MODULE.fullmatch(path[-2]))


def _from_legacy_layout(tree: Mapping) -> Params:
  """flax 0.3.1 GroupNorm scale/bias (1, 1, 1, C) -> (C,); every other leaf as stored."""
  def convert(path, x):
    x = np.asarray(x)
    legacy = _is_group_norm_leaf(path) and x.ndim == 4 and x.shape[:3] == (1, 1, 1)
    return x.reshape(x.shape[-1]) if legacy else x
  return _unflatten({p: convert(p, x) for p, x in _flatten(tree).items()})


def _to_legacy_layout(tree: Mapping) -> Params:
  """GroupNorm scale/bias (C,) -> (1, 1, 1, C), every leaf as a numpy array (plain nested dicts)."""
  def convert(path, x):
    x = np.asarray(jax.device_get(x))
    return x.reshape(1, 1, 1, -1) if _is_group_norm_leaf(path) and x.ndim == 1 else x
  return _unflatten({p: convert(p, x) for p, x in _flatten(tree).items()})


def _shapes(tree: Mapping) -> Dict[Path, Shape]:
  return {p: tuple(np.shape(x)) for p, x in _flatten(tree).items()}


def _fmt(path: Path) -> str:
  return '/'.join(path)


# --- the model's expected parameters ------------------------------------------------------------

def _model_template(config: ml_collections.ConfigDict
                    ) -> Tuple[Dict[Path, Shape], Dict[Path, Shape], List[str]]:
  """Shapes of (model_state, params) of the model that `config` builds, computed with
  `jax.eval_shape` (no weights), and the names of its top-level submodules in call order."""
  called = []

  def record(next_fun, args, kwargs, context):
    path = context.module.path
    if context.method_name == '__call__' and len(path) == 1 and path[0] not in called:
      called.append(path[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    model_state, params = jax.eval_shape(lambda rng: mutils.init_model(rng, config)[1:],
                                         jax.random.PRNGKey(0))
  return _shapes(model_state), _shapes(params), called


def _problems(stored: Mapping[Path, Shape], expected: Mapping[Path, Shape]) -> List[str]:
  """One line per missing, unexpected or mis-shaped path."""
  lines = []
  for path in sorted(expected.keys() | stored.keys()):
    if path not in stored:
      lines.append(f'missing     {_fmt(path)}: expected {expected[path]}')
    elif path not in expected:
      lines.append(f'unexpected  {_fmt(path)}: stored {stored[path]}')
    elif stored[path] != expected[path]:
      lines.append(f'mis-shaped  {_fmt(path)}: expected {expected[path]}, stored {stored[path]}')
  return lines


def _check_fits_model(trees: Sequence[Tuple[str, Mapping[Path, Shape], Mapping[Path, Shape]]],
                      source: str, config: ml_collections.ConfigDict) -> None:
  """Raises one CheckpointMismatchError listing the problems of every (name, stored, expected)
  tree; a tree whose problems repeat those of an earlier tree is summarised in one line."""
  sections, seen = [], []
  for name, stored, expected in trees:
    lines = _problems(stored, expected)
    if not lines:
      continue
    same = next((other for other, other_lines in seen if other_lines == lines), None)
    sections.append(f'{name}: the same {len(lines)} problems as {same}' if same else
                    '\n'.join([f'{name}:'] + [f'  {line}' for line in lines]))
    seen.append((name, lines))
  if sections:
    raise CheckpointMismatchError(
      f'{source}: the checkpoint does not fit the model of this config (model.name='
      f'{config.model.name!r}, data.image_size={config.data.image_size}); was it written for '
      'another config? Shapes are in the modern layout (GroupNorm (C,)).\n' + '\n'.join(sections))


# --- legacy files -----------------------------------------------------------------------------

def list_checkpoints(folder: str) -> List[Tuple[int, str]]:
  """(N, path) of the files named checkpoint_<N> in `folder`, sorted by N ([] for a missing folder)."""
  found = []
  for name in (os.listdir(folder) if os.path.isdir(folder) else ()):
    match = _CHECKPOINT_NAME.fullmatch(name)
    if match and os.path.isfile(os.path.join(folder, name)):
      found.append((int(match.group(1)), os.path.join(folder, name)))
  return sorted(found)


def latest_checkpoint(path: str) -> str:
  """The checkpoint file `path` names: the file itself, or the checkpoint_<N> with the largest N
  in the folder `path` or, for a workdir, in `path`/checkpoints."""
  if os.path.isfile(path):
    return path
  if not os.path.isdir(path):
    raise CheckpointNotFoundError(f'{path}: no such checkpoint file or folder.')
  for folder in (path, os.path.join(path, 'checkpoints')):
    found = list_checkpoints(folder)
    if found:
      return found[-1][1]
  contents = sorted(os.listdir(path))
  held = f'it holds {", ".join(contents[:10])}{", ..." if len(contents) > 10 else ""}' \
    if contents else 'it is empty'
  raise CheckpointNotFoundError(
    f'{path}: no checkpoint_<N> file in this folder or in its checkpoints/ subfolder ({held}).')


def _read_state_dict(file: str) -> Dict[str, Any]:
  """The raw state dict of a legacy (or sampling-only) msgpack checkpoint."""
  with open(file, 'rb') as f:
    data = f.read()
  try:
    raw = serialization.msgpack_restore(data)
  except Exception as e:  # msgpack and numpy raise many types on truncated or foreign bytes
    raise CheckpointError(f'{file}: not a flax msgpack checkpoint, or a truncated one '
                          f'({len(data)} bytes; {type(e).__name__}: {e}).') from e
  if not isinstance(raw, dict) or not isinstance(raw.get('params_ema'), dict):
    found = f'a map with keys {sorted(map(str, raw))}' if isinstance(raw, dict) else \
      f'a {type(raw).__name__}'
    raise CheckpointError(f'{file}: not a score_sde checkpoint: expected a map with a '
                          f'"params_ema" tree (and "optimizer", "step", ...), found {found}.')
  optimizer = raw.get('optimizer')
  if optimizer is not None and not (isinstance(optimizer, dict) and 'target' in optimizer):
    raise CheckpointError(f'{file}: "optimizer" must be a map with "target" (the params) and '
                          f'"state", found {type(optimizer).__name__}.')
  return raw


def _split_param_states(param_states: Mapping, file: str) -> Tuple[Params, Params]:
  """flax.optim's params-shaped tree of {grad_ema, grad_sq_ema} -> (grad_ema, grad_sq_ema) trees."""
  flat = _flatten(param_states)
  other = sorted({path[-1] for path in flat} - set(_MOMENTS))
  if other:
    raise CheckpointError(f'{file}: optimizer.state.param_states holds {other}; only Adam '
                          f'states ({", ".join(_MOMENTS)}) are supported.')
  return tuple(_from_legacy_layout(_unflatten({p[:-1]: x for p, x in flat.items() if p[-1] == m}))
               for m in _MOMENTS)


def _optional(raw: Mapping, key: str, dtype) -> Optional[jax.Array]:
  return None if raw.get(key) is None else jnp.asarray(raw[key], dtype)


def _state_from_state_dict(raw: Mapping[str, Any], file: str) -> State:
  """A State from a raw legacy or sampling-only state dict (no shape checks)."""
  params, opt_state = None, None
  optimizer = raw.get('optimizer')
  if optimizer is not None:
    params = _from_legacy_layout(optimizer['target'])
    opt = optimizer.get('state')
    if opt:
      grad_ema, grad_sq_ema = _split_param_states(opt.get('param_states', {}), file)
      opt_state = AdamState(step=jnp.asarray(opt.get('step', 0), jnp.int32),
                            grad_ema=grad_ema, grad_sq_ema=grad_sq_ema)
  to_device = lambda tree: jax.tree.map(jnp.asarray, tree)
  return State(step=jnp.asarray(raw.get('step', 0), jnp.int32),
               params=to_device(params),
               params_ema=to_device(_from_legacy_layout(raw['params_ema'])),
               model_state=to_device(_from_legacy_layout(raw.get('model_state') or {})),
               opt_state=to_device(opt_state),
               lr=_optional(raw, 'lr', jnp.float32),
               ema_rate=_optional(raw, 'ema_rate', jnp.float32),
               rng=_optional(raw, 'rng', jnp.uint32))


def _check_state(state: State, source: str, config: ml_collections.ConfigDict) -> None:
  """Checks every tree of `state` against the model of `config` (one error listing all paths)."""
  model_state, params, _ = _model_template(config)
  trees = [('params_ema', _shapes(state.params_ema), params)]
  if state.params is not None:
    trees.append(('params (optimizer.target)', _shapes(state.params), params))
  if state.opt_state is not None:
    trees += [(f'optimizer {m}', _shapes(getattr(state.opt_state, m)), params) for m in _MOMENTS]
  trees.append(('model_state', _shapes(state.model_state), model_state))
  _check_fits_model(trees, source, config)


def restore_checkpoint(path: str, config: ml_collections.ConfigDict) -> State:
  """Loads a legacy score_sde checkpoint (or a sampling-only one) for the model of `config`.

  Args:
    path: a checkpoint file, a workdir, or its checkpoints/ folder (then the checkpoint_<N> with
      the largest N).
    config: the score_sde config the checkpoint was trained with.
  Returns:
    The State, GroupNorm parameters reshaped to (C,).
  Raises:
    CheckpointNotFoundError: no checkpoint at or in `path`.
    CheckpointError: a truncated or foreign file (a ValueError).
    CheckpointMismatchError: parameters that do not fit the model; lists every bad path.
  """
  file = latest_checkpoint(path)
  state = _state_from_state_dict(_read_state_dict(file), file)
  _check_state(state, file, config)
  return state


def state_to_legacy_dict(state: State) -> Dict[str, Any]:
  """score_sde's state dict of `state` in field order, GroupNorm leaves as (1, 1, 1, C).

  A State without `params` gives the sampling-only layout {step, params_ema[, model_state]}. A
  State with `params` but no `opt_state` gets flax.optim.Adam's initial state (step 0, zero
  moments), which the original code needs to open the file.
  """
  step = np.asarray(state.step, np.int32)
  params_ema = _to_legacy_layout(state.params_ema)
  model_state = _to_legacy_layout(state.model_state)
  if state.params is None:
    sampling_only = {'step': step, 'params_ema': params_ema}
    return {**sampling_only, 'model_state': model_state} if model_state else sampling_only
  missing = [f for f in ('lr', 'ema_rate', 'rng') if getattr(state, f) is None]
  if missing:
    raise ValueError(f'state_to_legacy_dict: state.{", state.".join(missing)} is None; a legacy '
                     'checkpoint with params needs step, lr, ema_rate and rng.')
  opt = state.opt_state
  if opt is None:
    zeros = jax.tree.map(np.zeros_like, state.params)
    opt = AdamState(step=np.zeros((), np.int32), grad_ema=zeros, grad_sq_ema=zeros)
  moments = [_flatten(_to_legacy_layout(getattr(opt, m))) for m in _MOMENTS]
  param_states = _unflatten({p + (m,): flat[p] for p in moments[0]
                             for m, flat in zip(_MOMENTS, moments)})
  return {'step': step,
          'optimizer': {'target': _to_legacy_layout(state.params),
                        'state': {'step': np.asarray(opt.step, np.int32),
                                  'param_states': param_states}},
          'lr': np.asarray(state.lr, np.float32),
          'model_state': model_state,
          'ema_rate': np.asarray(state.ema_rate, np.float32),
          'params_ema': params_ema,
          'rng': np.asarray(state.rng, np.uint32)}


def save_checkpoint(ckpt_dir: str, state: State, step: int, keep: Optional[int] = 1) -> str:
  """Writes `ckpt_dir`/checkpoint_<step> in the legacy layout, atomically, and keeps the `keep`
  highest-numbered checkpoints (all of them when `keep` is None). Returns the file's path.

  The bytes go to a hidden temporary file in `ckpt_dir` (never matched by checkpoint_*), are
  fsynced and renamed over the final name, so a crash never leaves a partial checkpoint_<step>.
  """
  if keep is not None and keep < 1:
    raise ValueError(f'save_checkpoint: keep must be >= 1 or None, got {keep}.')
  data = serialization.msgpack_serialize(state_to_legacy_dict(state), in_place=True)
  os.makedirs(ckpt_dir, exist_ok=True)
  final = os.path.join(ckpt_dir, f'checkpoint_{int(step)}')
  atomic_write(final, lambda f: f.write(data))
  if keep is not None:
    for _, old in list_checkpoints(ckpt_dir)[:-keep]:
      os.remove(old)
  return final


# --- score_sde_pytorch files --------------------------------------------------------------------

def _torch_module(key: str) -> Tuple[str, Path]:
  """'all_modules.4.GroupNorm_0.weight' -> ('all_modules.4', ('GroupNorm_0', 'weight')): the
  top-level module (an item of a ModuleList counts as one) and the path inside it."""
  parts = key.split('.')
  n = 2 if len(parts) > 2 and parts[1].isdigit() else 1
  return '.'.join(parts[:n]), tuple(parts[n:])


def _torch_to_flax_leaf(name: str, ndim: int, flax_names: set) -> Tuple[Optional[str], Shape]:
  """The flax leaf a torch parameter maps to, and the axis permutation to apply.

  Same name (NIN W/b, Fourier W, bias, up/down Conv2d weight) or torch `weight` -> `kernel`
  (Linear, Conv2d) / `scale` (GroupNorm). Every `weight` with ndim >= 2 is (out, in, *spatial) in
  torch and (*spatial, in, out) in flax: Linear transposed, conv OIHW -> HWIO.
  """
  perm = tuple(range(2, ndim)) + (1, 0) if name == 'weight' and ndim >= 2 else tuple(range(ndim))
  if name in flax_names:
    return name, perm
  candidates = flax_names & {'kernel', 'scale'} if name == 'weight' else set()
  return (candidates.pop() if len(candidates) == 1 else None), perm


MAX_LISTED_PROBLEMS = 20  # a mismatch error lists this many problems, then their count


def _width_ratio(pairs: Sequence[Tuple[Shape, Shape]]) -> Optional[float]:
  """r when every (expected, converted) pair of equal rank differs only on axes scaled by one factor
  expected / converted = r (a model built with another width, model.nf); else None."""
  ratios = set()
  for expected, converted in pairs:
    if len(expected) != len(converted):
      return None
    for e, c in zip(expected, converted):
      if e != c:
        if not e or not c:
          return None
        ratios.add(round(e / c, 6))
  return ratios.pop() if len(ratios) == 1 else None


def width_summary(pairs: Sequence[Tuple[Shape, Shape]], total: int, nf: Optional[int]) -> Optional[str]:
  """One line for a width mismatch, e.g. 'every mis-shaped tensor (360 of 412) is 1/16 of the config's
  width (model.nf 128): is model.nf 8? (--config.model.nf=8)'; None when the shapes disagree otherwise."""
  r = _width_ratio(pairs)
  if r is None or r == 1:
    return None
  fraction = f'1/{r:g} of' if r > 1 else f'{1 / r:g}x'
  line = f'every mis-shaped tensor ({len(pairs)} of {total}) is {fraction} the config\'s width'
  if nf:
    likely = nf / r
    line += f' (model.nf {nf})'
    if abs(likely - round(likely)) < 1e-6 and round(likely) >= 1:
      line += f': is model.nf {round(likely)}? (--config.model.nf={round(likely)})'
  return line


def _listed(lines: Sequence[str]) -> List[str]:
  """At most MAX_LISTED_PROBLEMS lines, then how many were left out."""
  shown = [f'  {line}' for line in lines[:MAX_LISTED_PROBLEMS]]
  if len(lines) > MAX_LISTED_PROBLEMS:
    shown.append(f'  ... and {len(lines) - MAX_LISTED_PROBLEMS} more ({len(lines)} problems in all)')
  return shown


def _match_torch_params(torch_shapes: Mapping[str, Shape], flax_shapes: Mapping[Path, Shape],
                        call_order: Sequence[str], source: str, nf: Optional[int] = None
                        ) -> Dict[str, Tuple[Path, Shape]]:
  """Maps each torch parameter key to (flax path, axis permutation), by rule.

  The i-th parameter-holding torch module (state-dict order, which is construction order, e.g.
  NCSN++'s `all_modules` list) is the i-th parameter-holding flax submodule in call order; inside
  a pair the names match (score_sde_pytorch names its children after the flax auto-names) up to
  `_torch_to_flax_leaf`. Top-level torch tensors unknown to flax (the `sigmas` buffer) are left
  out. Raises a CheckpointMismatchError: a one-line summary when the shapes differ by one width
  factor (`width_summary`; `nf` = the config's model.nf), then at most MAX_LISTED_PROBLEMS of the
  torch or flax leaves that find no partner, and their count.
  """
  groups: Dict[str, List[Tuple[str, Path]]] = {}
  mapping = {}
  for key in torch_shapes:
    module, inner = _torch_module(key)
    if inner:
      groups.setdefault(module, []).append((key, inner))
    elif (module,) in flax_shapes:
      mapping[key] = ((module,), tuple(range(len(torch_shapes[key]))))
  flax_modules = [m for m in call_order if any(p[0] == m for p in flax_shapes)]
  if len(groups) != len(flax_modules):
    raise CheckpointMismatchError(
      f'{source}: the PyTorch model has {len(groups)} parameter-holding modules, the flax model '
      f'of this config {len(flax_modules)}; was it trained with another config?\n'
      f'  torch: {", ".join(groups)}\n  flax:  {", ".join(flax_modules)}')
  lines, mis_shaped = [], []
  for (torch_module, keys), flax_module in zip(groups.items(), flax_modules):
    leaves = {p[1:]: s for p, s in flax_shapes.items() if p[0] == flax_module}
    unmatched = set(leaves)
    for key, inner in keys:
      names = {p[-1] for p in leaves if p[:-1] == inner[:-1]}
      name, perm = _torch_to_flax_leaf(inner[-1], len(torch_shapes[key]), names)
      shape = tuple(torch_shapes[key][i] for i in perm)
      where = f'{key} {tuple(torch_shapes[key])} -> {flax_module}'
      if name is None:
        lines.append(f'unexpected  {where}: no flax leaf {_fmt(inner)} (has {sorted(names)})')
      elif shape != leaves[inner[:-1] + (name,)]:
        mis_shaped.append((leaves[inner[:-1] + (name,)], shape))
        unmatched.discard(inner[:-1] + (name,))  # found, with another shape: listed once, not also as missing
        lines.append(f'mis-shaped  {where}/{_fmt(inner[:-1] + (name,))}: expected '
                     f'{leaves[inner[:-1] + (name,)]}, converted {shape}')
      else:
        mapping[key] = ((flax_module,) + inner[:-1] + (name,), perm)
        unmatched.discard(inner[:-1] + (name,))
    lines += [f'missing     {flax_module}/{_fmt(p)} {leaves[p]}: no entry in torch '
              f'{torch_module}' for p in sorted(unmatched)]
  if lines:
    summary = width_summary(mis_shaped, len(torch_shapes), nf) if len(mis_shaped) == len(lines) else None
    raise CheckpointMismatchError('\n'.join(
        [f'{source}: the PyTorch parameters do not fit the flax model of this config'
         + (f': {summary}' if summary else f' ({len(lines)} problems):')] + _listed(lines)))
  return mapping


def _subsequence_positions(seq: Sequence[Shape], sub: Sequence[Shape]) -> Optional[List[int]]:
  """Leftmost positions of `sub` as a subsequence of `seq` (equal items), or None."""
  positions = []
  for i, item in enumerate(seq):
    if len(positions) < len(sub) and item == sub[len(positions)]:
      positions.append(i)
  return positions if len(positions) == len(sub) else None


def _shadow_positions(param_shapes: Sequence[Shape], shadow_shapes: Sequence[Shape],
                      source: str) -> List[int]:
  """Which parameters the EMA `shadow_params` list stands for.

  The list is model.parameters() without the requires_grad=False ones (the Fourier `W`), so it is
  a subsequence of the parameters; matched by shape, accepted only if the match is unique (the
  leftmost and rightmost matches coincide).
  """
  left = _subsequence_positions(param_shapes, shadow_shapes)
  right = _subsequence_positions(param_shapes[::-1], shadow_shapes[::-1])
  if left is None:
    raise CheckpointError(f'{source}: the {len(shadow_shapes)} EMA shadow params do not follow '
                          f'the order and shapes of the {len(param_shapes)} model parameters.')
  right = [len(param_shapes) - 1 - i for i in reversed(right)]
  if left != right:
    raise CheckpointError(f'{source}: the EMA shadow params match the model parameters in more '
                          'than one way (frozen parameters with the shape of a neighbour); '
                          'cannot tell which parameters they stand for.')
  return left


def _import_torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError('Converting a PyTorch checkpoint needs PyTorch: pip install .[torch] '
                      '(torch==2.13.0).') from e
  return torch


def _load_pth(torch, pth_path: str) -> Dict[str, Any]:
  if not os.path.isfile(pth_path):
    raise CheckpointNotFoundError(f'{pth_path}: no such PyTorch checkpoint file.')
  try:
    ckpt = torch.load(pth_path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises many types on truncated or foreign files
    raise CheckpointError(f'{pth_path}: not a readable PyTorch checkpoint '
                          f'({type(e).__name__}: {e}).') from e
  if not isinstance(ckpt, dict) or not {'model', 'ema', 'step'} <= ckpt.keys():
    found = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
    raise CheckpointError(f'{pth_path}: not a score_sde_pytorch checkpoint: expected a dict with '
                          f'"model", "ema", "optimizer" and "step", found {found}.')
  return ckpt


def _torch_adam_moments(optimizer: Mapping, param_keys: Sequence[str], to_numpy, source: str
                        ) -> Tuple[int, Dict[str, Tuple[np.ndarray, np.ndarray]]]:
  """(step, {torch key: (exp_avg, exp_avg_sq)}) of a torch Adam state dict; params without a
  state (never given a gradient) are absent."""
  order = [i for group in optimizer['param_groups'] for i in group['params']]
  if len(order) != len(param_keys):
    raise CheckpointError(f'{source}: the optimizer holds {len(order)} parameters, the model '
                          f'{len(param_keys)}.')
  key_of = dict(zip(order, param_keys))
  states = optimizer['state']
  steps = {int(s['step']) for s in states.values()}
  if len(steps) > 1:
    raise CheckpointError(f'{source}: Adam states disagree on the step count: {sorted(steps)}.')
  moments = {key_of[i]: (to_numpy(s['exp_avg']), to_numpy(s['exp_avg_sq']))
             for i, s in states.items()}
  return (steps.pop() if steps else 0), moments


def convert_pytorch_checkpoint(pth_path: str, config: ml_collections.ConfigDict) -> State:
  """A State from a score_sde_pytorch checkpoint {'model', 'ema', 'optimizer', 'step'}.

  `params` come from 'model', `params_ema` from the EMA `shadow_params` (parameters outside the
  EMA, i.e. the frozen Fourier `W`, from 'model'), the Adam moments from 'optimizer' (zeros for
  parameters without a torch state, as flax.optim holds for never-updated ones). Layouts are
  converted by rule (`_match_torch_params`). score_sde keeps the base learning rate in State.lr
  (warmup is applied on the fly), so `lr` is config.optim.lr; `rng` is PRNGKey(config.seed);
  `ema_rate` is the EMA decay. Needs torch (imported here only).
  """
  torch = _import_torch()
  ckpt = _load_pth(torch, pth_path)
  to_numpy = lambda t: t.detach().cpu().float().numpy()
  model_sd = ckpt['model']
  prefix = 'module.' if all(k.startswith('module.') for k in model_sd) else ''
  model_sd = {k[len(prefix):]: v for k, v in model_sd.items()}
  model_state_shapes, flax_shapes, call_order = _model_template(config)
  mapping = _match_torch_params({k: tuple(v.shape) for k, v in model_sd.items()}, flax_shapes,
                                call_order, pth_path, config.model.get('nf'))
  param_keys = [k for k in model_sd if k in mapping]
  convert = lambda key, x: np.ascontiguousarray(np.transpose(x, mapping[key][1]))
  flat_params = {mapping[k][0]: convert(k, to_numpy(model_sd[k])) for k in param_keys}

  shadow = ckpt['ema']['shadow_params']
  positions = _shadow_positions([tuple(model_sd[k].shape) for k in param_keys],
                                [tuple(s.shape) for s in shadow], pth_path)
  flat_ema = dict(flat_params)
  flat_ema.update({mapping[param_keys[i]][0]: convert(param_keys[i], to_numpy(s))
                   for i, s in zip(positions, shadow)})

  opt_state = None
  if ckpt.get('optimizer') is not None:
    step, moments = _torch_adam_moments(ckpt['optimizer'], param_keys, to_numpy, pth_path)
    opt_state = AdamState(
      step=jnp.asarray(step, jnp.int32),
      **{m: jax.tree.map(jnp.asarray, _unflatten(
        {mapping[k][0]: (convert(k, moments[k][j]) if k in moments else
                         np.zeros_like(flat_params[mapping[k][0]])) for k in param_keys}))
         for j, m in enumerate(_MOMENTS)})
  state = State(step=jnp.asarray(int(ckpt['step']), jnp.int32),
                params=jax.tree.map(jnp.asarray, _unflatten(flat_params)),
                params_ema=jax.tree.map(jnp.asarray, _unflatten(flat_ema)),
                model_state={},
                opt_state=opt_state,
                lr=jnp.asarray(config.optim.lr, jnp.float32),
                ema_rate=jnp.asarray(ckpt['ema']['decay'], jnp.float32),
                rng=jax.random.PRNGKey(config.seed))
  _check_fits_model([('params_ema', _shapes(state.params_ema), flax_shapes),
                     ('model_state', {}, model_state_shapes)], pth_path, config)
  return state


def write_converted_checkpoint(pth_path: str, config: ml_collections.ConfigDict, workdir: str,
                               number: Optional[int] = None) -> str:
  """Converts a score_sde_pytorch `.pth` file and writes workdir/checkpoints/checkpoint_<number>
  (default: the training step) in the legacy layout; existing checkpoints are kept. Returns the
  written path."""
  state = convert_pytorch_checkpoint(pth_path, config)
  number = int(state.step) if number is None else number
  return save_checkpoint(os.path.join(workdir, 'checkpoints'), state, number, keep=None)


# --- the config overrides a converted checkpoint needs ---------------------------------------------

OVERRIDES_FILE = 'config_overrides.json'
STORED_OVERRIDE_GROUPS = ('model', 'data')  # the fields that decide which checkpoint fits


def write_config_overrides(workdir: str, overrides: Mapping[str, Any]) -> Optional[str]:
  """Writes the model.* / data.* entries of `overrides` (--config.<field> values of --mode convert) to
  workdir/checkpoints/config_overrides.json, beside the converted checkpoint; returns its path (None
  when there are none: an earlier conversion's file is then removed)."""
  import json  # pylint: disable=import-outside-toplevel
  kept = {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(overrides.items())
          if k.split('.')[0] in STORED_OVERRIDE_GROUPS}
  path = os.path.join(workdir, 'checkpoints', OVERRIDES_FILE)
  if not kept:
    if os.path.isfile(path):  # an earlier conversion's overrides do not describe this one
      os.remove(path)
    return None
  text = json.dumps({'written_by': '--mode convert', 'overrides': kept}, indent=2)
  atomic_write(path, lambda f: f.write(text.encode()))
  return path


def apply_config_overrides(config: ml_collections.ConfigDict, workdir: str,
                           explicit: Mapping[str, Any] = ()) -> Dict[str, Any]:
  """Sets the fields stored by `write_config_overrides` in workdir/checkpoints/ on `config` in place,
  except those in `explicit` (the command line's own --config.<field> values win). Returns the
  applied {field: value}; ValueError naming the file when it is unreadable or names an unknown field."""
  import json  # pylint: disable=import-outside-toplevel
  path = os.path.join(workdir, 'checkpoints', OVERRIDES_FILE)
  if not os.path.isfile(path):
    return {}
  try:
    with open(path) as f:
      stored = json.load(f)['overrides']
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f'{path}: unreadable ({type(e).__name__}: {e}); delete it or rewrite it with --mode convert.') from e
  applied = {}
  for field, value in stored.items():
    if field in explicit:
      continue
    *parents, name = field.split('.')
    node = config
    for parent in parents:
      node = node.get(parent) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(node, ml_collections.ConfigDict) or name not in node:
      raise ValueError(f'{path}: config.{field} is not a field of this config; was the checkpoint converted '
                       'with another config?')
    value = tuple(value) if isinstance(node[name], tuple) else value
    setattr(node, name, value)
    applied[field] = value
  return applied
