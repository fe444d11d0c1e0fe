"""Shared test setup: a persistent JAX compilation cache and the paths of the shared fixtures."""
import os
import pathlib

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / 'shared' / 'fixtures'

jax.config.update('jax_compilation_cache_dir', os.environ.get('JAX_COMPILATION_CACHE_DIR', str(ROOT / '.jax_cache')))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


@pytest.fixture
def fixtures_dir() -> pathlib.Path:
  if not FIXTURES.is_dir():
    pytest.fail(f'shared fixtures not found at {FIXTURES}; the tests need ../shared/fixtures beside the project.')
  return FIXTURES
