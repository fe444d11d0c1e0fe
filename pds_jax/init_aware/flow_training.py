"""Maximum-likelihood fitting of a flow q_θ ≈ p_T and its checkpoint format (docs/method.md §8).

Fassina et al. fit the init by
  min_θ  −E_{x_0, ε} log q_θ(x_0 + σ_T ε)   (= KL(p_T ‖ q_θ) + const),
in one of two regimes: 'fixed' draws one ε per training example once, before training, and
reuses it every epoch; 'dynamic' draws a fresh ε for every minibatch. Each epoch shuffles the
examples and runs ⌊n / batch⌋ steps (the remainder is dropped) in one jitted `lax.scan`. The
loss and every reported NLL are per dimension, −log q / D in nats.
Optimisers of the paper's code: Adam(1e-3) for the coupling flow, AdamW(3e-4, betas (0.9, 0.95),
weight decay 1e-4) for TarFlow, both at a constant learning rate.

Checkpoint: one msgpack map (flax.serialization) {'header': JSON text, 'params': parameter tree};
the header records the format, flow type, the module's hyper-parameters, σ_T, the data shape and
optionally the training history. Files are written with `io_utils.atomic_write`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization, traverse_util

from pds_jax.init_aware.flows import CouplingFlow, FlowInit, Params
from pds_jax.init_aware.tarflow import TarFlow
from pds_jax.io_utils import atomic_write

FLOW_TYPES: Dict[str, type] = {'coupling': CouplingFlow, 'tarflow': TarFlow}
REGIMES = ('fixed', 'dynamic')
FORMAT = 'pds_jax.flow'
FORMAT_VERSION = 1
_HEADER_FIELDS = ('format', 'flow_type', 'hparams', 'sigma_t', 'data_shape')
History = Dict[str, List[float]]


class FlowCheckpointError(ValueError):
  """A flow checkpoint that cannot be used; the message names the file."""


class FlowCheckpointNotFoundError(FlowCheckpointError, FileNotFoundError):
  """No file at the given path."""


class FlowShapeMismatchError(FlowCheckpointError):
  """The checkpoint's flow was fitted to data of another shape."""


# --- building ------------------------------------------------------------------------------------

def build_flow(flow_type: str, data_shape: Sequence[int], sigma_t: float, **hparams: Any) -> nn.Module:
  """The flow module of `flow_type` for data of shape `data_shape`.

  'coupling': `CouplingFlow(dim, base_scale=sigma_t, **hparams)` for data_shape (d,);
  'tarflow':  `TarFlow(image_shape, **hparams)` for data_shape (H, W, C) (σ_T enters only through
  the data, e.g. data_scale = 2 σ_T in the paper).
  """
  data_shape = tuple(int(s) for s in data_shape)
  if flow_type == 'coupling':
    if len(data_shape) != 1:
      raise ValueError(f"flow type 'coupling' needs vectors, data_shape (d,); got {data_shape}")
    return CouplingFlow(dim=data_shape[0], base_scale=float(sigma_t), **hparams)
  if flow_type == 'tarflow':
    if len(data_shape) != 3:
      raise ValueError(f"flow type 'tarflow' needs images, data_shape (H, W, C); got {data_shape}")
    return TarFlow(image_shape=data_shape, **hparams)
  raise ValueError(f'unknown flow type {flow_type!r}; choose one of {sorted(FLOW_TYPES)}')


def flow_type_of(module: nn.Module) -> str:
  """The registry name of a flow module."""
  for name, cls in FLOW_TYPES.items():
    if type(module) is cls:
      return name
  raise ValueError(f'{type(module).__name__} is not a registered flow ({sorted(FLOW_TYPES)})')


def default_optimizer(flow_type: str, learning_rate: Optional[float] = None) -> optax.GradientTransformation:
  """Adam(1e-3) for 'coupling', AdamW(3e-4, b1 0.9, b2 0.95, wd 1e-4) for 'tarflow' (paper's code)."""
  if flow_type == 'coupling':
    return optax.adam(1e-3 if learning_rate is None else learning_rate)
  if flow_type == 'tarflow':
    return optax.adamw(3e-4 if learning_rate is None else learning_rate, b1=0.9, b2=0.95,
                       weight_decay=1e-4)
  raise ValueError(f'unknown flow type {flow_type!r}; choose one of {sorted(FLOW_TYPES)}')


def init_params(module: nn.Module, rng: jax.Array) -> Params:
  """Fresh parameters of a flow module."""
  return module.init(rng, jnp.zeros((1, *module.data_shape)))['params']


# --- the objective and its minibatches -------------------------------------------------------------

def nll_per_dim(module: nn.Module, params: Params, x: jax.Array) -> jax.Array:
  """−mean_n log q(x_n) / D for a batch x (n, *data_shape)."""
  return -jnp.mean(module.apply({'params': params}, x, method='log_prob')) / math.prod(module.data_shape)


def noised_training_set(data: jax.Array, sigma_t: float, rng: jax.Array) -> jax.Array:
  """x_0 + σ_T ε with one ε per example: the training set of the 'fixed' regime."""
  return data + sigma_t * jax.random.normal(rng, data.shape, data.dtype)


def minibatch(source: jax.Array, idx: jax.Array, rng: jax.Array, sigma_t: float, regime: str) -> jax.Array:
  """The noised examples `idx` of a step: 'fixed' reads them from the noised set `source`;
  'dynamic' adds fresh σ_T ε (drawn from `rng`) to the clean examples `source[idx]`."""
  x = source[idx]
  if regime == 'fixed':
    return x
  if regime == 'dynamic':
    return x + sigma_t * jax.random.normal(rng, x.shape, x.dtype)
  raise ValueError(f'unknown training regime {regime!r}; choose one of {REGIMES}')


class TrainState(NamedTuple):
  params: Params
  opt_state: optax.OptState


def make_train_epoch(module: nn.Module, optimizer: optax.GradientTransformation, sigma_t: float,
                     regime: str, batch_size: int
                     ) -> Callable[[TrainState, jax.Array, jax.Array], Tuple[TrainState, jax.Array]]:
  """A jitted epoch `(state, source, rng) -> (state, per-step losses)`.

  `source` is the noised set ('fixed') or the clean data ('dynamic'), shape (n, *data_shape), with
  n ≥ batch_size; the epoch shuffles it and scans ⌊n / batch_size⌋ optimizer steps on `nll_per_dim`.
  """
  if regime not in REGIMES:
    raise ValueError(f'unknown training regime {regime!r}; choose one of {REGIMES}')
  loss_and_grad = jax.value_and_grad(lambda p, x: nll_per_dim(module, p, x))

  @jax.jit
  def epoch(state: TrainState, source: jax.Array, rng: jax.Array) -> Tuple[TrainState, jax.Array]:
    def step(state: TrainState, inputs: Tuple[jax.Array, jax.Array]) -> Tuple[TrainState, jax.Array]:
      idx, key = inputs
      loss, grads = loss_and_grad(state.params, minibatch(source, idx, key, sigma_t, regime))
      updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
      return TrainState(optax.apply_updates(state.params, updates), opt_state), loss

    n_steps = source.shape[0] // batch_size
    perm_key, noise_key = jax.random.split(rng)
    idx = jax.random.permutation(perm_key, source.shape[0])[:n_steps * batch_size]
    return jax.lax.scan(step, state, (idx.reshape(n_steps, batch_size), jax.random.split(noise_key, n_steps)))

  return epoch


def validation_nll(flow: FlowInit, x0: jax.Array, rng: jax.Array, batch_size: int = 1000) -> float:
  """Per-dimension NLL of q on x0 + σ_T ε (one ε per example from `rng`), in batches."""
  x = noised_training_set(jnp.asarray(x0), flow.sigma_t, rng)
  n = x.shape[0]
  total = 0.
  for start in range(0, n, batch_size):
    chunk = x[start:start + batch_size]
    pad = batch_size - chunk.shape[0] if n > batch_size else 0
    padded = jnp.concatenate([chunk, jnp.repeat(chunk[:1], pad, axis=0)]) if pad else chunk
    total += float(jnp.sum(flow.log_prob(padded)[:chunk.shape[0]]))
  return -total / (n * math.prod(x.shape[1:]))


def fit_flow(module: nn.Module, data: jax.Array, sigma_t: float, rng: jax.Array, *, epochs: int,
             batch_size: int, regime: str = 'dynamic', optimizer: Optional[optax.GradientTransformation] = None,
             params: Optional[Params] = None, val_data: Optional[jax.Array] = None, val_every: int = 1,
             callback: Optional[Callable[[int, FlowInit, History], None]] = None,
             progress: bool = True) -> Tuple[FlowInit, History]:
  """Fits `module` to p_T by maximum likelihood on x_0 + σ_T ε.

  Args:
    module: a flow module (`build_flow`).
    data: clean training examples x_0, shape (n, *module.data_shape).
    sigma_t: noise level σ_T of the target p_T.
    rng: PRNG key (initialisation, fixed noise, shuffling, dynamic noise, validation noise).
    epochs, batch_size: passes over the data and examples per step (min(batch_size, n)).
    regime: 'fixed' or 'dynamic'.
    optimizer: default `default_optimizer(flow_type_of(module))`.
    params: starting parameters (default: a fresh `init_params`).
    val_data: clean held-out examples; their NLL (one fixed noise draw, evaluated in batches of
      `batch_size`) is measured before training, every `val_every` epochs and after the last one.
    callback: called as `callback(epoch, flow, history)` after every epoch (e.g. to checkpoint).
    progress: show a tqdm bar over the epochs with the current NLLs.

  Returns:
    the fitted `FlowInit` and a history {'train_nll': per-epoch mean step loss,
    'val_epoch': epochs at which validation ran (0 = before training), 'val_nll': their NLLs}.
  """
  data = jnp.asarray(data)
  if tuple(data.shape[1:]) != tuple(module.data_shape) or data.shape[0] < 1:
    raise ValueError(f'fit_flow: data must have shape (n, *{tuple(module.data_shape)}) with n ≥ 1, '
                     f'got {tuple(data.shape)}')
  if regime not in REGIMES:
    raise ValueError(f'unknown training regime {regime!r}; choose one of {REGIMES}')
  optimizer = default_optimizer(flow_type_of(module)) if optimizer is None else optimizer
  init_key, noise_key, train_key, val_key = jax.random.split(rng, 4)
  params = init_params(module, init_key) if params is None else params
  state = TrainState(params, optimizer.init(params))
  source = noised_training_set(data, sigma_t, noise_key) if regime == 'fixed' else data
  epoch_fn = make_train_epoch(module, optimizer, sigma_t, regime, min(batch_size, data.shape[0]))
  history: History = {'train_nll': [], 'val_epoch': [], 'val_nll': []}

  def validate(epoch: int) -> None:
    history['val_epoch'].append(epoch)
    history['val_nll'].append(validation_nll(FlowInit(module, state.params, sigma_t), val_data, val_key,
                                               batch_size))

  if val_data is not None:
    validate(0)
  from tqdm.auto import tqdm
  bar = tqdm(range(1, epochs + 1), desc=f'fit {flow_type_of(module)} ({regime})', unit='epoch',
             disable=not progress)
  for epoch in bar:
    state, losses = epoch_fn(state, source, jax.random.fold_in(train_key, epoch))
    history['train_nll'].append(float(jnp.mean(losses)))
    if val_data is not None and (epoch % val_every == 0 or epoch == epochs):
      validate(epoch)
    postfix = {'nll': f"{history['train_nll'][-1]:.4f}"}
    if history['val_nll']:
      postfix['val'] = f"{history['val_nll'][-1]:.4f}"
    bar.set_postfix(postfix)
    if callback is not None:
      callback(epoch, FlowInit(module, state.params, sigma_t), history)
  return FlowInit(module, state.params, sigma_t), history


# --- checkpoints -----------------------------------------------------------------------------------

def _hparams(module: nn.Module) -> Dict[str, Any]:
  return {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
          if f.init and f.name not in ('parent', 'name')}


def save_flow(path: str, flow: FlowInit, history: Optional[Mapping[str, Sequence[float]]] = None) -> None:
  """Writes a fitted flow (and optionally its training history) to `path`, atomically."""
  header = {'format': FORMAT, 'version': FORMAT_VERSION, 'flow_type': flow_type_of(flow.module),
            'hparams': _hparams(flow.module), 'sigma_t': float(flow.sigma_t),
            'data_shape': list(flow.module.data_shape),
            'history': None if history is None else {k: list(map(float, v)) for k, v in history.items()}}
  params = jax.tree_util.tree_map(np.asarray, jax.device_get(flow.params))
  blob = serialization.msgpack_serialize({'header': json.dumps(header), 'params': params})
  atomic_write(path, lambda f: f.write(blob))


def _read(path: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  if not os.path.isfile(path):
    raise FlowCheckpointNotFoundError(f'{path}: no flow checkpoint there (file not found)')
  try:
    with open(path, 'rb') as f:
      payload = serialization.msgpack_restore(f.read())
    header = json.loads(payload['header'])
    params = payload['params']
  except Exception as e:  # any msgpack / JSON / layout failure means the file is not a flow checkpoint
    raise FlowCheckpointError(f'{path}: not a readable flow checkpoint ({type(e).__name__}: {e})') from e
  missing = [k for k in _HEADER_FIELDS if not isinstance(header, dict) or k not in header]
  if missing:
    raise FlowCheckpointError(f'{path}: flow checkpoint header lacks {missing}')
  if header['format'] != FORMAT or header['flow_type'] not in FLOW_TYPES:
    raise FlowCheckpointError(f"{path}: format {header['format']!r} / flow type {header['flow_type']!r} "
                              f'is not a {FORMAT} checkpoint of {sorted(FLOW_TYPES)}')
  return header, params


def load_history(path: str) -> Optional[History]:
  """The training history stored with a flow checkpoint (None if it was saved without one)."""
  return _read(path)[0].get('history')


def load_flow(path: str, expected_shape: Optional[Sequence[int]] = None) -> FlowInit:
  """The `FlowInit` saved by `save_flow`.

  Raises:
    FlowCheckpointNotFoundError: no file at `path`.
    FlowShapeMismatchError: the flow was fitted to data of a shape other than `expected_shape`.
    FlowCheckpointError: the file is corrupt, not a flow checkpoint, or its parameters do not fit
      the module its header describes.
  """
  header, stored = _read(path)
  data_shape = tuple(header['data_shape'])
  if expected_shape is not None and tuple(expected_shape) != data_shape:
    raise FlowShapeMismatchError(f'{path}: the flow was fitted to data of shape {data_shape}, '
                                 f'expected {tuple(expected_shape)}')
  hparams = {k: tuple(v) if isinstance(v, list) else v for k, v in header['hparams'].items()}
  try:
    module = FLOW_TYPES[header['flow_type']](**hparams)
    template = jax.eval_shape(lambda: init_params(module, jax.random.PRNGKey(0)))
  except (TypeError, ValueError) as e:
    raise FlowCheckpointError(f'{path}: its header does not describe a valid '
                              f"{header['flow_type']} flow ({e})") from e
  want = traverse_util.flatten_dict(template, sep='/')
  have = traverse_util.flatten_dict(stored, sep='/') if isinstance(stored, dict) else {}
  problems = [f'{k}: expected {want[k].shape}, stored {np.shape(have.get(k)) if k in have else "nothing"}'
              for k in sorted(want) if k not in have or np.shape(have[k]) != want[k].shape]
  problems += [f'{k}: unexpected' for k in sorted(have.keys() - want.keys())]
  if problems or tuple(module.data_shape) != data_shape:
    raise FlowCheckpointError(f'{path}: parameters do not fit the {header["flow_type"]} flow of its '
                              f'header (data shape {data_shape}): ' + '; '.join(problems))
  params = traverse_util.unflatten_dict({k: jnp.asarray(have[k]) for k in want}, sep='/')
  return FlowInit(module, params, float(header['sigma_t']))
