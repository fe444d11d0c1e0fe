"""Crash-safe file writing shared by checkpoints, masks and the modes' outputs (JSON, npz, PNG)."""
import json
import os
import tempfile
from typing import BinaryIO, Callable

import numpy as np


def _fsync_folder(folder: str) -> None:
  fd = os.open(folder, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
  """Writes `path` through `write(f)` without ever leaving a partial file under that name.

  The bytes go to a hidden `.<name>.<random>.tmp` in the same folder, are fsynced, renamed over
  `path` (atomic on POSIX) and the folder is fsynced; on any error the temp file is removed and
  an existing `path` is left untouched.
  """
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  _fsync_folder(folder)


def write_json(path: str, obj) -> None:
  """`obj` as indented, key-sorted JSON, written atomically."""
  atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True).encode()))


def write_npz(path: str, **arrays) -> None:
  """`np.savez_compressed(path, **arrays)`, written atomically."""
  atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def write_png(path: str, image: np.ndarray) -> None:
  """A uint8 (H, W, 3) or (H, W) array as a PNG, written atomically."""
  from PIL import Image
  atomic_write(path, lambda f: Image.fromarray(image).save(f, format='PNG'))


def output_folder(workdir: str, name: str, create: bool = True) -> str:
  """workdir/<name>, checked to be creatable and writable; a ValueError naming the folder when it is not.

  With create=False the folders this check had to make are removed again, so a call refused later
  leaves no empty output folder behind; the first atomic write (`atomic_write`) creates them.
  """
  folder = os.path.join(workdir, name)
  missing, path = [], os.path.abspath(folder)
  while not os.path.exists(path) and path != os.path.dirname(path):
    missing.append(path)  # deepest first
    path = os.path.dirname(path)
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise ValueError(f'cannot create the output folder {folder}: {e}') from e
  writable = os.access(folder, os.W_OK)
  if not create:
    for path in missing:
      try:
        os.rmdir(path)
      except OSError:  # another host's files arrived meanwhile
        break
  if not writable:
    raise ValueError(f'the output folder {folder} is not writable.')
  return folder
