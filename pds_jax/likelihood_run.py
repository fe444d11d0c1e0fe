"""A bits/dim job built from a config (`--mode likelihood`): checks, the images, the score, one round, the report.

`LikelihoodRun(config, workdir)` validates config.likelihood and config.eval, finds the images and
restores the model before any compute; `shards.run_rounds` then calls `round` per round of
images, and host 0 merges the round files with `report`. score_sde's `eval.enable_bpd`, with
per-image keys: image i uses fold_in(PRNGKey(seed), i), split into its Hutchinson noise and its
dequantization noise (`likelihood.image_keys`), so its bits/dim do not depend on its batch.
"""
from __future__ import annotations

from typing import Dict, List

import jax
import jax.numpy as jnp
import numpy as np

from pds_jax import datasets, likelihood as likelihood_lib, parallel as parallel_lib, sde_lib, shards
from pds_jax.references import EvalImages, gaussian_reference, in_model_range, is_gaussian_reference
from pds_jax.sampling_run import get_score_fn, validate_eval_batch

DEQUANTIZATIONS = ('uniform', 'none')
EMPTY_EVAL_SPLIT_FIX = 'measure the training images instead with --config.eval.bpd_dataset=train.'


class LikelihoodRun:
  """Everything `--mode likelihood` needs, built and validated before any compute starts.

  Images: the split eval.bpd_dataset ('test' = the eval split, or 'train') of config.data (repeated
  when eval.num_samples exceeds it), or, for the Gaussian reference, exact draws of its data law.
  A round holds min(eval.batch_size, num_samples rounded up to the local devices) images, so a
  small job computes only the images asked for.
  """

  def __init__(self, config, workdir: str):
    validate_eval_batch(config)
    lk = config.likelihood
    self.dequantization = lk.dequantization or ('none' if is_gaussian_reference(config) else 'uniform')
    if self.dequantization not in DEQUANTIZATIONS:
      raise ValueError(f'config.likelihood.dequantization = {self.dequantization!r}; choose one of {DEQUANTIZATIONS}.')
    if config.eval.bpd_dataset.lower() not in ('test', 'train'):
      raise ValueError(f"config.eval.bpd_dataset = {config.eval.bpd_dataset!r}; choose 'test' (the eval split) or "
                       "'train'.")
    split = 'eval' if config.eval.bpd_dataset.lower() == 'test' else 'train'
    self.config, self.sde = config, sde_lib.get_sde(config)[0]
    self.fn = likelihood_lib.get_likelihood_fn(self.sde, datasets.get_data_inverse_scaler(config), lk.hutchinson_type,
                                               lk.rtol, lk.atol, lk.method, lk.eps, lk.max_steps,
                                               **parallel_lib.sampler_devices(config.eval.parallel))
    self.images = EvalImages(config, split, empty_split_fix=EMPTY_EVAL_SPLIT_FIX)
    self.total = config.eval.num_samples
    devices = jax.local_device_count()
    self.batch = min(config.eval.batch_size, -(-self.total // devices) * devices)
    self.images.check(self.total)
    self.score_fn, info = get_score_fn(config, workdir, self.sde)
    self.scaler = datasets.get_data_scaler(config)
    self.exact = None
    if is_gaussian_reference(config):
      reference = gaussian_reference(config)
      self.exact = (reference, in_model_range(config, reference))
    self.settings = {'mode': 'likelihood', 'sde': type(self.sde).__name__, 'hutchinson_type': lk.hutchinson_type,
                     'rtol': lk.rtol, 'atol': lk.atol, 'method': lk.method, 'eps': lk.eps, 'max_steps': lk.max_steps,
                     'dequantization': self.dequantization, 'offset': self.fn.offset, 'images': self.images.name,
                     'split': split, 'batch_size': self.batch, 'seed': config.seed, **info}
    self._seen = []

  def round(self, r: shards.Round) -> Dict[str, np.ndarray]:
    """One round's shard: per-image `bpd`, `image_index`, the round's mean `nfe` and, for the Gaussian
    reference, `bpd_exact` (the exact −log2 p(x)/D + offset of the data law) and `bpd_exact_eps`
    (that of its marginal at eps, which the ODE integrates from)."""
    x = self.images.read(r.items)
    hutchinson_keys, dequantization_keys = likelihood_lib.image_keys(r.keys)
    if self.dequantization == 'uniform':
      x = np.asarray(likelihood_lib.uniform_dequantize(jnp.asarray(x), dequantization_keys))
    bpd, _, nfe = self.fn(parallel_lib.place_keys(hutchinson_keys, self.config.eval.parallel), self.score_fn,
                          self.scaler(x))
    shard = {'bpd': np.asarray(bpd, np.float64)[:r.real], 'image_index': r.items[:r.real], 'nfe': np.float64(nfe)}
    if self.exact is not None:
      dim = np.log(2.) * np.prod(x.shape[1:])
      shard['bpd_exact'] = -self.exact[0].log_prob(x[:r.real]) / dim + likelihood_lib.BITS_OFFSET_8BIT
      shard['bpd_exact_eps'] = (-self.exact[1].log_prob(self.scaler(x[:r.real]), self.sde, self.config.likelihood.eps)
                                / dim + self.fn.offset)
    return shard

  def postfix(self, shard: Dict[str, np.ndarray]) -> Dict[str, str]:
    """The progress bar's running mean bits/dim and the last round's NFE."""
    self._seen.extend(shard['bpd'])
    return {'bpd': f'{np.mean(self._seen):.4f}', 'nfe': f'{float(shard["nfe"]):g}'}

  def report(self, files: List[str]) -> Dict:
    """report.json from the round files: `bpd` (mean), `bpd_std`, `bpd_sem`, `nfe`, `bpd_per_image` (by file
    name; a repeated image gets '#k'), the settings, and for the Gaussian reference `bpd_exact` and the error."""
    values = {k: [] for k in ('bpd', 'bpd_exact', 'bpd_exact_eps', 'image_index')}
    nfe_total = 0.
    for path in files:
      with np.load(path) as f:
        for k in values:
          if k in f:
            values[k].append(f[k])
        nfe_total += float(f['nfe']) * len(f['bpd'])
    bpd = np.concatenate(values['bpd'])
    per_image = {}
    for name, value in zip(self.images.names(np.concatenate(values['image_index'])), bpd):
      key, k = name, 1
      while key in per_image:
        k += 1
        key = f'{name}#{k}'
      per_image[key] = float(value)
    report = {'settings': {**self.settings, 'parallel': self.config.eval.parallel,
                           'devices_per_host': jax.local_device_count(), 'hosts': jax.process_count()},
              'num_images': len(bpd), 'bpd': float(bpd.mean()), 'bpd_std': float(bpd.std()),
              'bpd_sem': float(bpd.std() / np.sqrt(len(bpd))), 'nfe': shards.as_count(nfe_total / len(bpd)),
              'bpd_per_image': per_image}
    if self.exact is not None:
      bpd_exact, bpd_exact_eps = np.concatenate(values['bpd_exact']), np.concatenate(values['bpd_exact_eps'])
      report.update(bpd_exact=float(bpd_exact.mean()), bpd_exact_eps=float(bpd_exact_eps.mean()),
                    bpd_error=float(bpd.mean() - bpd_exact.mean()),
                    bpd_error_rms_per_image=float(np.sqrt(np.mean((bpd - bpd_exact) ** 2))))
    return report

  @staticmethod
  def summary_line(report: Dict) -> str:
    """The line `--mode likelihood` ends with: mean bits/dim ± its standard error, images, NFE, the exact value."""
    line = (f'bits/dim {report["bpd"]:.4f} ± {report["bpd_sem"]:.4f} over {report["num_images"]} images, '
            f'{report["nfe"]:.4g} NFE')
    if 'bpd_exact' in report:
      line += f'; exact {report["bpd_exact"]:.4f} (error of the mean {report["bpd_error"]:+.4f})'
    return line
