"""Shared test setup: a persistent JAX compilation cache, the shared fixtures, and a private temp folder.

Every temporary file of the session — tempfile in this process and in the subprocesses the tests
start (main.py runs, notebooks, benchmarks: they inherit TMPDIR) — goes under pytest's own temporary
folder, which pytest cleans. Under CI (CI=true) the session fails if the system temp folder gained
an entry anyway.
"""
import os
import pathlib
import tempfile

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / 'shared' / 'fixtures'
SYSTEM_TMP = pathlib.Path(tempfile.gettempdir())

jax.config.update('jax_compilation_cache_dir', os.environ.get('JAX_COMPILATION_CACHE_DIR', str(ROOT / '.jax_cache')))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


@pytest.fixture(scope='session', autouse=True)
def private_temp_folder(tmp_path_factory):
  """Points TMPDIR (and tempfile) at a session folder under pytest's basetemp; checks /tmp under CI."""
  before = set(os.listdir(SYSTEM_TMP))
  folder = tmp_path_factory.mktemp('tmpdir')
  old_env, old_tempdir = os.environ.get('TMPDIR'), tempfile.tempdir
  os.environ['TMPDIR'], tempfile.tempdir = str(folder), str(folder)
  yield folder
  tempfile.tempdir = old_tempdir
  if old_env is None:
    del os.environ['TMPDIR']
  else:
    os.environ['TMPDIR'] = old_env
  basetemp = tmp_path_factory.getbasetemp()
  new = sorted(name for name in set(os.listdir(SYSTEM_TMP)) - before
               if not (SYSTEM_TMP / name) in (basetemp, *basetemp.parents))
  if new and os.environ.get('CI') == 'true':
    pytest.fail(f'the test session left new entries in {SYSTEM_TMP}: {new[:20]}')


@pytest.fixture
def fixtures_dir() -> pathlib.Path:
  if not FIXTURES.is_dir():
    pytest.fail(f'shared fixtures not found at {FIXTURES}; the tests need ../shared/fixtures beside the project.')
  return FIXTURES
