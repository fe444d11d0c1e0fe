"""Why fast deterministic solvers return noise samples on the shipped VE model, and which start fixes it.

The shipped model (configs/default_model.py: a small NCSN++ on 32² natural patches, VESDE σ_max 50).
1. Denoiser error per σ: E|D(x_0 + σ ε, σ) - x_0|² per dimension on held-out patches, for the model
   and for the best linear denoiser (the Wiener filter of the patches' stationary Gaussian fit,
   `GaussianReference.from_images`, whose exact score gives it): where the model is worse than a
   linear filter, it has not learnt that noise level.
2. The start of the reverse ODE: x_T drawn from
     prior       N(0, σ_max² I)                    score_sde's prior (the current default)
     centred     N(μ, σ_max² I), μ the patches' mean colour
     gaussian_T  the patches' Gaussian fit noised to σ_max: N(μ, Σ + σ_max² I) (≈ p_T)
     spectral    the shipped q_T at its σ_T (3.5; init_aware)
   and, for each, the denoiser's input statistics at σ_max (how far x_T is from what it was
   trained on) and the fraction of noise samples of heun (18 nodes, 35 NFE) and DPM-Solver++(3M)
   (20 nodes): a sample is noise when its high-pass energy (the mean square of x - its 3×3 box
   blur) exceeds 5 × the largest of 2000 real patches.

  python -m benchmarks.noise_samples                      # 200 samples (results/noise_samples.json)
  python -m benchmarks.noise_samples --num_samples 16 --quick
  python -m benchmarks.noise_samples --starts spectral --out results/noise_samples_spectral.json
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pds_jax import datasets, gaussian, sampling, sampling_run, sde_lib
from pds_jax.init_aware import store
from pds_jax.samplers import grid

STARTS = ('prior', 'centred', 'gaussian_T', 'spectral')
METHODS = {'heun': {'method': 'heun', 'num_steps': 18},
           'dpm++3m': {'method': 'dpm_solver', 'dpm_solver_variant': 'dpm_solver++', 'solver_order': 3,
                       'num_steps': 20}}
NOISE_FACTOR = 5.


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--num_samples', type=int, default=200)
  p.add_argument('--num_patches', type=int, default=2000, help='real patches: the threshold and the Gaussian fit')
  p.add_argument('--num_sigmas', type=int, default=16)
  p.add_argument('--starts', default=','.join(STARTS), help='the starts to run, of ' + ', '.join(STARTS))
  p.add_argument('--methods', default=','.join(METHODS), help='the methods to run, of ' + ', '.join(METHODS))
  p.add_argument('--quick', action='store_true', help='8 σ values, 256 patches, fewer nodes')
  p.add_argument('--seed', type=int, default=9)
  p.add_argument('--out', default=None)
  args = p.parse_args(argv)
  if args.quick:
    args.num_sigmas, args.num_patches = 8, 256
  return args


def high_pass_energy(images: np.ndarray) -> np.ndarray:
  """(N,) mean square of x - box3(x): the energy a 3×3 blur removes (pixel noise lives there)."""
  x = np.asarray(images, np.float64)
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='reflect')
  blur = sum(padded[:, i:i + x.shape[1], j:j + x.shape[2]] for i in range(3) for j in range(3)) / 9.
  return ((x - blur) ** 2).mean(axis=(1, 2, 3))


def denoiser_errors(denoise, images: np.ndarray, sigmas: np.ndarray, seed: int, batch: int = 100) -> np.ndarray:
  """(len(sigmas),) E|D(x_0 + σ ε, σ) - x_0|² per dimension over `images` (model variable)."""
  errors = []
  jitted = jax.jit(denoise)
  for k, sigma in enumerate(sigmas):
    total = 0.
    for start in range(0, len(images), batch):
      x0 = jnp.asarray(images[start:start + batch])
      noise = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(seed), k * 100000 + start), x0.shape)
      out = jitted(x0 + sigma * noise, jnp.full((x0.shape[0],), sigma, jnp.float32))
      total += float(jnp.sum((out - x0) ** 2))
    errors.append(total / images.size)
  return np.asarray(errors)


def run(args) -> dict:
  from configs.default_model import get_config
  config = get_config()
  config.sampling.freq_mask_path = config.sampling.space_mask_path = None
  config.sampling.num_chunks = 1
  sde, eps = sde_lib.get_sde(config)
  score_fn, info = sampling_run.get_score_fn(config, None, sde)
  scaler, inverse = datasets.get_data_scaler(config), datasets.get_data_inverse_scaler(config)
  real = np.concatenate(list(datasets.iterate_images(config, 'eval', 500, seed=args.seed)))[:args.num_patches]
  train = np.concatenate(list(datasets.iterate_images(config, 'train', 500, seed=args.seed)))[:args.num_patches]
  held_out = np.asarray(scaler(real[:256]), np.float32)
  fit = gaussian.GaussianReference.from_images(np.asarray(scaler(train), np.float32))
  threshold = NOISE_FACTOR * float(high_pass_energy(real).max())
  sigma_max = float(sde.edm_sigma(np.float64(sde.T)))
  sigma_min = float(sde.edm_sigma(np.float64(eps)))

  t0 = time.time()
  sigmas = np.geomspace(sigma_min * 2, sigma_max, args.num_sigmas)
  model_err = denoiser_errors(grid.denoiser_from_score(score_fn, sde), held_out, sigmas, args.seed)
  wiener_err = denoiser_errors(grid.denoiser_from_score(fit.score_fn(sde), sde), held_out, sigmas, args.seed)
  print(f'denoiser errors ({time.time() - t0:.0f} s)', flush=True)
  for s, m, w in zip(sigmas, model_err, wiener_err):
    print(f'  sigma {s:8.3f}  model {m:.4g}  wiener {w:.4g}  ratio {m / w:.3f}', flush=True)

  n = args.num_samples
  shape = (n,) + tuple(held_out.shape[1:])
  keys = sampling.sample_keys(args.seed, 0, n)
  noise = jax.vmap(lambda k: jax.random.normal(k, shape[1:]))(keys)
  mu = jnp.broadcast_to(jnp.asarray(fit.mean), shape[1:])
  starts = {'prior': sigma_max * noise, 'centred': mu + sigma_max * noise,
            'gaussian_T': gaussian.GaussianReference(fit.mean, fit.spectrum + sigma_max ** 2).sample(
                jax.random.PRNGKey(args.seed), n)}
  q_t, sigma_t = store.load_init(config.sampling.init_path, 'spectral_gaussian', shape[1:])
  starts['spectral'] = jax.vmap(lambda k: q_t.sample(k, 1)[0])(keys)
  # what the denoiser sees at its first call: the input's mean colour and per-pixel std against training's
  start_stats = {name: {'mean': float(jnp.mean(x)), 'std': float(jnp.std(x))} for name, x in starts.items()}
  trained = held_out + sigma_max * np.asarray(jax.random.normal(jax.random.PRNGKey(args.seed + 1), held_out.shape))
  start_stats['trained_at_sigma_max'] = {'mean': float(trained.mean()), 'std': float(trained.std())}

  results: Dict[str, Dict[str, dict]] = {}
  for method in args.methods.split(','):
    fields = METHODS[method]
    for start in args.starts.split(','):
      x_t = starts[start]
      c = ml_collections.ConfigDict(config.to_dict())
      for k, v in fields.items():
        c.sampling[k] = v
      init = (q_t, sigma_t) if start == 'spectral' else None
      c.sampling.init = 'spectral_gaussian' if start == 'spectral' else 'prior'
      if args.quick:
        c.sampling.num_steps = 6
      fn = sampling.get_sampling_fn(c, sde, shape, inverse, eps, init=init)
      t0 = time.time()
      samples, nfe = fn(keys, score_fn, x_init=jnp.asarray(x_t))
      samples = np.asarray(samples)
      energy = high_pass_energy(samples)
      results.setdefault(method, {})[start] = {
          'nfe': nfe, 'noise_fraction': float(np.mean(energy > threshold)),
          'median_high_pass': float(np.median(energy)), 'seconds': time.time() - t0}
      print(f'{method:8s} {start:10s} nfe {nfe}: noise samples {np.mean(energy > threshold):.1%} '
            f'({time.time() - t0:.0f} s)', flush=True)
  return {'num_samples': n, 'seed': args.seed, 'threshold': threshold, 'sigma_max': sigma_max,
          'sigmas': sigmas.tolist(), 'model_error': model_err.tolist(), 'wiener_error': wiener_err.tolist(),
          'start_stats': start_stats, 'results': results, 'model': info}


def main(argv: Optional[Sequence[str]] = None) -> dict:
  args = parse_args(argv)
  payload = run(args)
  out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results',
                                 'noise_samples' + ('_quick' if args.quick else '') + '.json')
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, 'w') as f:
    json.dump(payload, f, indent=1)
  print('wrote', out)
  return payload


if __name__ == '__main__':
  main()
