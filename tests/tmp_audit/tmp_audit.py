"""Records what a Python process creates in the system temp folder outside the test session's own roots.

A PEP 578 audit hook (`sys.addaudithook`) sees every file a process creates (`open` with O_CREAT,
`os.mkdir`, the targets of `os.rename` / `os.replace` / `os.symlink` / `os.link`). With
PDS_JAX_TMP_AUDIT=<log file> in the environment, each such path that lies in PDS_JAX_SYSTEM_TMP but
under none of PDS_JAX_TMP_EXCLUDE (os.pathsep-separated: the session's temp root, pytest's root) is
appended to the log, one path per line. The test session's own process installs it from conftest,
its subprocesses through `sitecustomize.py` beside this file (on their PYTHONPATH); see conftest.
"""
import os
import sys
import threading

LOG, SYSTEM_TMP, EXCLUDE = 'PDS_JAX_TMP_AUDIT', 'PDS_JAX_SYSTEM_TMP', 'PDS_JAX_TMP_EXCLUDE'
_PATH_ARG = {'os.mkdir': 0, 'os.rename': 1, 'os.replace': 1, 'os.symlink': 1, 'os.link': 1}


def install(log: str, system_tmp: str, exclude) -> None:
  """Adds the audit hook to this process (it cannot be removed again)."""
  system_tmp = os.path.realpath(system_tmp)
  roots = [system_tmp] + ([os.path.abspath(system_tmp)] if os.path.abspath(system_tmp) != system_tmp else [])
  excluded = tuple(os.path.realpath(e) for e in exclude if e)
  busy = threading.local()  # the hook's own log write is not recorded

  def created(event, args):
    if event == 'open':
      if not isinstance(args[0], (str, bytes, os.PathLike)) or not (args[2] or 0) & os.O_CREAT:
        return None
      return args[0]
    index = _PATH_ARG.get(event)
    return None if index is None else args[index]

  def hook(event, args):
    if getattr(busy, 'on', False) or (event != 'open' and event not in _PATH_ARG):
      return
    path = created(event, args)
    if path is None or isinstance(path, int):
      return
    path = os.path.abspath(os.fsdecode(path))
    if not any(path == r or path.startswith(r + os.sep) for r in roots):
      return
    real = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    if any(real == e or real.startswith(e + os.sep) for e in excluded):
      return
    busy.on = True
    try:
      with open(log, 'a') as f:
        f.write(real + '\n')
    finally:
      busy.on = False

  sys.addaudithook(hook)


def install_from_environment() -> None:
  """`install` with the settings of the environment, when PDS_JAX_TMP_AUDIT is set."""
  if os.environ.get(LOG):
    install(os.environ[LOG], os.environ[SYSTEM_TMP], os.environ.get(EXCLUDE, '').split(os.pathsep))


def escapes(log: str):
  """The logged paths that still exist (sorted, each once)."""
  if not os.path.exists(log):
    return []
  with open(log) as f:
    return sorted({line.rstrip('\n') for line in f if line.strip() and os.path.lexists(line.rstrip('\n'))})
