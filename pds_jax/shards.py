"""Resumable sharded outputs of the modes: one `<prefix>_<round>_<host>.npz` per round, a run.json manifest.

A job of `total` items in rounds of `batch` gives round r the items r·B … r·B + B - 1, item i drawn
with the key fold_in(PRNGKey(seed), i); the rounds go round-robin to the hosts
(`parallel.host_rounds`), each round written atomically, so a restarted job finds the complete
rounds on disk (`finished_rounds`) and does only the rest (`pending_rounds`). Host 0 waits for
every round (`wait_for_rounds`) before it writes the summaries. `run_rounds` is that loop, once,
for every mode that writes shards (sample, likelihood, inpaint, colorize); `write_shard` is the one
shard writer (score_sde's uint8 `samples` beside float32 `samples_float`).

run.json (the job's settings) is written just before the job's first shard, so a call that fails
before any shard exists leaves no manifest that could refuse the corrected rerun; a manifest
beside no shards is from such a call (or an older version) and counts as absent.
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import jax
import numpy as np

from pds_jax import parallel
from pds_jax.io_utils import write_json, write_npz

MANIFEST = 'run.json'


class Round(NamedTuple):
  """Round `index` of a job: items index·B … index·B + B - 1 (`items`, padded with the job's last item)."""
  index: int
  items: np.ndarray  # (B,) global item indices
  real: int  # how many of `items` are real (the last round may be partial)
  keys: jax.Array  # (B, 2) per-item keys fold_in(PRNGKey(seed), i) (`sampling.sample_keys`), not yet placed


class Interrupted(KeyboardInterrupt):
  """Ctrl-C during `run_rounds`; str() is the one line to show (how many rounds are on disk, how to resume)."""


class Finished(NamedTuple):
  """What `run_rounds` hands host 0: every round's shard file in round order, this run's seconds per round."""
  files: List[str]
  seconds: List[float]


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
  for name in (os.listdir(folder) if os.path.isdir(folder) else ()):
    parts = name[len(head):-len('.npz')].split('_') if name.startswith(head) and name.endswith('.npz') else []
    if len(parts) == 2 and all(p.isdigit() for p in parts):
      done[int(parts[0])] = os.path.join(folder, name)
  return done


def pending_rounds(folder: str, rounds: int, prefix: str = 'samples') -> List[int]:
  """This host's rounds (of `rounds`) whose shard is not yet in `folder`."""
  done = finished_rounds(folder, prefix)
  return [r for r in parallel.host_rounds(rounds) if r not in done]


def check_manifest(folder: str, manifest: Dict, prefix: str = 'samples') -> bool:
  """Whether `folder`'s run.json already equals `manifest` (the settings of the job about to run).

  Raises ValueError naming the settings that differ when shards of `prefix` exist and were made
  with other settings. A run.json beside no shards (a call that stopped before its first shard) is
  ignored, so it never blocks the corrected rerun; `write_manifest` later replaces it.
  """
  path = os.path.join(folder, MANIFEST)
  if not os.path.exists(path):
    return False
  with open(path) as f:
    old = json.load(f)
  if old == manifest:
    return True
  if finished_rounds(folder, prefix):
    changed = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
    raise ValueError(f'{folder} holds samples of another run (settings differ in {changed}); '
                     'use another --eval_folder or remove the old shards.')
  return False


def write_manifest(folder: str, manifest: Dict) -> None:
  """folder/run.json, atomically (host 0 only)."""
  if jax.process_index() == 0:
    write_json(os.path.join(folder, MANIFEST), manifest)


def write_shard(path: str, samples: Optional[np.ndarray] = None, **arrays) -> None:
  """One round's shard, atomically: images `samples` (B, H, W, C) in [0, 1] as score_sde writes them
  (uint8 `samples` = clip(255 x)) beside float32 `samples_float`, and the other `arrays` as given."""
  if samples is not None:
    samples = np.asarray(samples, np.float32)
    arrays = dict(samples=np.clip(samples * 255., 0, 255).astype(np.uint8), samples_float=samples, **arrays)
  write_npz(path, **arrays)


def _duration(seconds: float) -> str:
  if seconds < 120:
    return f'{seconds:.1f} s' if seconds < 10 else f'{seconds:.0f} s'
  return f'{seconds / 60:.0f} min' if seconds < 7200 else f'{seconds / 3600:.1f} h'


def run_rounds(folder: str, manifest: Dict, total: int, batch: int, round_fn: Callable[[Round], Dict[str, np.ndarray]],
               *, seed: int, prefix: str = 'samples', what: str = 'samples', wait_timeout: float = 24 * 3600.,
               postfix: Optional[Callable[[Dict[str, np.ndarray]], Dict]] = None) -> Optional[Finished]:
  """The resumable round loop of every mode that writes shards: `total` items in rounds of `batch`.

  Checks `manifest` against the shards already in `folder` (`check_manifest`), prints the job's
  size, then runs this host's pending rounds (`pending_rounds`) with a progress bar over the items:
  `round_fn(Round)` returns the round's arrays, written by `write_shard` to
  folder/<prefix>_<round>_<host>.npz (run.json just before the job's first shard). After the first
  round it prints an estimate of the rest. Ctrl-C raises `Interrupted` (nothing is half-written:
  every file is atomic). Host 0 then waits for the other hosts' rounds and gets `Finished`; the
  other hosts get None. `postfix(arrays)` sets the bar's postfix after each round.
  """
  from tqdm.auto import tqdm

  from pds_jax import sampling
  rounds, host = num_rounds(total, batch), jax.process_index()
  has_manifest = check_manifest(folder, manifest, prefix)
  todo = pending_rounds(folder, rounds, prefix)
  on_disk = len(finished_rounds(folder, prefix))
  hosts = f' on {jax.process_count()} hosts' if jax.process_count() > 1 else ''
  print(f'{total} {what} in {rounds} round{"s" * (rounds > 1)} of {batch}{hosts}: {len(todo)} to run here'
        + (f', {on_disk} already in {folder}' if on_disk else ''), flush=True)
  seconds = []
  bar = tqdm(total=sum(round_indices(r, batch, total)[1] for r in todo), desc=f'{what} (host {host})', unit=what[:-1]
             if what.endswith('s') else what, dynamic_ncols=True)
  try:
    for r in todo:
      start = time.perf_counter()
      items, real = round_indices(r, batch, total)
      arrays = round_fn(Round(r, items, real, sampling.sample_keys(seed, r * batch, batch)))
      if not has_manifest:
        write_manifest(folder, manifest)
        has_manifest = True
      write_shard(shard_path(folder, r, host, prefix), **arrays)
      seconds.append(time.perf_counter() - start)
      bar.update(real)
      if postfix is not None:
        bar.set_postfix(postfix(arrays))
      if len(seconds) == 1:
        rest = len(todo) - 1
        bar.write(f'first round: {_duration(seconds[0])} including compilation'
                  + (f'; the other {rest} round{"s" * (rest > 1)} here: at most about {_duration(rest * seconds[0])}'
                     if rest else ''))
  except KeyboardInterrupt:
    bar.close()
    done = len(finished_rounds(folder, prefix))
    raise Interrupted(f'interrupted after {done} of {rounds} rounds; rerun the same command to resume') from None
  bar.close()
  if host != 0:
    return None
  if not has_manifest:  # host 0 ran no round: the other hosts' shards, or shards from before run.json existed
    write_manifest(folder, manifest)
  try:
    done = wait_for_rounds(folder, rounds, wait_timeout, prefix)
  except KeyboardInterrupt:
    raise Interrupted(f'interrupted while waiting for the other hosts ({len(finished_rounds(folder, prefix))} of '
                      f'{rounds} rounds on disk); rerun the same command to resume') from None
  return Finished([done[r] for r in range(rounds)], seconds)


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


def sample_summary(files: List[str], total: int, num_preview: int = 64):
  """Streams over a sample job's shards (memory independent of `total`): (`gaussian.MomentAccumulator`
  of the first `total` samples, the first `num_preview` of them (N, H, W, C), the mean NFE per sample)."""
  from pds_jax import gaussian
  accumulator, preview, remaining, nfe_total = gaussian.MomentAccumulator(), [], total, 0.
  for path in files:
    with np.load(path) as f:
      samples = f['samples_float'][:remaining]
      nfe_total += float(f['nfe']) * len(samples)  # the adaptive ODE's NFE differs per round
    remaining -= len(samples)
    accumulator.add(samples)
    preview.append(samples[:max(0, num_preview - sum(len(p) for p in preview))])
  return accumulator, np.concatenate(preview), as_count(nfe_total / accumulator.count)


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
