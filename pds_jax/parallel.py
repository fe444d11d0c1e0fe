"""Sampling on many devices and hosts.

- One process, many devices: `PCSampler(..., mesh=batch_mesh())` runs the per-device sampler
  with `jax.shard_map` under `jit` over a 1-D `jax.sharding.Mesh` ('batch' axis; the Langevin
  batch-mean norms are a `pmean` over it); score_sde's `pmap` path is `PCSampler(..., pmap=True)`.
  (Plain GSPMD — jit with sharded keys and no shard_map — gives the same samples but ran 2–6×
  slower on 4–8 forced CPU devices in `benchmarks/scaling.py`, so the mesh path uses shard_map.)
- Many hosts: `initialize_distributed` starts JAX's distributed runtime; sample rounds are dealt
  round-robin (`host_rounds`), so every round is computed whole by one host and the sample set does
  not depend on the number of hosts.
- Every core of a CPU machine (the default on the CPU backend): XLA:CPU runs one program on one device
  on 1.2-1.4 of 2 cores (the deep NCSN++ forward at batch 8). `use_cpu_cores` starts JAX with one host
  CPU device per core (`jax_num_cpu_devices`; `PDS_JAX_CPU_DEVICES=auto`, the default, or a count) when
  the batch divides among them, so the mesh path above runs one slice of the batch per core: on an idle
  2-core machine the deep NCSN++ nf 32 PC step at batch 8 ran 2.4x faster than on one device
  (docs/results.md, "Per-step speed on the CPU: every core"). `PDS_JAX_CPU_DEVICES=1` turns it off; a
  user's `--xla_force_host_platform_device_count` or JAX_NUM_CPU_DEVICES is kept.
- Reproducibility: sample i of the job uses the key fold_in(PRNGKey(seed), i) for all its noise
  (`sampling.sample_keys`), so one seed gives the same set on any device or host count. The only
  coupling between samples is the Langevin corrector's step size (a mean of norms over the round's
  batch), whose float reduction order depends on the device count: expect agreement to float32
  rounding (relative ~1e-6 per step), not bit-for-bit, across device counts.
"""
from __future__ import annotations

import logging
import os
from typing import Mapping, Optional

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PARALLEL_MODES = ('sharding', 'pmap')
CPU_DEVICES_ENV = 'PDS_JAX_CPU_DEVICES'  # unset or 'auto': one device per core; 1: one device (JAX's default); or a count
FORCE_DEVICES_FLAG = '--xla_force_host_platform_device_count'


def batch_mesh(devices=None) -> Mesh:
  """A 1-D mesh with axis 'batch' over `devices` (default: all local devices)."""
  return Mesh(list(jax.local_devices() if devices is None else devices), ('batch',))


def batch_sharding(devices=None) -> NamedSharding:
  """A sharding that splits axis 0 over `devices` (default: all local devices)."""
  return NamedSharding(batch_mesh(devices), PartitionSpec('batch'))


def sampler_devices(mode: str) -> dict:
  """PCSampler keyword arguments for `mode`: {'pmap': True} or {'mesh': the local batch mesh}."""
  if mode not in PARALLEL_MODES:
    raise ValueError(f'config.eval.parallel = {mode!r}; choose one of {PARALLEL_MODES}.')
  return {'pmap': True} if mode == 'pmap' else {'mesh': batch_mesh()}


def place_keys(keys: jax.Array, mode: str) -> jax.Array:
  """Per-sample keys (B, 2) laid out for `mode`: sharded over the local devices, or as is for pmap."""
  if mode not in PARALLEL_MODES:
    raise ValueError(f'config.eval.parallel = {mode!r}; choose one of {PARALLEL_MODES}.')
  d = jax.local_device_count()
  if keys.shape[0] % d:
    raise ValueError(f'the batch of {keys.shape[0]} samples is not divisible by the {d} local devices; '
                     f'set config.eval.batch_size to a multiple of {d}.')
  return jax.device_put(keys, batch_sharding()) if mode == 'sharding' and d > 1 else keys


def cpu_device_count(batch_size: int, cores: int) -> int:
  """The largest divisor of `batch_size` not above `cores`: a batch that does not divide among the cores
  runs on fewer devices (1 for a prime batch), never padded, so every device samples whole samples."""
  return max(d for d in range(1, max(1, min(cores, batch_size)) + 1) if batch_size % d == 0)


def cpu_devices_wanted(batch_size: int, environ: Mapping[str, str] = os.environ,
                       cores: Optional[int] = None) -> Optional[int]:
  """The host CPU device count to start JAX with for batches of `batch_size`, or None to leave JAX as is.

  None when the user chose: XLA_FLAGS holds --xla_force_host_platform_device_count, or JAX_NUM_CPU_DEVICES
  is set, or JAX_PLATFORMS names another backend first. Else PDS_JAX_CPU_DEVICES: a count, or 'auto' (the
  default) for `cpu_device_count(batch_size, cores)` with the cores this process may run on (taskset).
  """
  if FORCE_DEVICES_FLAG in environ.get('XLA_FLAGS', '') or environ.get('JAX_NUM_CPU_DEVICES'):
    return None
  platforms = environ.get('JAX_PLATFORMS', '')
  if platforms and platforms.split(',')[0].strip().lower() != 'cpu':
    return None
  value = environ.get(CPU_DEVICES_ENV, 'auto').strip().lower() or 'auto'
  if value != 'auto':
    try:
      count = int(value)
    except ValueError:
      count = 0
    if count < 1:
      raise ValueError(f'{CPU_DEVICES_ENV}={environ[CPU_DEVICES_ENV]!r}: set it to auto or a device count >= 1.')
    return count
  cores = len(os.sched_getaffinity(0)) if cores is None else cores
  return cpu_device_count(batch_size, cores)


def use_cpu_cores(batch_size: int, environ: Mapping[str, str] = os.environ) -> Optional[int]:
  """Before JAX's backend starts: one host CPU device per core for batches of `batch_size` (see
  `cpu_devices_wanted`), so `batch_mesh()` splits each batch over the cores. The devices exist only on the
  CPU backend: with a GPU or TPU as the default backend, `jax.local_devices()` are still the accelerators.
  Returns the count set, or None when JAX is left as it is (the user's choice, or a backend already started).
  """
  count = cpu_devices_wanted(batch_size, environ)
  if count is None or count == 1:
    return None
  try:
    jax.config.update('jax_num_cpu_devices', count)
  except RuntimeError as e:  # the backend has started already: nothing to change any more
    logging.warning('kept the CPU device count (%s): %s', CPU_DEVICES_ENV, e)
    return None
  return count


def host_rounds(num_rounds: int, process_index: Optional[int] = None, process_count: Optional[int] = None) -> range:
  """The rounds this host samples: r = process_index, process_index + process_count, …"""
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  return range(index, num_rounds, count)


def initialize_distributed(coordinator_address: Optional[str], num_processes: Optional[int],
                           process_id: Optional[int], auto: bool = False) -> None:
  """Starts JAX's multi-host runtime from flags, or auto-detected (TPU pods, SLURM) when `auto`."""
  if coordinator_address or num_processes is not None or process_id is not None:
    if not coordinator_address or num_processes is None or process_id is None:
      raise ValueError('multi-host sampling needs all of --coordinator_address, --num_processes and --process_id '
                       '(or --distributed to auto-detect them on TPU/SLURM).')
    if not 0 <= process_id < num_processes:
      raise ValueError(f'--process_id={process_id} must lie in [0, --num_processes={num_processes}).')
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  elif auto:
    jax.distributed.initialize()
