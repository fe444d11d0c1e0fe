"""The pieces of score_sde's training loop (`run_lib.train`): the initial and resumed state, the pmapped
steps, batching, the unrolled multi-step call, the loss check, the log and the snapshot samples."""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Callable, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pds_jax.io_utils import atomic_write


def check_train_config(config) -> None:
  """Checks config.training's frequencies and batch size against n_jitted_steps and the devices; ValueError."""
  t = config.training
  for name in ('log_freq', 'eval_freq', 'snapshot_freq', 'snapshot_freq_for_preemption'):
    if getattr(t, name) % t.n_jitted_steps:
      raise ValueError(f'config.training.{name} = {getattr(t, name)} must be a multiple of '
                       f'config.training.n_jitted_steps = {t.n_jitted_steps} (score_sde runs that many steps per call).')
  if t.batch_size % jax.local_device_count():
    raise ValueError(f'config.training.batch_size = {t.batch_size} is not divisible by the '
                     f'{jax.local_device_count()} local devices.')


def cycle(dataset, batch_size: int):
  """Endless batches of exactly `batch_size` images from repeated passes over a finite dataset."""
  buffer = np.zeros((0,))
  while True:
    for batch in dataset:
      buffer = batch['image'] if not buffer.size else np.concatenate([buffer, batch['image']])
      while len(buffer) >= batch_size:
        yield {'image': buffer[:batch_size]}
        buffer = buffer[batch_size:]


def train_batches(iterator, scaler, n_jitted: int) -> np.ndarray:
  """The next n_jitted batches of `iterator`, scaled, as (devices, n_jitted, B / devices, H, W, C) for one pmapped
  call."""
  images = np.stack([next(iterator)['image'] for _ in range(n_jitted)])
  n = jax.local_device_count()
  images = images.reshape((n_jitted, n, images.shape[1] // n) + images.shape[2:]).swapaxes(0, 1)
  return scaler(images)


def unrolled(step_fn: Callable) -> Callable:
  """`(carry, batches (n, ...)) -> (carry, losses (n,))`: n steps traced one after another.

  score_sde runs them as a `lax.scan`; on XLA:CPU a convolution network inside that loop runs about
  40x slower than the same steps unrolled (measured: 12.4 vs 0.30 s per NCSN++ step), so the n
  steps of one call are unrolled instead (same result, compile time grows with n).
  """
  def steps(carry, batches):
    losses = []
    for batch in batches:
      carry, loss = step_fn(carry, batch)
      losses.append(loss)
    return carry, jnp.stack(losses)

  return steps


def reseeded(config: ml_collections.ConfigDict, step: int) -> ml_collections.ConfigDict:
  """A copy of `config` whose data seed depends on `step`, so a resumed run draws fresh batches."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.seed = int(np.random.SeedSequence([config.seed, step]).generate_state(1)[0] % (2 ** 31))
  return config


class TrainLog:
  """JSON-lines log (workdir/train_log.jsonl) plus TensorBoard when `tensorboardX` is installed.

  On resume the lines past the restored step are dropped (they belong to steps that will rerun).
  """

  def __init__(self, workdir: str, initial_step: int):
    self.path = os.path.join(workdir, 'train_log.jsonl')
    kept = []
    if os.path.exists(self.path):
      with open(self.path) as f:
        kept = [line for line in f if line.strip() and json.loads(line).get('step', 0) <= initial_step]
    atomic_write(self.path, lambda f: f.write(''.join(kept).encode()))
    try:
      from tensorboardX import SummaryWriter
      self.writer = SummaryWriter(os.path.join(workdir, 'tensorboard'))
    except ImportError:
      self.writer = None

  def write(self, step: int, **scalars) -> None:
    """Appends one line {'step', 'time', **scalars} (and the scalars to TensorBoard)."""
    with open(self.path, 'a') as f:
      f.write(json.dumps({'step': step, 'time': time.time(), **scalars}) + '\n')
    if self.writer is not None:
      for k, v in scalars.items():
        self.writer.add_scalar(k, v, step)


def init_state(config: ml_collections.ConfigDict):
  """(model, checkpoints.State at step 0): score_sde's initial parameters (EMA = parameters), Adam state,
  config.optim.lr and model.ema_rate, all drawn from PRNGKey(config.seed)."""
  from pds_jax import checkpoints, losses
  from pds_jax.models import utils as mutils
  rng = jax.random.PRNGKey(config.seed)
  rng, init_rng = jax.random.split(rng)
  model, init_model_state, initial_params = mutils.init_model(init_rng, config)
  state = checkpoints.State(step=jnp.zeros((), jnp.int32), params=initial_params, params_ema=initial_params,
                            model_state=init_model_state, opt_state=losses.init_adam_state(initial_params),
                            lr=jnp.asarray(config.optim.lr, jnp.float32),
                            ema_rate=jnp.asarray(config.model.ema_rate, jnp.float32), rng=rng)
  return model, state


def restore_latest(state, folders, config, workdir: str):
  """`state` resumed from the newest checkpoint in `folders` (its lr and ema_rate kept: the config's), or
  `state` itself when they hold none; ValueError for a sampling-only checkpoint (no optimizer state)."""
  from pds_jax import checkpoints
  restored = [checkpoints.restore_checkpoint(d, config) for d in folders if checkpoints.list_checkpoints(d)]
  if not restored:
    return state
  latest = max(restored, key=lambda s: int(s.step))
  if latest.params is None or latest.opt_state is None:
    raise ValueError(f'the newest checkpoint in {workdir} (step {int(latest.step)}) is sampling-only; '
                     'resuming training needs one with the optimizer state.')
  logging.info('resuming training at step %d', int(latest.step))
  return latest.replace(lr=state.lr, ema_rate=state.ema_rate)


def pmapped_steps(config: ml_collections.ConfigDict, sde, model) -> Tuple[Callable, Callable]:
  """(train step, eval step) of config.training's loss, each n_jitted_steps steps per `jax.pmap`ped call
  (`unrolled`) over the local devices: ((rngs, state), batches) -> ((rng, state), losses)."""
  from pds_jax import losses
  t = config.training
  step_kwargs = dict(reduce_mean=t.reduce_mean, continuous=t.continuous, likelihood_weighting=t.likelihood_weighting)
  train_step = losses.get_step_fn(sde, model, train=True, optimize_fn=losses.optimization_manager(config),
                                  **step_kwargs)
  eval_step = losses.get_step_fn(sde, model, train=False, **step_kwargs)
  return (jax.pmap(unrolled(train_step), axis_name='batch', donate_argnums=1),
          jax.pmap(unrolled(eval_step), axis_name='batch'))


def finite_loss(ploss, step: int) -> float:
  """The mean of a pmapped call's losses; FloatingPointError when it is not finite."""
  loss = float(np.mean(jax.device_get(ploss)))
  if not np.isfinite(loss):
    raise FloatingPointError(f'training loss is {loss} at step {step}; lower config.optim.lr or check the data.')
  return loss


def save_snapshot_samples(folder: str, samples) -> None:
  """Writes folder/sample.png (a grid) and folder/sample.npz (uint8 `sample`) of samples in [0, 1]."""
  from pds_jax.figures import image_grid
  from pds_jax.io_utils import write_npz, write_png
  os.makedirs(folder, exist_ok=True)
  samples = np.clip(np.asarray(samples, np.float32), 0., 1.)
  write_png(os.path.join(folder, 'sample.png'), image_grid(samples))
  write_npz(os.path.join(folder, 'sample.npz'), sample=np.round(samples * 255.).astype(np.uint8))
