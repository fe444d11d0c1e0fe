"""The pieces of score_sde's training loop (`run_lib.train`): batching, the unrolled multi-step call, the log."""
from __future__ import annotations

import json
import os
import time
from typing import Callable

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
