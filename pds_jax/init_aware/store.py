"""The init-aware q_T on disk: `fit_init` (run_lib) writes q_T and σ_T, every sampler reads them back.

`sampling.init` chooses x_T's distribution for every method (`pds_jax.sampling.get_sampling_fn`):
'prior' (the SDE's prior at T) or one of `INITS` at σ_T, read from `init_folder(config, workdir)`.
fit_init writes only to `fit_folder(workdir)` = <workdir>/init; `sampling.init_path` is read-only
(the shipped config points it at the init inside the package), and nothing is ever written under
the installed package (`save_init` refuses it).

Files in the init folder: init.json (kind, σ_T, the data shape, metrics), plus
spectral_gaussian.npz (μ, λ + σ_T² of `SpectralGaussianInit`), flow.msgpack (`flow_training`)
or empirical.npz (the clean images x_0 of the oracle).
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional, Tuple

import jax.numpy as jnp
import numpy as np

from pds_jax.gaussian import GaussianReference
from pds_jax.init_aware import flow_training, inits
from pds_jax.io_utils import atomic_write

PRIOR = 'prior'
INITS = inits.KINDS
FIT_DEFAULT = 'spectral_gaussian'  # what fit_init fits, and the init_aware alias uses, for init = 'prior'
_FILES = {'spectral_gaussian': 'spectral_gaussian.npz', 'flow': 'flow.msgpack', 'empirical': 'empirical.npz'}


def fit_folder(workdir: str) -> str:
  """Where --mode fit_init writes q_T: <workdir>/init (never sampling.init_path)."""
  return os.path.join(workdir, 'init')


def init_folder(config, workdir: str) -> str:
  """Where sampling reads q_T: <workdir>/init when fit_init wrote one there (it holds init.json),
  else sampling.init_path when set (the shipped config: the shipped init), else <workdir>/init
  (whose missing init.json the loader then names)."""
  own = fit_folder(workdir)
  if os.path.isfile(os.path.join(own, 'init.json')) or not config.sampling.init_path:
    return own
  return config.sampling.init_path


def _package_root() -> str:
  return os.path.dirname(os.path.dirname(os.path.realpath(os.path.abspath(__file__))))


def check_writable(folder: str) -> None:
  """ValueError when `folder` lies inside the installed pds_jax package (its shipped assets are read-only)."""
  root, target = _package_root(), os.path.realpath(os.path.abspath(folder))
  if os.path.commonpath([root, target]) == root:
    raise ValueError(f'{folder}: inside the installed package {root}, whose files (the shipped model and init) '
                     'are never written; choose a --workdir outside it.')


def save_init(folder: str, kind: str, init, sigma_t: float, shape: Tuple[int, ...], info: Dict,
              history: Optional[Dict] = None) -> str:
  """Writes q_T (its file and init.json) atomically; returns the init.json path. Refuses a folder
  inside the installed package (`check_writable`)."""
  check_writable(folder)
  os.makedirs(folder, exist_ok=True)
  if kind in _FILES:
    path = os.path.join(folder, _FILES[kind])
    if kind == 'flow':
      flow_training.save_flow(path, init, history)
    else:
      arrays = ({'mean': np.asarray(init.noised.mean), 'spectrum': np.asarray(init.noised.spectrum)}
                if kind == 'spectral_gaussian' else {'data': np.asarray(init.data)})
      atomic_write(path, lambda f: np.savez(f, **arrays))
  manifest = {'init': kind, 'sigma_t': float(sigma_t), 'shape': list(shape), **info}
  json_path = os.path.join(folder, 'init.json')
  atomic_write(json_path, lambda f: f.write(json.dumps(manifest, indent=2).encode()))
  return json_path


def stored_kind(folder: str) -> Optional[str]:
  """The kind of q_T a fit_init folder holds (its init.json), or None when it holds none."""
  json_path = os.path.join(folder, 'init.json')
  if not os.path.isfile(json_path):
    return None
  with open(json_path) as f:
    return json.load(f).get('init')


def load_init(folder: str, kind: str, shape: Tuple[int, ...]) -> Tuple[inits.InitDistribution, float]:
  """(q_T, σ_T) of `kind` from a fit_init folder; errors name the folder, file and shapes."""
  json_path = os.path.join(folder, 'init.json')
  if not os.path.isfile(json_path):
    raise ValueError(f'{json_path}: not found; run --mode fit_init with --config.sampling.init={kind} and this '
                     '--workdir first (it writes <workdir>/init), or point --config.sampling.init_path at an init '
                     'folder.')
  with open(json_path) as f:
    manifest = json.load(f)
  if manifest['init'] != kind:
    raise ValueError(f'{json_path} holds a {manifest["init"]!r} init; config.sampling.init is {kind!r}.')
  if tuple(manifest['shape']) != tuple(shape):
    raise ValueError(f'{json_path}: the init was fitted to data of shape {tuple(manifest["shape"])}, '
                     f'the model samples {tuple(shape)}.')
  sigma_t = float(manifest['sigma_t'])
  if kind == 'gaussian':
    return inits.IsotropicGaussianInit.create(sigma_t, shape), sigma_t
  path = os.path.join(folder, _FILES[kind])
  if not os.path.isfile(path):
    raise ValueError(f'{path}: the {kind} init file is missing (init.json is there).')
  if kind == 'flow':
    return flow_training.load_flow(path, expected_shape=shape), sigma_t
  with np.load(path) as f:
    if kind == 'spectral_gaussian':
      noised = GaussianReference(mean=jnp.asarray(f['mean']), spectrum=jnp.asarray(f['spectrum']))
      return inits.SpectralGaussianInit(noised), sigma_t
    return inits.EmpiricalInit.create(f['data'], sigma_t), sigma_t
