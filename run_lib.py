"""The modes of `main.py`: train, sample, compare (vanilla vs PDS), convert, stats, fid_stats, eval,
fit_init, likelihood (bits/dim), inpaint and colorize (controllable generation).

Like score_sde's `run_lib.py`, each mode is a function of (config, workdir, ...); `main.py` only
parses flags. The library parts the modes share live in `pds_jax`: `sampling_run` (checks, score
function, preconditioner, sampler), `references` (the data a run is measured against), `shards`
(resumable round shards), `io_utils` (atomic writers), `figures`, `init_aware.fit`, `training`.
Every input is validated before any compute starts, and every file is written atomically, so an
interrupted run never leaves a half-written output.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pds_jax import datasets, gaussian, inpaint_masks, parallel as parallel_lib, sampling, sde_lib, shards, training
from pds_jax.figures import (compare_panel_title, headline_metric, image_grid, metric_line, pds_label, sample_caption,
                             titled_grid, titled_panels)
from pds_jax.io_utils import output_folder, write_json, write_npz, write_png
from pds_jax.preconditioning import Preconditioner
from pds_jax.references import (EvalImages, exact_metrics, gaussian_reference, image_shape, in_model_range,
                                is_gaussian_reference, reference_images, sample_metrics)
from pds_jax.sampling_run import (SamplingRun, compare_preconditioner, draw, get_score_fn, load_preconditioner,
                                  validate_eval_batch, validate_sampling_config)

MODES = ('train', 'sample', 'compare', 'convert', 'stats', 'fid_stats', 'eval', 'fit_init', 'likelihood', 'inpaint',
         'colorize')
DEQUANTIZATIONS = ('uniform', 'none')


# ----------------------------------------------------------------------------- sample, compare


def sample(config: ml_collections.ConfigDict, workdir: str, eval_folder: str = 'eval') -> Optional[Dict]:
  """Draws `eval.num_samples` samples in rounds of `eval.batch_size`, resumably, on all devices and hosts.

  Round r holds samples r·B … r·B + B - 1, sample i drawn with the key fold_in(PRNGKey(seed), i);
  rounds go round-robin to the hosts, each writing workdir/<eval_folder>/samples_<r>_<host>.npz
  atomically (uint8 `samples` as score_sde writes them, float32 `samples_float`). A restarted run
  skips the rounds already on disk. Host 0 then writes grid.png and report.json, streaming over
  the shards (memory independent of num_samples). Returns the report on host 0, else None.
  """
  run = SamplingRun.build(config, workdir)
  preconditioner = load_preconditioner(config)
  folder = output_folder(workdir, eval_folder)
  parallel = config.eval.parallel
  sampler = run.sampler(preconditioner)
  settings = run.settings(sampler)
  shards.check_manifest(folder, {**settings, 'num_samples': config.eval.num_samples})
  batch = config.eval.batch_size
  num_rounds, host = shards.num_rounds(config.eval.num_samples, batch), jax.process_index()
  todo = shards.pending_rounds(folder, num_rounds)
  logging.info('host %d: %d of its rounds to sample (%d rounds of %d in the job)', host, len(todo), num_rounds, batch)
  from tqdm.auto import tqdm
  times = []
  for r in tqdm(todo, desc=f'rounds (host {host})', unit='round'):
    samples, nfe, seconds = draw(sampler, sampling.sample_keys(config.seed, r * batch, batch), run.score_fn, parallel)
    write_npz(shards.shard_path(folder, r, host), samples=np.clip(samples * 255., 0, 255).astype(np.uint8),
              samples_float=samples, nfe=np.float64(nfe))
    times.append(seconds)
  if host != 0:
    return None
  done = shards.wait_for_rounds(folder, num_rounds, config.eval.wait_timeout)
  accumulator, preview, remaining, nfe_total = gaussian.MomentAccumulator(), [], config.eval.num_samples, 0.
  for r in range(num_rounds):
    with np.load(done[r]) as f:
      samples = f['samples_float'][:remaining]
      nfe_total += float(f['nfe']) * len(samples)  # the adaptive ODE's NFE differs per round
    remaining -= len(samples)
    accumulator.add(samples)
    preview.append(samples[:max(0, 64 - sum(len(p) for p in preview))])
  nfe_mean = shards.as_count(nfe_total / accumulator.count)
  write_png(os.path.join(folder, 'grid.png'), titled_panels(
      [(sample_caption(settings, nfe_mean, accumulator.count), image_grid(np.concatenate(preview)))], min_width=480))
  report = {'settings': {**settings, 'parallel': parallel, 'devices_per_host': jax.local_device_count(),
                         'hosts': jax.process_count()},
            'num_samples': accumulator.count, 'num_rounds': num_rounds,
            'nfe_per_sample': nfe_mean,
            'wall_seconds_per_round_this_run_host0': times, 'first_round_includes_compile': bool(times),
            'metrics': exact_metrics(config, accumulator)}
  write_json(os.path.join(folder, 'report.json'), report)
  return report


def _with_sampling(config, **fields):
  """A copy of `config` with config.sampling.<name> = value for each field."""
  config = ml_collections.ConfigDict(config.to_dict())
  for name, value in fields.items():
    setattr(config.sampling, name, value)
  return config


def _compare_runs(config) -> List[Dict]:
  """compare's runs: vanilla (sampling.vanilla_speed_up when set) and PDS (sampling.speed_up), then vanilla
  and PDS at each N of sampling.compare_num_steps; each {'name', 'config', 'pds', 'panel'}."""
  vanilla = config if config.sampling.vanilla_speed_up is None else _with_sampling(
      config, speed_up=config.sampling.vanilla_speed_up)
  runs = [{'name': 'vanilla', 'config': vanilla, 'pds': False, 'panel': True},
          {'name': 'pds', 'config': config, 'pds': True, 'panel': True}]
  steps = tuple(config.sampling.get('compare_num_steps') or ())  # absent from configs written for score_sde
  if any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in steps):
    raise ValueError(f'config.sampling.compare_num_steps = {steps}: step counts must be integers >= 1.')
  for n in steps:
    swept = _with_sampling(config, num_steps=n)
    runs += [{'name': f'vanilla_{n}', 'config': swept, 'pds': False, 'panel': False},
             {'name': f'pds_{n}', 'config': swept, 'pds': True, 'panel': False}]
  return runs


def _vanilla_and_pds(results: Dict[str, Dict], x: Callable[[Dict], float]) -> List[Tuple[str, List, List]]:
  """The runs of a report grouped for `evaluation.plot_metric_vs_steps`: ('vanilla' | 'PDS', x of each run, metrics)."""
  groups = {}
  for result in results.values():
    xs, metrics = groups.setdefault('PDS' if result['settings']['preconditioned'] else 'vanilla', ([], []))
    xs.append(x(result))
    metrics.append(result['metrics'])
  return [(label, xs, metrics) for label, (xs, metrics) in groups.items()]


def _plot_compare(results: Dict, floor: Dict[str, float], path: str, title: str) -> None:
  """metric_vs_nfe.png: the headline metric of every compare run against its NFE, vanilla and PDS, data's as a line."""
  from pds_jax import evaluation
  runs = _vanilla_and_pds(results, lambda r: r['nfe_per_sample'])
  name = headline_metric(floor)
  values = [m[name] for _, _, metrics in runs for m in metrics] + [floor[name]]
  log_y = min(values) > 0 and max(values) > 10 * min(values)  # spans an order of magnitude: log scale
  evaluation.plot_metric_vs_steps(runs, name, path, xlabel='NFE per sample',
                                  reference_lines={'data (noise floor)': floor[name]}, title=title, log_y=log_y)


def compare(config: ml_collections.ConfigDict, workdir: str, eval_folder: str = 'compare') -> Dict:
  """Vanilla vs PDS from the same seeds: a side-by-side grid, the metrics and wall times of both
  (each including its compilation, which costs about the same for any number of steps), and their
  headline metric against NFE.

  The vanilla run uses sampling.vanilla_speed_up (None: the same steps as PDS), the PDS run
  sampling.speed_up, so `vanilla_speed_up = 1, speed_up = k` sets N steps against N / k.
  sampling.compare_num_steps adds vanilla and PDS runs at those step counts (metrics only).
  For a trained model the metrics are computed against eval.num_reference dataset images.
  Writes vanilla_vs_pds.png (titled panels: vanilla, PDS, real images), metric_vs_nfe.png,
  samples_<run>.npz and report.json (per run: settings, NFE, wall time, metrics; the noise floor).
  """
  runs = _compare_runs(config)
  score = None  # every setting is checked, and the model restored once, before anything is sampled
  for run in runs:
    run['run'] = SamplingRun.build(run['config'], workdir, score)
    score = run['run'].score_fn, run['run'].model_info
    run['sampler'] = run['run'].sampler(compare_preconditioner(run['config']) if run['pds'] else Preconditioner())
  folder = output_folder(workdir, eval_folder)
  reference, held_out = None, None
  if not is_gaussian_reference(config):
    from pds_jax import evaluation
    images, held_out = reference_images(config, config.eval.num_reference, config.eval.batch_size)
    reference = evaluation.image_features(images, evaluation.with_kid_subset(config, config.eval.batch_size),
                                          'reference')
  keys = sampling.sample_keys(config.seed, 0, config.eval.batch_size)
  results, grids = {}, []
  width = max(8, *(len(run['name']) for run in runs))
  for run in runs:
    name = run['name']
    samples, nfe, seconds = draw(run['sampler'], keys, run['run'].score_fn)
    write_npz(os.path.join(folder, f'samples_{name}.npz'), samples=np.clip(samples * 255., 0, 255).astype(np.uint8),
              samples_float=samples)
    results[name] = {'settings': run['run'].settings(run['sampler']), 'nfe_per_sample': nfe,
                     'wall_seconds_incl_compile': seconds,
                     'metrics': sample_metrics(config, np.clip(samples, 0., 1.), reference)}
    if run['panel']:
      grids.append((compare_panel_title(results[name]), image_grid(samples[:36], nrow=6)))
    print(f'{name:{width}s} steps={results[name]["settings"]["num_steps"]:5d} nfe={nfe:5g} '
          f'wall={seconds:7.2f}s ' + ' '.join(f'{k}={v:.4g}' for k, v in results[name]['metrics'].items()))
  if is_gaussian_reference(config):
    reference_model = gaussian_reference(config)
    held_out = np.asarray(reference_model.sample(jax.random.PRNGKey(config.seed + 2), config.eval.batch_size))
    floor = gaussian.metrics(held_out, reference_model)
  else:  # the same metrics of as many data images that are not in the reference set
    floor = sample_metrics(config, held_out, reference)
  grids.append((f'data (not in the reference set)\n{metric_line(floor)}', image_grid(held_out[:36], nrow=6)))
  title = (f'{config.sampling.method} sampler, vanilla vs PDS from the same seeds '
           f'({config.eval.batch_size} samples each; 36 shown)')
  write_png(os.path.join(folder, 'vanilla_vs_pds.png'), titled_panels(grids, title=title))
  _plot_compare(results, floor, os.path.join(folder, 'metric_vs_nfe.png'),
                f'{config.sampling.method} sampler, {config.eval.batch_size} samples per run')
  results['noise_floor'] = floor
  print('data images (noise floor of the metrics): ' + ' '.join(f'{k}={v:.4g}' for k, v in floor.items()))
  write_json(os.path.join(folder, 'report.json'), results)
  print(f'wrote {folder}/vanilla_vs_pds.png, metric_vs_nfe.png and report.json')
  return results


# ----------------------------------------------------------------------------- likelihood, inpainting, colorization


def likelihood(config: ml_collections.ConfigDict, workdir: str, eval_folder: str = 'likelihood') -> Optional[Dict]:
  """score_sde's `eval.enable_bpd`: bits/dim of eval.num_samples images, resumably, on all devices and hosts.

  Images come from the split eval.bpd_dataset ('test' = the eval split, or 'train') of config.data
  (repeated when num_samples exceeds it), or, for the Gaussian reference, exact draws of its data
  law. 8-bit images are uniformly dequantized (config.likelihood.dequantization). Image i uses the
  key fold_in(PRNGKey(seed), i), split into its Hutchinson noise and its dequantization noise.
  Round r writes workdir/<eval_folder>/bpd_<r>_<host>.npz (per-image `bpd`, `image_index`, the
  round's mean `nfe`; for the Gaussian reference also `bpd_exact`, the exact −log2 p(x)/D + offset
  of the data law, and `bpd_exact_eps`, that of its marginal at eps, which the ODE integrates from).
  Host 0 then writes report.json: `bpd` (mean), `bpd_std`, `bpd_sem`, `nfe`, the settings, and for
  the Gaussian reference `bpd_exact` and the error of the mean.
  """
  from pds_jax import likelihood as likelihood_lib
  validate_eval_batch(config)
  lk = config.likelihood
  dequantization = lk.dequantization or ('none' if is_gaussian_reference(config) else 'uniform')
  if dequantization not in DEQUANTIZATIONS:
    raise ValueError(f'config.likelihood.dequantization = {dequantization!r}; choose one of {DEQUANTIZATIONS}.')
  if config.eval.bpd_dataset.lower() not in ('test', 'train'):
    raise ValueError(f"config.eval.bpd_dataset = {config.eval.bpd_dataset!r}; choose 'test' (the eval split) or 'train'.")
  split = 'eval' if config.eval.bpd_dataset.lower() == 'test' else 'train'
  sde, _ = sde_lib.get_sde(config)
  parallel = config.eval.parallel
  fn = likelihood_lib.get_likelihood_fn(sde, datasets.get_data_inverse_scaler(config), lk.hutchinson_type, lk.rtol,
                                        lk.atol, lk.method, lk.eps, lk.max_steps,
                                        **parallel_lib.sampler_devices(parallel))
  images = EvalImages(config, split)
  score_fn, info = get_score_fn(config, workdir, sde)
  folder = output_folder(workdir, eval_folder)
  settings = {'mode': 'likelihood', 'sde': type(sde).__name__, 'hutchinson_type': lk.hutchinson_type,
              'rtol': lk.rtol, 'atol': lk.atol, 'method': lk.method, 'eps': lk.eps, 'max_steps': lk.max_steps,
              'dequantization': dequantization, 'offset': fn.offset, 'images': images.name, 'split': split,
              'batch_size': config.eval.batch_size, 'seed': config.seed, **info}
  shards.check_manifest(folder, {**settings, 'num_samples': config.eval.num_samples})
  scaler = datasets.get_data_scaler(config)
  exact = None
  if is_gaussian_reference(config):
    reference = gaussian_reference(config)
    exact = (reference, in_model_range(config, reference))
  batch, total = config.eval.batch_size, config.eval.num_samples
  num_rounds, host = shards.num_rounds(total, batch), jax.process_index()
  todo = shards.pending_rounds(folder, num_rounds, 'bpd')
  from tqdm.auto import tqdm
  bar, seen = tqdm(todo, desc=f'bits/dim (host {host})', unit='round'), []
  for r in bar:
    indices, real = shards.round_indices(r, batch, total)
    x = images.read(indices)
    hutchinson_keys, dequantization_keys = likelihood_lib.image_keys(sampling.sample_keys(config.seed, r * batch, batch))
    if dequantization == 'uniform':
      x = np.asarray(likelihood_lib.uniform_dequantize(jnp.asarray(x), dequantization_keys))
    bpd, _, nfe = fn(parallel_lib.place_keys(hutchinson_keys, parallel), score_fn, scaler(x))
    shard = {'bpd': np.asarray(bpd, np.float64)[:real], 'image_index': np.arange(r * batch, r * batch + real),
             'nfe': np.float64(nfe)}
    if exact is not None:
      dim = np.log(2.) * np.prod(x.shape[1:])
      shard['bpd_exact'] = (-exact[0].log_prob(x[:real]) / dim + likelihood_lib.BITS_OFFSET_8BIT)
      shard['bpd_exact_eps'] = -exact[1].log_prob(scaler(x[:real]), sde, lk.eps) / dim + fn.offset
    write_npz(shards.shard_path(folder, r, host, 'bpd'), **shard)
    seen.extend(shard['bpd'])
    bar.set_postfix(bpd=f'{np.mean(seen):.4f}', nfe=f'{nfe:g}')
  if host != 0:
    return None
  done = shards.wait_for_rounds(folder, num_rounds, config.eval.wait_timeout, 'bpd')
  values = {k: [] for k in ('bpd', 'bpd_exact', 'bpd_exact_eps')}
  nfe_total = 0.
  for r in range(num_rounds):
    with np.load(done[r]) as f:
      for k in values:
        if k in f:
          values[k].append(f[k])
      nfe_total += float(f['nfe']) * len(f['bpd'])
  bpd = np.concatenate(values['bpd'])
  report = {'settings': {**settings, 'parallel': parallel, 'devices_per_host': jax.local_device_count(),
                         'hosts': jax.process_count()},
            'num_images': len(bpd), 'bpd': float(bpd.mean()), 'bpd_std': float(bpd.std()),
            'bpd_sem': float(bpd.std() / np.sqrt(len(bpd))), 'nfe': shards.as_count(nfe_total / len(bpd))}
  if exact is not None:
    bpd_exact, bpd_exact_eps = np.concatenate(values['bpd_exact']), np.concatenate(values['bpd_exact_eps'])
    report.update(bpd_exact=float(bpd_exact.mean()), bpd_exact_eps=float(bpd_exact_eps.mean()),
                  bpd_error=float(bpd.mean() - bpd_exact.mean()),
                  bpd_error_rms_per_image=float(np.sqrt(np.mean((bpd - bpd_exact) ** 2))))
  write_json(os.path.join(folder, 'report.json'), report)
  line = f'bits/dim {report["bpd"]:.4f} ± {report["bpd_sem"]:.4f} over {len(bpd)} images, {report["nfe"]:.4g} NFE'
  if exact is not None:
    line += f'; exact {report["bpd_exact"]:.4f} (error of the mean {report["bpd_error"]:+.4f})'
  print(line)
  print(f'wrote {folder}/report.json')
  return report


def _controllable(config, workdir: str, mode: str, input_dir: Optional[str], mask_path: Optional[str],
                  eval_folder: str) -> Optional[Dict]:
  """inpaint / colorize: see `inpaint`."""
  from pds_jax import controllable_generation as cg
  validate_sampling_config(config)
  s = config.sampling
  if s.method.lower() != 'pc':
    raise ValueError(f"--mode {mode} runs score_sde's PC sampler; config.sampling.method = {s.method!r} "
                     "(set --config.sampling.method=pc).")
  shape = image_shape(config)
  if s.num_steps is not None:
    raise ValueError(f'--mode {mode} sets its steps with --speed_up k (N = num_scales / k, as PDS does); '
                     f'config.sampling.num_steps = {s.num_steps} would be ignored: unset it.')
  known_init = (config.inpaint if mode == 'inpaint' else config.colorize).known_init
  if mode == 'inpaint':
    mask = (inpaint_masks.load_mask(mask_path, shape) if mask_path else
            inpaint_masks.builtin_mask(config.inpaint.mask, shape, config.inpaint.mask_seed))
    if mask.min() == 1:
      raise ValueError(f'the mask ({mask_path or config.inpaint.mask}) marks every pixel known: nothing to inpaint.')
    mask_name = mask_path or config.inpaint.mask
  else:
    if mask_path:
      raise ValueError('--mode colorize observes the gray level of every pixel; it takes no --mask_path.')
    if shape[2] != 3:
      raise ValueError(f'--mode colorize needs RGB images; config.data.num_channels = {shape[2]}.')
    mask = np.broadcast_to(np.array([1., 0., 0.], np.float32), shape)  # the gray channel of the colour basis
    mask_name = 'gray channel'
  images = EvalImages(config, 'eval', input_dir)
  total = config.eval.num_samples if images.count is None else min(config.eval.num_samples, images.count)
  devices = jax.local_device_count()
  batch = min(config.eval.batch_size, -(-total // devices) * devices)
  preconditioner = load_preconditioner(config)
  sde, eps = sde_lib.get_sde(config)
  make = cg.get_pc_inpainter if mode == 'inpaint' else cg.get_pc_colorizer
  conditional = make(sde, s.predictor.lower(), s.corrector.lower(), datasets.get_data_inverse_scaler(config), s.snr,
                     s.n_steps_each, s.probability_flow, config.training.continuous, s.noise_removal, eps,
                     preconditioner=preconditioner, pds_variant=s.pds_variant, speed_up=s.speed_up,
                     known_init=known_init, **parallel_lib.sampler_devices(config.eval.parallel))
  score_fn, info = get_score_fn(config, workdir, sde)
  folder = output_folder(workdir, eval_folder)
  settings = {'mode': mode, 'sde': type(sde).__name__, 'predictor': s.predictor, 'corrector': s.corrector,
              'snr': s.snr, 'n_steps_each': s.n_steps_each, 'num_steps': conditional.solver.num_steps,
              'eps': conditional.solver.eps, 'speed_up': s.speed_up, 'denoise': s.noise_removal,
              'pds_variant': s.pds_variant, 'preconditioned': not preconditioner.is_identity,
              'alpha': sampling.resolve_alpha(config), 'freq_mask_path': s.freq_mask_path,
              'space_mask_path': s.space_mask_path, 'known_init': known_init, 'mask': mask_name,
              'mask_sha1': hashlib.sha1(np.ascontiguousarray(mask)).hexdigest(), 'known_fraction': float(mask.mean()),
              'images': images.name, 'batch_size': batch, 'seed': config.seed, **info}
  shards.check_manifest(folder, {**settings, 'num_samples': total})
  scaler, parallel = datasets.get_data_scaler(config), config.eval.parallel
  num_rounds, host = shards.num_rounds(total, batch), jax.process_index()
  todo = shards.pending_rounds(folder, num_rounds)
  from tqdm.auto import tqdm
  for r in tqdm(todo, desc=f'{mode} rounds (host {host})', unit='round'):
    indices, real = shards.round_indices(r, batch, total)
    x = images.read(indices)
    keys = parallel_lib.place_keys(sampling.sample_keys(config.seed, r * batch, batch), parallel)
    if mode == 'inpaint':
      out, nfe = conditional(keys, score_fn, scaler(x), mask, num_chunks=s.num_chunks, progress=True)
      extra = {'mask': mask}
    else:
      gray = np.asarray(cg.to_grayscale(x))
      out, nfe = conditional(keys, score_fn, scaler(gray), num_chunks=s.num_chunks, progress=True)
      extra = {'gray': gray[:real], 'mask': mask}
    out = np.asarray(out, np.float32)[:real]
    write_npz(shards.shard_path(folder, r, host), samples=np.clip(out * 255., 0, 255).astype(np.uint8),
              samples_float=out, observed=x[:real], nfe=np.float64(nfe), **extra)
  if host != 0:
    return None
  done = shards.wait_for_rounds(folder, num_rounds, config.eval.wait_timeout)
  return _controllable_report(config, mode, folder, [done[r] for r in range(num_rounds)], settings,
                              exact=images.gaussian)


def _controllable_report(config, mode: str, folder: str, files: List[str], settings: Dict, exact: bool) -> Dict:
  """report.json and grid.png of an inpaint / colorize folder, streaming over its round files; `exact`: the
  images are exact draws of the Gaussian reference, so the exact conditional error is reported."""
  from pds_jax import controllable_generation as cg
  errors = cg.ConditionalErrors(mode, gaussian_reference(config) if exact else None)
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
  count = summary['num_images']
  caption = (f'{mode} · {settings["num_steps"]} steps · NFE {summary["nfe_per_sample"]:g} · {pds_label(settings)}\n'
             f'known region at T: {settings["known_init"]} · mask: {settings["mask"]} · {len(out)} of {count} images')
  write_png(os.path.join(folder, 'grid.png'), titled_panels([(caption, titled_grid(columns))]))
  report = {'settings': {**settings, 'parallel': config.eval.parallel, 'devices_per_host': jax.local_device_count(),
                         'hosts': jax.process_count()}, **summary}
  write_json(os.path.join(folder, 'report.json'), report)
  line = (f'{mode}: {count} images, {summary["nfe_per_sample"]} NFE, known pixels max |error| '
          f'{summary["known_max_abs_error"]:.2g}')
  if exact:
    ratios = summary['exact_conditional']
    line += (f', exact conditional error ratio {ratios["error_ratio"]:.4f} (1 = exact; '
             f'ignoring the observation: {ratios["ignore_observation_ratio"]:.3f})')
  print(line)
  print(f'wrote {folder}/grid.png and report.json')
  return report


def inpaint(config: ml_collections.ConfigDict, workdir: str, input_dir: Optional[str] = None,
            mask_path: Optional[str] = None, eval_folder: str = 'inpaint') -> Optional[Dict]:
  """score_sde's inpainting (`controllable_generation.get_pc_inpainter`) with PDS, resumably, on all devices.

  Images: the png/jpg files of `input_dir` (recursively, centre-cropped and resized like 'folder'
  data), else config.data's eval split, else (Gaussian reference) exact draws of its data law; the
  first eval.num_samples of them. Mask: `mask_path` (.npy or an image, (H, W) or (H, W, C), 1 =
  known) or config.inpaint.mask. The sampler is config.sampling's PC method with the PDS masks
  when set (identity otherwise), speed_up and pds_variant; config.inpaint.known_init chooses the
  known region at T. Round r writes workdir/<eval_folder>/samples_<r>_<host>.npz (`samples` uint8,
  `samples_float`, `observed`: the input images in [0, 1], `mask`, `nfe`); host 0 writes grid.png
  (columns input | mask | result | original) and report.json (NFE, settings, the known pixels'
  largest error, the unknown pixels' MSE to the originals and, for the Gaussian reference, the
  exact conditional error ratio).
  """
  return _controllable(config, workdir, 'inpaint', input_dir, mask_path, eval_folder)


def colorize(config: ml_collections.ConfigDict, workdir: str, input_dir: Optional[str] = None,
             eval_folder: str = 'colorize', mask_path: Optional[str] = None) -> Optional[Dict]:
  """score_sde's colorization (`get_pc_colorizer`) with PDS: like `inpaint`, observing each image's gray level.

  The shards also hold `gray` (the gray-scale input, R = G = B); grid.png has the columns
  grayscale | result | original; report.json's exact ratio is over the two colour channels of
  score_sde's orthonormal colour basis. A mask is refused.
  """
  return _controllable(config, workdir, 'colorize', input_dir, mask_path, eval_folder)


# ----------------------------------------------------------------------------- the other modes


def convert(config: ml_collections.ConfigDict, workdir: str, pytorch_checkpoint: Optional[str]) -> str:
  """Converts a score_sde_pytorch `.pth` into workdir/checkpoints/checkpoint_<N> (legacy Flax layout)."""
  if not pytorch_checkpoint:
    raise ValueError('--mode convert needs --pytorch_checkpoint=<file.pth>.')
  if not os.path.isfile(pytorch_checkpoint):
    raise ValueError(f'{pytorch_checkpoint}: PyTorch checkpoint not found.')
  from pds_jax import checkpoints
  path = checkpoints.write_converted_checkpoint(pytorch_checkpoint, config, workdir)
  print(f'wrote {path}')
  return path


def stats(config: ml_collections.ConfigDict, workdir: str, eval_folder: str = 'stats') -> Dict:
  """PDS mask statistics of config.data's dataset (official `.npy` format) and their pictures.

  Streams over config.stats.split (all images, or a seeded subset of config.stats.num_images) and
  writes workdir/<eval_folder>/freq_<dataset>_<size>.npy, space_<...>.npy and two PNGs; pass the
  .npy files to --freq_mask_path / --space_mask_path.
  """
  from pds_jax import mask_stats
  if is_gaussian_reference(config):
    raise ValueError('--mode stats reads images of config.data.dataset; the Gaussian reference has no image files '
                     '(its compare mode computes its statistics from exact draws).')
  folder = output_folder(workdir, eval_folder)
  summary = mask_stats.write_mask_statistics(config, folder, num_images=config.stats.num_images,
                                             split=config.stats.split)
  print(f'{summary["num_images"]} images -> {summary["freq_path"]}, {summary["space_path"]} '
        f'(mask condition number {summary["condition_number"]:.3g} at alpha {summary["alpha"]})')
  return summary


def fid_stats(config: ml_collections.ConfigDict, workdir: str, eval_folder: str = 'fid_stats') -> Dict:
  """FID Inception statistics of config.data in score_sde's format (`pds_jax.fid_stats`).

  Streams over eval.reference_split (all images, or eval.fid_stats_num_images drawn with config.seed)
  and writes workdir/<eval_folder>/<dataset>_stats.npz (pool_3, mu, sigma), score_sde's name for the
  dataset; pass it to --mode eval as --config.eval.fid_stats_path.
  """
  from pds_jax import fid_stats as fid_stats_lib
  if is_gaussian_reference(config):
    raise ValueError('--mode fid_stats reads images of config.data.dataset; the Gaussian reference has no image '
                     'files (its eval mode draws exact reference images).')
  variables = fid_stats_lib.inception_variables(config)  # missing or mismatching weights fail before any compute
  datasets.count_images(config, config.eval.reference_split)  # so does a missing or empty dataset
  folder = output_folder(workdir, eval_folder)
  path = os.path.join(folder, fid_stats_lib.stats_filename(config))
  result = fid_stats_lib.compute_fid_stats(config, variables=variables)
  fid_stats_lib.write_fid_stats(path, result)
  print(f'{result.num_images} images of the {config.eval.reference_split} split -> {path} '
        f'(pool_3 {result.pool_3.shape}, mu, sigma)')
  return {'path': path, 'num_images': result.num_images}


def evaluate(config: ml_collections.ConfigDict, workdir: str, sample_folders: Optional[Sequence[str]] = None,
             eval_folder: str = 'eval') -> Dict:
  """Metrics of sampled images against the data (`pds_jax.evaluation`): SWD, KID / FD on fixed
  features, FID / KID / IS with Inception weights, and the exact metrics for the Gaussian reference.

  sample_folders: folders written by --mode sample (default: workdir/<eval_folder>). Writes
  workdir/<eval_folder>/metrics.json and, for several folders, one metric-vs-steps PNG per metric
  with a line for the vanilla runs and one for the PDS runs.
  With eval.fid_stats_path (a `<dataset>_stats.npz` of --mode fid_stats or score_sde) the reference's
  Inception statistics come from that file; the reference images still give SWD and the feature metrics.
  """
  from pds_jax import evaluation
  reference_stats = None
  if config.eval.get('fid_stats_path'):
    from pds_jax import fid_stats as fid_stats_lib
    if not config.eval.inception_path:
      raise ValueError(f'config.eval.fid_stats_path = {config.eval.fid_stats_path!r} holds reference Inception '
                       'statistics for FID, which also needs the samples\' Inception features: set '
                       'config.eval.inception_path too.')
    reference_stats = fid_stats_lib.load_fid_stats(config.eval.fid_stats_path)
  sample_folders = list(sample_folders or [os.path.join(workdir, eval_folder)])
  loaded = [shards.load_sample_folder(folder) for folder in sample_folders]  # every input checked first
  out = output_folder(workdir, eval_folder)
  num_reference = min(config.eval.num_reference, max(len(s) for s, _ in loaded))
  sizes = [num_reference, min(len(s) for s, _ in loaded)]
  if reference_stats is not None and reference_stats.pool_3 is not None:
    sizes.append(len(reference_stats.pool_3))  # KID-Inception's reference subsets come from the file's pool_3
  metric_config = evaluation.with_kid_subset(config, *sizes)
  reference = evaluation.image_features(reference_images(config, num_reference)[0], metric_config, 'reference',
                                        fid_stats=reference_stats)
  results = {}
  for folder, (samples, report) in zip(sample_folders, loaded):
    metrics = evaluation.evaluate_samples(samples, reference, metric_config)
    if report.get('metrics'):
      metrics['exact_gaussian'] = report['metrics']
    if reference_stats is not None:
      metrics['fid_stats'] = {'path': reference_stats.path, 'num_images': reference_stats.num_images}
    results[folder] = {'settings': report['settings'], 'nfe_per_sample': report['nfe_per_sample'], 'metrics': metrics}
    print(f'{folder}: steps={report["settings"]["num_steps"]} swd={metrics["swd"]["avg"]:.4g} '
          f'fd_features={metrics["fd_features"]:.4g} kid={metrics["kid"]["mean"]:.4g}'
          + (f' fid={metrics["fid"]:.6g}' if 'fid' in metrics else ''))
  evaluation.write_metrics(os.path.join(out, 'metrics.json'), results)
  if len(results) > 1:
    runs = _vanilla_and_pds(results, lambda r: r['settings']['num_steps'])
    for name in ('swd.avg', 'fd_features', 'kid') + (('fid',) if config.eval.inception_path else ()):
      evaluation.plot_metric_vs_steps(runs, name, os.path.join(out, f'{name.replace(".", "_")}_vs_steps.png'))
  print(f'wrote {out}/metrics.json')
  return results


def fit_init(config: ml_collections.ConfigDict, workdir: str) -> Dict:
  """Fits q_T ≈ p_T = data * N(0, σ_T² I) for init-aware sampling (config.sampling.init) and saves it.

  Chooses σ_T unless config.init_aware.sigma_t is set (init_aware.sigma_t_rule 'principal', the
  default, or 'dip'; `init_aware.fit.choose_sigma_t`), fits the flow (maximum likelihood on noised
  data) or the closed-form init on a seeded subset of the training images (in the model's data
  range), and prints the validation NLL per dimension and the init error (sliced Wasserstein to
  held-out noised data), next to N(0, σ_T² I)'s. Writes <init folder>/init.json plus the init's file
  (see `init_aware.store`). sampling.init = 'prior' (the default) fits `store.FIT_DEFAULT`, the
  closed-form spectral Gaussian.
  """
  from pds_jax.init_aware import fit, store
  kind = fit.check_fit_config(config)
  train_x0, val_x0 = fit.fit_data(config)
  info = {'num_train': len(train_x0), 'num_val': len(val_x0)}
  sigma_t, sigma_info, line = fit.choose_sigma_t(config, train_x0)
  info.update(sigma_info)
  if line:
    print(line)
  init, history = fit.fit_q_t(config, kind, train_x0, val_x0, sigma_t)
  for name, scores in fit.score_init(config, kind, init, val_x0, sigma_t).items():
    info[name] = scores
    print(f'{name:20s} validation NLL {scores["val_nll_per_dim"]:.4f} nats/dim   sliced W2 to held-out noised data '
          f'{scores["sliced_wasserstein"]:.4g}')
  path = store.save_init(store.init_folder(config, workdir), kind, init, sigma_t, image_shape(config), info, history)
  print(f'wrote {path}')
  return {'sigma_t': sigma_t, **info}


# ----------------------------------------------------------------------------- training


def train(config: ml_collections.ConfigDict, workdir: str) -> Dict:
  """score_sde's training loop: resumable, pmapped, legacy checkpoints (run_lib.train).

  workdir/checkpoints/checkpoint_<ceil(step / snapshot_freq)> (all kept) and
  workdir/checkpoints-meta/checkpoint_<step // snapshot_freq_for_preemption> (the last one) are
  written atomically in score_sde's layout; a restarted run resumes from the newer of the two.
  Also writes train_log.jsonl and, when `training.snapshot_sampling`, samples/iter_<step>/sample.png.
  Returns a summary dict (steps, last losses, steps/s).
  """
  import flax.jax_utils as flax_utils
  from tqdm.auto import tqdm

  from pds_jax import checkpoints, losses
  from pds_jax.models import utils as mutils

  training.check_train_config(config)
  t = config.training
  os.makedirs(workdir, exist_ok=True)
  checkpoint_dir = os.path.join(workdir, 'checkpoints')
  meta_dir = os.path.join(workdir, 'checkpoints-meta')

  rng = jax.random.PRNGKey(config.seed)
  rng, init_rng = jax.random.split(rng)
  model, init_model_state, initial_params = mutils.init_model(init_rng, config)
  state = checkpoints.State(step=jnp.zeros((), jnp.int32), params=initial_params, params_ema=initial_params,
                            model_state=init_model_state, opt_state=losses.init_adam_state(initial_params),
                            lr=jnp.asarray(config.optim.lr, jnp.float32),
                            ema_rate=jnp.asarray(config.model.ema_rate, jnp.float32), rng=rng)
  restored = [checkpoints.restore_checkpoint(d, config) for d in (meta_dir, checkpoint_dir)
              if checkpoints.list_checkpoints(d)]
  if restored:
    latest = max(restored, key=lambda s: int(s.step))
    if latest.params is None or latest.opt_state is None:
      raise ValueError(f'the newest checkpoint in {workdir} (step {int(latest.step)}) is sampling-only; '
                       'resuming training needs one with the optimizer state.')
    state = latest.replace(lr=state.lr, ema_rate=state.ema_rate)
    logging.info('resuming training at step %d', int(state.step))
  initial_step = int(state.step)
  rng = state.rng

  train_ds, eval_ds = datasets.get_dataset(training.reseeded(config, initial_step),
                                           uniform_dequantization=config.data.uniform_dequantization)
  train_iter, eval_iter = iter(train_ds), training.cycle(eval_ds, t.batch_size)
  scaler, inverse_scaler = datasets.get_data_scaler(config), datasets.get_data_inverse_scaler(config)

  sde, sampling_eps = sde_lib.get_sde(config)
  step_kwargs = dict(reduce_mean=t.reduce_mean, continuous=t.continuous, likelihood_weighting=t.likelihood_weighting)
  train_step = losses.get_step_fn(sde, model, train=True, optimize_fn=losses.optimization_manager(config),
                                  **step_kwargs)
  eval_step = losses.get_step_fn(sde, model, train=False, **step_kwargs)
  p_train_step = jax.pmap(training.unrolled(train_step), axis_name='batch', donate_argnums=1)
  p_eval_step = jax.pmap(training.unrolled(eval_step), axis_name='batch')
  if t.snapshot_sampling:
    sample_shape = (min(t.batch_size, 64),) + image_shape(config)
    sampling_fn = sampling.get_sampling_fn(config, sde, sample_shape, inverse_scaler, sampling_eps)

  pstate = flax_utils.replicate(state)
  rng = jax.random.fold_in(rng, jax.process_index())
  log = training.TrainLog(workdir, initial_step)
  n_jitted = t.n_jitted_steps
  num_devices = jax.local_device_count()
  summary = {'initial_step': initial_step, 'final_step': initial_step}
  start, steps_done = time.perf_counter(), 0
  bar = tqdm(range(initial_step + n_jitted, t.n_iters + 1, n_jitted), desc='train', unit='call',
             initial=0, dynamic_ncols=True)

  def save(folder, number, keep):
    saved = flax_utils.unreplicate(pstate).replace(rng=rng)
    return checkpoints.save_checkpoint(folder, jax.device_get(saved), number, keep=keep)

  for step in bar:  # `step` counts the steps done after this call, as score_sde's loop variable
    batch = training.train_batches(train_iter, scaler, n_jitted)
    rng, *step_rngs = jax.random.split(rng, num_devices + 1)
    (_, pstate), ploss = p_train_step((jnp.asarray(step_rngs), pstate), batch)
    steps_done += n_jitted
    if step % t.log_freq == 0:
      loss = float(np.mean(jax.device_get(ploss)))
      if not np.isfinite(loss):
        raise FloatingPointError(f'training loss is {loss} at step {step}; lower config.optim.lr or check the data.')
      rate = steps_done / (time.perf_counter() - start)
      bar.set_postfix(step=step, loss=f'{loss:.4g}', steps_per_s=f'{rate:.2f}')
      log.write(step, training_loss=loss, steps_per_second=rate)
      summary.update(final_step=step, training_loss=loss, steps_per_second=rate)
    if step % t.snapshot_freq_for_preemption == 0 and jax.process_index() == 0:
      save(meta_dir, step // t.snapshot_freq_for_preemption, keep=1)
    if step % t.eval_freq == 0:
      eval_batch = training.train_batches(eval_iter, scaler, n_jitted)
      rng, *eval_rngs = jax.random.split(rng, num_devices + 1)
      _, peval = p_eval_step((jnp.asarray(eval_rngs), pstate), eval_batch)
      eval_loss = float(np.mean(jax.device_get(peval)))
      log.write(step, eval_loss=eval_loss)
      summary['eval_loss'] = eval_loss
    if step % t.snapshot_freq == 0 or step + n_jitted > t.n_iters:
      if jax.process_index() == 0:
        path = save(checkpoint_dir, -(-step // t.snapshot_freq), keep=None)  # the last one rounds up
        logging.info('step %d: wrote %s', step, path)
      if t.snapshot_sampling:
        params = flax_utils.unreplicate(pstate)
        score_fn = mutils.get_score_fn(sde, model, params.params_ema, params.model_state, train=False,
                                       continuous=t.continuous)
        rng, sample_rng = jax.random.split(rng)
        samples, _ = sampling_fn(sample_rng, score_fn, progress=False)
        folder = os.path.join(workdir, 'samples', f'iter_{step}')
        os.makedirs(folder, exist_ok=True)
        samples = np.clip(np.asarray(samples, np.float32), 0., 1.)
        write_png(os.path.join(folder, 'sample.png'), image_grid(samples))
        write_npz(os.path.join(folder, 'sample.npz'), sample=np.round(samples * 255.).astype(np.uint8))
  bar.close()
  summary.update(final_step=initial_step + steps_done, seconds=time.perf_counter() - start)
  write_json(os.path.join(workdir, 'train_summary.json'), summary)
  return summary
