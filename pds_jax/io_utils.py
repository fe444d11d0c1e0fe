"""Crash-safe file writing shared by checkpoints, masks and sampler outputs."""
import os
import tempfile
from typing import BinaryIO, Callable


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
