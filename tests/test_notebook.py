"""notebooks/pds_quickstart.ipynb runs top to bottom (its PDS_NOTEBOOK_QUICK smoke setting)."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT


@pytest.mark.slow  # ~90 CPU-s: the whole notebook in a kernel
def test_quickstart_notebook_executes():
  notebook = nbformat.read(ROOT / 'notebooks' / 'pds_quickstart.ipynb', as_version=4)
  os.environ['PDS_NOTEBOOK_QUICK'] = '1'
  os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', str(ROOT / '.jax_cache'))
  try:
    NotebookClient(notebook, timeout=600, kernel_name='python3',
                   resources={'metadata': {'path': str(ROOT / 'notebooks')}}).execute()
  finally:
    del os.environ['PDS_NOTEBOOK_QUICK']
  outputs = '\n'.join(o.get('text', '') for cell in notebook.cells if cell.cell_type == 'code'
                      for o in cell.get('outputs', []))
  assert 'score evaluations' in outputs and 'vanilla' in outputs
  images = [o for cell in notebook.cells for o in cell.get('outputs', []) if 'image/png' in o.get('data', {})]
  assert len(images) >= 3  # masks, grids, metric-vs-steps curve

