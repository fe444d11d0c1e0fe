"""The session's /tmp hygiene check (conftest) blames the session's own processes only (issue 22, point 10)."""
import os
import subprocess
import sys
import uuid

from conftest import SYSTEM_TMP, audit_environment, tmp_audit

WRITE = '''
import os, sys, tempfile
folder = sys.argv[1]
open(os.path.join(folder, sys.argv[2] + '.txt'), 'w').close()   # a file created in the system temp folder
os.mkdir(os.path.join(folder, sys.argv[2] + '.d'))              # and a folder
open(os.path.join(tempfile.gettempdir(), sys.argv[2] + '.ok'), 'w').close()  # through TMPDIR: the session's root
'''


def _write(env, name):
  subprocess.run([sys.executable, '-c', WRITE, str(SYSTEM_TMP), name], env=env, check=True, timeout=120)


def test_only_what_the_session_s_processes_leave_in_the_system_temp_folder_counts(tmp_path):
  log, root = tmp_path / 'audit.log', tmp_path / 'root'
  root.mkdir()
  ours, foreign = f'pds_jax_test_{uuid.uuid4().hex}', f'other_job_{uuid.uuid4().hex}'
  names = [SYSTEM_TMP / f'{n}{suffix}' for n in (ours, foreign) for suffix in ('.txt', '.d')]
  try:
    session_env = dict(os.environ, TMPDIR=str(root), **audit_environment(log, [root]))
    _write(session_env, ours)
    # another job on the machine: a process that is not the session's (no audit hook), at the same time
    other_env = {k: v for k, v in os.environ.items() if k not in (tmp_audit.LOG, tmp_audit.SYSTEM_TMP,
                                                                  tmp_audit.EXCLUDE, 'PYTHONPATH')}
    _write(dict(other_env, TMPDIR=str(SYSTEM_TMP)), foreign)
    assert tmp_audit.escapes(str(log)) == sorted(str(SYSTEM_TMP / f'{ours}{s}') for s in ('.d', '.txt'))
    assert (root / f'{ours}.ok').is_file()  # the session's own root is not an escape
    os.remove(SYSTEM_TMP / f'{ours}.txt')
    os.rmdir(SYSTEM_TMP / f'{ours}.d')
    assert tmp_audit.escapes(str(log)) == []  # cleaned up: nothing left
  finally:
    for path in names + [SYSTEM_TMP / f'{foreign}.ok']:
      if path.is_dir():
        os.rmdir(path)
      elif path.exists():
        os.remove(path)
