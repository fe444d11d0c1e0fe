"""Resumable sharded outputs of the modes: one `<prefix>_<round>_<host>.npz` per round, a run.json manifest.

A job of `total` items in rounds of `batch` gives round r the items r·B … r·B + B - 1; the rounds go
round-robin to the hosts (`parallel.host_rounds`), each round written atomically, so a restarted job
finds the complete rounds on disk (`finished_rounds`) and does only the rest (`pending_rounds`).
Host 0 waits for every round (`wait_for_rounds`) before it writes the summaries.
"""
from __future__ import annotations

import json
import os
import time
from typing import Dict, List, Tuple

import jax
import numpy as np

from pds_jax import parallel
from pds_jax.io_utils import write_json


def num_rounds(total: int, batch: int) -> int:
  """The rounds of `batch` items that cover `total` items (the last one may be partial)."""
  return -(-total // batch)


def shard_path(folder: str, round_index: int, host: int, prefix: str = 'samples') -> str:
  """folder/<prefix>_<round>_<host>.npz."""
  return os.path.join(folder, f'{prefix}_{round_index}_{host}.npz')


def finished_rounds(folder: str, prefix: str = 'samples') -> Dict[int, str]:
  """Round index -> shard file `<prefix>_<round>_<host>.npz`, for the complete shards in `folder`.

  Shards are written atomically, so a listed name is a complete file; temp files and other names are skipped.
  """
  done, head = {}, prefix + '_'
  for name in os.listdir(folder):
    parts = name[len(head):-len('.npz')].split('_') if name.startswith(head) and name.endswith('.npz') else []
    if len(parts) == 2 and all(p.isdigit() for p in parts):
      done[int(parts[0])] = os.path.join(folder, name)
  return done


def pending_rounds(folder: str, rounds: int, prefix: str = 'samples') -> List[int]:
  """This host's rounds (of `rounds`) whose shard is not yet in `folder`."""
  done = finished_rounds(folder, prefix)
  return [r for r in parallel.host_rounds(rounds) if r not in done]


def check_manifest(folder: str, manifest: Dict) -> None:
  """Writes the run's settings beside its shards (run.json), or checks that existing shards were made with the same.

  Raises ValueError naming the settings that differ.
  """
  path = os.path.join(folder, 'run.json')
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    if old != manifest:
      changed = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
      raise ValueError(f'{folder} holds samples of another run (settings differ in {changed}); '
                       'use another --eval_folder or remove the old shards.')
  elif jax.process_index() == 0:
    write_json(path, manifest)


def wait_for_rounds(folder: str, rounds: int, timeout: float, prefix: str = 'samples') -> Dict[int, str]:
  """Host 0 waits until every round's shard exists (other hosts write theirs); round -> shard file."""
  deadline = time.monotonic() + timeout
  while True:
    done = finished_rounds(folder, prefix)
    missing = [r for r in range(rounds) if r not in done]
    if not missing:
      return done
    if time.monotonic() > deadline:
      raise ValueError(f'timed out after {timeout:.0f} s waiting for rounds {missing[:10]} in {folder}.')
    time.sleep(1.)


def round_indices(r: int, batch: int, total: int) -> Tuple[np.ndarray, int]:
  """Global item indices (batch,) of round r, padded to the batch with the last item, and how many are real."""
  idx = np.arange(r * batch, (r + 1) * batch)
  return np.minimum(idx, total - 1), int(min(batch, total - r * batch))


def as_count(nfe: float):
  """An NFE as an int when it is one (fixed-step methods), else the float mean (the adaptive ODE)."""
  return int(round(nfe)) if abs(nfe - round(nfe)) < 1e-9 else nfe


def load_sample_folder(folder: str) -> Tuple[np.ndarray, Dict]:
  """The uint8 samples (N, H, W, C) of a `sample` output folder and its report.json; ValueError naming the folder."""
  report_path = os.path.join(folder, 'report.json')
  if not os.path.isfile(report_path):
    raise ValueError(f'{folder}: no report.json; pass folders written by --mode sample.')
  with open(report_path) as f:
    report = json.load(f)
  shards = sorted(finished_rounds(folder).items())
  if not shards:
    raise ValueError(f'{folder}: no samples_<round>_<host>.npz files.')
  samples = []
  for _, path in shards:
    with np.load(path) as f:
      samples.append(f['samples'])
  return np.concatenate(samples)[:report['num_samples']], report
