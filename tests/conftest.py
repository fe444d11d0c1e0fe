"""Shared test setup: a persistent JAX compilation cache, the shared fixtures, and a private temp folder.

The session's own temp root: every temporary file of the session — tempfile in this process and in
the subprocesses the tests start (main.py runs, notebooks, benchmarks: they inherit TMPDIR) — goes
under a folder in pytest's basetemp, which pytest cleans.

The /tmp hygiene check (under CI=true) attributes entries to the session instead of diffing /tmp.
The system temp folder is shared with every other job on the machine, so "/tmp gained an entry
during the session" says nothing about this session: a fresh-clone run with 610 passes failed on
other jobs' files (issue 22, point 10). So every Python process of the session records what it
itself creates in the system temp folder outside the session's roots: this process through a
PEP 578 audit hook (`tests/tmp_audit/tmp_audit.py`: `open` with O_CREAT, `os.mkdir`, the targets of
`os.rename` / `os.replace` / `os.symlink` / `os.link`), the subprocesses through the same hook,
loaded by `tests/tmp_audit/sitecustomize.py` on their PYTHONPATH. The session fails only on the
recorded paths that still exist at its end. Why not the alternatives: name patterns cannot tell
our `tmpXXXXXXXX` from another job's; a fixed --basetemp outside /tmp is wiped at the start of each
session, and several sessions share this tree; and a private mount namespace needs privileges. What
it misses: files that non-Python code (XLA's C++ runtime) creates directly — the session starts no
other programs, and JAX's caches are configured into the repository.
"""
import importlib.util
import os
import pathlib
import tempfile

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / 'shared' / 'fixtures'
SYSTEM_TMP = pathlib.Path(tempfile.gettempdir())
AUDIT_DIR = pathlib.Path(__file__).resolve().parent / 'tmp_audit'
_spec = importlib.util.spec_from_file_location('tmp_audit', AUDIT_DIR / 'tmp_audit.py')
tmp_audit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tmp_audit)

# The test runs of main.py sample on one CPU device: the split over the cores (pds_jax.parallel, the CLI's
# default) compiles other programs, which cost the suite more time than they save at its tiny batches;
# tests/test_cpu_cores.py runs the CLI with the default and with the split forced.
os.environ.setdefault('PDS_JAX_CPU_DEVICES', '1')
jax.config.update('jax_compilation_cache_dir', os.environ.get('JAX_COMPILATION_CACHE_DIR', str(ROOT / '.jax_cache')))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


def basetemp_entry(basetemp: pathlib.Path) -> pathlib.Path:
  """The entry of the system temp folder that holds pytest's basetemp (pytest-of-<user>), or basetemp itself."""
  for path in (basetemp, *basetemp.parents):
    if path.parent == SYSTEM_TMP:
      return path
  return basetemp


def audit_environment(log: pathlib.Path, exclude) -> dict:
  """The environment variables that make a Python subprocess record its escapes into the system temp folder."""
  python_path = os.pathsep.join(p for p in (str(AUDIT_DIR), os.environ.get('PYTHONPATH', '')) if p)
  return {tmp_audit.LOG: str(log), tmp_audit.SYSTEM_TMP: str(SYSTEM_TMP),
          tmp_audit.EXCLUDE: os.pathsep.join(str(e) for e in exclude), 'PYTHONPATH': python_path}


@pytest.fixture(scope='session', autouse=True)
def private_temp_folder(tmp_path_factory):
  """Points TMPDIR (and tempfile) at a session folder under pytest's basetemp; under CI, records and checks
  what the session's processes create in the system temp folder outside it (see the module docstring)."""
  folder = tmp_path_factory.mktemp('tmpdir')
  audit = os.environ.get('CI') == 'true'
  saved = {name: os.environ.get(name) for name in ('TMPDIR', 'PYTHONPATH', tmp_audit.LOG, tmp_audit.SYSTEM_TMP,
                                                    tmp_audit.EXCLUDE)}
  old_tempdir = tempfile.tempdir
  os.environ['TMPDIR'], tempfile.tempdir = str(folder), str(folder)
  log = tmp_path_factory.getbasetemp() / 'tmp_audit.log'
  if audit:
    exclude = (folder, basetemp_entry(tmp_path_factory.getbasetemp()))
    os.environ.update(audit_environment(log, exclude))
    tmp_audit.install(str(log), str(SYSTEM_TMP), [str(e) for e in exclude])
  yield folder
  tempfile.tempdir = old_tempdir
  for name, value in saved.items():
    if value is None:
      os.environ.pop(name, None)
    else:
      os.environ[name] = value
  left = tmp_audit.escapes(str(log))
  if left and audit:
    pytest.fail(f'the test session left files it created in {SYSTEM_TMP}, outside its temp root: {left[:20]}')


@pytest.fixture
def fixtures_dir() -> pathlib.Path:
  if not FIXTURES.is_dir():
    pytest.fail(f'shared fixtures not found at {FIXTURES}; the tests need ../shared/fixtures beside the project.')
  return FIXTURES


_DEVICE_SCRIPT = '''
import sys; sys.path.insert(0, {tests!r})
import importlib, jax, numpy as np
from pds_jax import parallel, sampling
from pds_jax.samplers.driver import Sampler
assert jax.local_device_count() == 4, jax.local_device_count()
keys = sampling.sample_keys(5, 8, 8)
out = {{}}
for name, (solver, score_fn, shape) in getattr(importlib.import_module({module!r}), {cases!r})().items():
  runs = [Sampler(solver, (8,) + tuple(shape), **kw)(keys, score_fn)
          for kw in ({{}}, {{'mesh': parallel.batch_mesh()}}, {{'pmap': True}})]
  out[name] = np.stack([np.asarray(r[0]) for r in runs])
  out[name + '_nfe'] = np.array([r[1] for r in runs], np.float64)
np.savez({out!r}, **out)
'''


def same_samples_on_devices(tmp_path: pathlib.Path, module: str, cases: str, atol=lambda name: 1e-6) -> dict:
  """Samples every case of `<module>.<cases>()` — {name: (solver, score_fn, per-sample shape)} — with 8
  per-sample keys on one device, under shard_map and under pmap over 4 host CPU devices (a subprocess:
  the device count is fixed when JAX starts); asserts the three agree to atol(name) × max|x| and have
  one NFE. Returns {name: NFE}."""
  import subprocess
  import sys

  import numpy as np
  out = tmp_path / 'devices.npz'
  script = _DEVICE_SCRIPT.format(tests=str(ROOT / 'tests'), module=module, cases=cases, out=str(out))
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4', JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  nfe = {}
  with np.load(out) as f:
    names = [name for name in f.files if not name.endswith('_nfe')]
    for name in names:
      single, sharded, pmapped = f[name]
      tolerance = atol(name) * np.abs(single).max()
      np.testing.assert_allclose(sharded, single, rtol=0, atol=tolerance, err_msg=name)
      np.testing.assert_allclose(pmapped, single, rtol=0, atol=tolerance, err_msg=name)
      assert len(set(f[name + '_nfe'])) == 1, (name, f[name + '_nfe'])
      nfe[name] = int(f[name + '_nfe'][0])
  return nfe


def gaussian8_config(num_scales=None, **sampling_fields):
  """configs/gaussian/natural_32 at 8×8 (the exact natural-spectrum Gaussian), with config.sampling.<name> = value."""
  from configs.gaussian.natural_32 import get_config
  config = get_config()
  config.data.image_size = 8
  if num_scales is not None:
    config.model.num_scales = num_scales
  for name, value in sampling_fields.items():
    config.sampling[name] = value
  return config
