"""An inpaint / colorize job built from a config: checks, mask, images, conditional sampler, one round, the report.

`ControllableRun(config, workdir, mode, input_dir, mask_path)` validates everything (config.sampling,
the mask, every input image) and restores the model before any compute; `shards.run_rounds` then
calls `round` per round of images, and host 0 merges the round files with `report`, which also
draws grid.png. The sampler is score_sde's `get_pc_inpainter` / `get_pc_colorizer` with PDS
(`pds_jax.controllable_generation`).
"""
from __future__ import annotations

import hashlib
from typing import Dict, List, Optional

import jax
import numpy as np

from pds_jax import controllable_generation as cg, datasets, inpaint_masks, parallel as parallel_lib, sde_lib
from pds_jax import shards
from pds_jax.figures import pds_label, titled_grid, titled_panels
from pds_jax.references import EvalImages, gaussian_reference, image_shape
from pds_jax.samplers import methods
from pds_jax.sampling_run import get_score_fn, load_preconditioner, validate_sampling_config

MODES = ('inpaint', 'colorize')


def _mask(config, mode: str, mask_path: Optional[str], shape):
  """(mask (H, W, C), 1 = known, its name) of an inpaint or colorize job."""
  if mode == 'inpaint':
    mask = (inpaint_masks.load_mask(mask_path, shape) if mask_path else
            inpaint_masks.builtin_mask(config.inpaint.mask, shape, config.inpaint.mask_seed))
    if mask.min() == 1:
      raise ValueError(f'the mask ({mask_path or config.inpaint.mask}) marks every pixel known: nothing to inpaint.')
    return mask, mask_path or config.inpaint.mask
  if mask_path:
    raise ValueError('--mode colorize observes the gray level of every pixel; it takes no --mask_path.')
  if shape[2] != 3:
    raise ValueError(f'--mode colorize needs RGB images; config.data.num_channels = {shape[2]}.')
  return np.broadcast_to(np.array([1., 0., 0.], np.float32), shape), 'gray channel'  # the colour basis' gray channel


class ControllableRun:
  """Everything `--mode inpaint` / `colorize` needs, built and validated before any compute starts.

  Images: the png/jpg files of `input_dir` (every one of the job's files is decoded first; one error
  lists the unreadable ones), else config.data's eval split, else (Gaussian reference) exact draws of
  its data law; the first eval.num_samples of them, in rounds of at most eval.batch_size.
  """

  def __init__(self, config, workdir: str, mode: str, input_dir: Optional[str] = None,
               mask_path: Optional[str] = None):
    if mode not in MODES:
      raise ValueError(f'ControllableRun: mode {mode!r}; choose one of {MODES}.')
    validate_sampling_config(config)
    s = config.sampling
    resolved = methods.resolve(s)
    if resolved.method.name != 'pc' or resolved.alias:
      raise ValueError(f"--mode {mode} runs score_sde's PC sampler; config.sampling.method = "
                       f"{resolved.alias or resolved.method.name!r} (set --config.sampling.method=pc).")
    if s.num_steps is not None:
      raise ValueError(f'--mode {mode} sets its steps with --speed_up k (N = num_scales / k, as PDS does); '
                       f'config.sampling.num_steps = {s.num_steps} would be ignored: unset it.')
    self.config, self.mode = config, mode
    known_init = (config.inpaint if mode == 'inpaint' else config.colorize).known_init
    self.mask, mask_name = _mask(config, mode, mask_path, image_shape(config))
    self.images = EvalImages(config, 'eval', input_dir)
    self.total = config.eval.num_samples if self.images.count is None else min(config.eval.num_samples,
                                                                                self.images.count)
    devices = jax.local_device_count()
    self.batch = min(config.eval.batch_size, -(-self.total // devices) * devices)
    self.images.check(self.total)
    preconditioner = load_preconditioner(config)
    sde, eps = sde_lib.get_sde(config)
    make = cg.get_pc_inpainter if mode == 'inpaint' else cg.get_pc_colorizer
    self.sampler = make(sde, s.predictor.lower(), s.corrector.lower(), datasets.get_data_inverse_scaler(config), s.snr,
                        s.n_steps_each, s.probability_flow, config.training.continuous, s.noise_removal, eps,
                        preconditioner=preconditioner, pds_variant=s.pds_variant, speed_up=s.speed_up,
                        known_init=known_init, alpha=s.alpha, **parallel_lib.sampler_devices(config.eval.parallel))
    self.score_fn, info = get_score_fn(config, workdir, sde)
    self.scaler = datasets.get_data_scaler(config)
    self.settings = {
        'mode': mode, 'sde': type(sde).__name__, 'predictor': s.predictor, 'corrector': s.corrector, 'snr': s.snr,
        'n_steps_each': s.n_steps_each, 'num_steps': self.sampler.solver.num_steps, 'eps': self.sampler.solver.eps,
        'speed_up': s.speed_up, 'denoise': s.noise_removal, 'pds_variant': s.pds_variant,
        'preconditioned': not self.sampler.preconditioner.is_identity, 'alpha': self.sampler.alpha,
        'freq_mask_path': s.freq_mask_path, 'space_mask_path': s.space_mask_path, 'known_init': known_init,
        'mask': mask_name, 'mask_sha1': hashlib.sha1(np.ascontiguousarray(self.mask)).hexdigest(),
        'known_fraction': float(self.mask.mean()), 'images': self.images.name, 'batch_size': self.batch,
        'seed': config.seed, **info}

  def round(self, r: shards.Round) -> Dict[str, np.ndarray]:
    """One round's shard: `samples` (the results in [0, 1]), `observed` (the input images), `mask`, `nfe`
    and, for colorize, `gray` (the gray-scale input, R = G = B)."""
    x = self.images.read(r.items)
    keys = parallel_lib.place_keys(r.keys, self.config.eval.parallel)
    chunks = self.config.sampling.num_chunks
    extra = {'mask': self.mask}
    if self.mode == 'inpaint':
      out, nfe = self.sampler(keys, self.score_fn, self.scaler(x), self.mask, num_chunks=chunks, progress=True)
    else:
      gray = np.asarray(cg.to_grayscale(x))
      out, nfe = self.sampler(keys, self.score_fn, self.scaler(gray), num_chunks=chunks, progress=True)
      extra['gray'] = gray[:r.real]
    return {'samples': np.asarray(out, np.float32)[:r.real], 'observed': x[:r.real], 'nfe': np.float64(nfe), **extra}

  def report(self, files: List[str]):
    """(report.json's dict, grid.png's image) from the round files, streamed: the NFE, the known pixels' largest
    error, the unknown pixels' MSE to the originals and, for exact draws of the Gaussian reference, the exact
    conditional error ratio; the grid's columns are input | mask | result | original (inpaint) or
    grayscale | result | original (colorize)."""
    mode, settings = self.mode, self.settings
    errors = cg.ConditionalErrors(mode, gaussian_reference(self.config) if self.images.gaussian else None)
    preview = []
    for path in files:
      with np.load(path) as f:
        out, x, mask = f['samples_float'], f['observed'], f['mask']
        errors.add(out, x, mask, float(f['nfe']))
      k = 8 - sum(len(p[0]) for p in preview)
      if k > 0:
        observed_view = np.asarray(cg.to_grayscale(x)) if mode == 'colorize' else x
        preview.append((out[:k], x[:k], observed_view[:k], np.broadcast_to(mask, out.shape)[:k]))
    out, x, observed_view, mask = (np.concatenate(p) for p in zip(*preview))
    if mode == 'inpaint':
      columns = [('input', x * mask + 0.5 * (1. - mask)), ('mask', mask), ('result', out), ('original', x)]
    else:
      columns = [('grayscale', observed_view), ('result', out), ('original', x)]
    summary = errors.summary()
    caption = (f'{mode} · {settings["num_steps"]} steps · NFE {summary["nfe_per_sample"]:g} · '
               f'{pds_label(settings)}\n'
               f'known region at T: {settings["known_init"]} · mask: {settings["mask"]} · {len(out)} of '
               f'{summary["num_images"]} images')
    report = {'settings': {**settings, 'parallel': self.config.eval.parallel,
                           'devices_per_host': jax.local_device_count(), 'hosts': jax.process_count()}, **summary}
    return report, titled_panels([(caption, titled_grid(columns))])

  def summary_line(self, report: Dict) -> str:
    """The line the mode ends with: images, NFE, the known pixels' error, the exact conditional ratio."""
    line = (f'{self.mode}: {report["num_images"]} images, {report["nfe_per_sample"]} NFE, known pixels max |error| '
            f'{report["known_max_abs_error"]:.2g}')
    if 'exact_conditional' in report:
      ratios = report['exact_conditional']
      line += (f', exact conditional error ratio {ratios["error_ratio"]:.4f} (1 = exact; '
               f'ignoring the observation: {ratios["ignore_observation_ratio"]:.3f})')
    return line
