"""The modes of `main.py`: train, sample, compare (vanilla vs PDS), convert, stats, fid_stats, eval,
fit_init, likelihood (bits/dim), inpaint and colorize (controllable generation).

Like score_sde's `run_lib.py`, each mode is a function of (config, workdir, ...); `main.py` only
parses flags. The library parts the modes share live in `pds_jax`: `sampling_run` (checks, score
function, preconditioner, sampler), `compare_run` (compare's runs, reference and figures),
`eval_run` (eval's runs, reference and plots), `likelihood_run` and `controllable_run` (the same for
bits/dim and inpaint / colorize), `references` (the data a run is measured against), `shards` (the one
resumable round loop, `run_rounds`, and its shard writer), `io_utils` (atomic writers), `figures`,
`init_aware.fit`, `training`.
Every input is validated before any compute starts, and every file is written atomically, so an
interrupted run never leaves a half-written output.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pds_jax import compare_run, datasets, sampling, sde_lib, shards, training
from pds_jax.figures import compare_panel_title, image_grid, sample_caption, titled_panels
from pds_jax.io_utils import output_folder, write_json, write_png
from pds_jax.references import exact_metrics, image_shape, is_gaussian_reference
from pds_jax.sampling_run import SamplingRun, draw, load_preconditioner

MODES = ('train', 'sample', 'compare', 'convert', 'stats', 'fid_stats', 'eval', 'fit_init', 'likelihood', 'inpaint',
         'colorize', 'tune_schedule')


# ----------------------------------------------------------------------------- sample, compare


def sample(config: ml_collections.ConfigDict, workdir: str, eval_folder: str = 'eval') -> Optional[Dict]:
  """Draws `eval.num_samples` samples in rounds of `eval.batch_size`, resumably, on all devices and hosts.

  Round r holds samples r·B … r·B + B - 1, sample i drawn with the key fold_in(PRNGKey(seed), i);
  rounds go round-robin to the hosts, each writing workdir/<eval_folder>/samples_<r>_<host>.npz
  atomically (uint8 `samples` as score_sde writes them, float32 `samples_float`; `shards.run_rounds`).
  A restarted run skips the rounds already on disk. Host 0 then writes grid.png and report.json,
  streaming over the shards (memory independent of num_samples), and prints the NFE per sample and
  the wall time. Returns the report on host 0, else None.
  """
  start = time.perf_counter()
  run = SamplingRun.build(config, workdir)
  sampler = run.sampler(load_preconditioner(config))
  settings = run.settings(sampler)
  folder = output_folder(workdir, eval_folder, create=False)
  total, parallel = config.eval.num_samples, config.eval.parallel

  def draw_round(r: shards.Round) -> Dict:
    samples, nfe, _ = draw(sampler, r.keys, run.score_fn, parallel)
    return {'samples': samples, 'nfe': np.float64(nfe)}

  finished = shards.run_rounds(folder, {**settings, 'num_samples': total}, total, config.eval.batch_size, draw_round,
                               seed=config.seed, wait_timeout=config.eval.wait_timeout)
  if finished is None:
    return None
  accumulator, preview, nfe = shards.sample_summary(finished.files, total)
  write_png(os.path.join(folder, 'grid.png'), titled_panels(
      [(sample_caption(settings, nfe, accumulator.count), image_grid(preview))], min_width=480))
  report = {'settings': {**settings, 'parallel': parallel, 'devices_per_host': jax.local_device_count(),
                         'hosts': jax.process_count()},
            'num_samples': accumulator.count, 'num_rounds': len(finished.files), 'nfe_per_sample': nfe,
            'wall_seconds_per_round_this_run_host0': finished.seconds,
            'first_round_includes_compile': bool(finished.seconds), 'metrics': exact_metrics(config, accumulator)}
  write_json(os.path.join(folder, 'report.json'), report)
  print(f'{accumulator.count} samples ({settings["method"]}, {settings["num_steps"]} steps): {nfe:g} NFE per sample, '
        f'wall time {time.perf_counter() - start:.1f} s ({len(finished.seconds)} rounds run now)')
  print(f'wrote {folder}/grid.png, report.json and {len(finished.files)} shards')
  return report


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
  job = compare_run.CompareRun(config, workdir)  # every setting checked, the model restored once
  folder = output_folder(workdir, eval_folder)
  job.load_reference()
  results, grids = {}, []
  width = max(8, *(len(run.name) for run in job.runs))
  for run in job.runs:
    samples, results[run.name] = job.draw(run)
    shards.write_shard(os.path.join(folder, f'samples_{run.name}.npz'), samples)
    if run.panel:
      grids.append((compare_panel_title(results[run.name]), image_grid(samples[:36], nrow=6)))
    print(compare_run.run_line(run.name, results[run.name], width))
  floor, data_panel = job.noise_floor()
  write_png(os.path.join(folder, 'vanilla_vs_pds.png'), titled_panels(grids + [data_panel], title=job.title('grid')))
  compare_run.plot_compare(results, floor, os.path.join(folder, 'metric_vs_nfe.png'), job.title('plot'))
  results['noise_floor'] = floor
  print('data images (noise floor of the metrics): ' + compare_run.metrics_text(floor))
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
  Round r writes workdir/<eval_folder>/bpd_<r>_<host>.npz (`likelihood_run.LikelihoodRun.round`).
  Host 0 then writes report.json: `bpd` (mean), `bpd_std`, `bpd_sem`, `nfe`, `bpd_per_image` (by
  file name), the settings, and for the Gaussian reference `bpd_exact` and the error of the mean.
  """
  from pds_jax.likelihood_run import LikelihoodRun
  job = LikelihoodRun(config, workdir)
  folder = output_folder(workdir, eval_folder, create=False)
  finished = shards.run_rounds(folder, {**job.settings, 'num_samples': job.total}, job.total, job.batch, job.round,
                               seed=config.seed, prefix='bpd', what='images', wait_timeout=config.eval.wait_timeout,
                               postfix=job.postfix)
  if finished is None:
    return None
  report = job.report(finished.files)
  write_json(os.path.join(folder, 'report.json'), report)
  print(job.summary_line(report))
  print(f'wrote {folder}/report.json')
  return report


def _controllable(config, workdir: str, mode: str, input_dir: Optional[str], mask_path: Optional[str],
                  eval_folder: str) -> Optional[Dict]:
  """inpaint / colorize: see `inpaint`."""
  from pds_jax.controllable_run import ControllableRun
  job = ControllableRun(config, workdir, mode, input_dir, mask_path)
  folder = output_folder(workdir, eval_folder, create=False)
  finished = shards.run_rounds(folder, {**job.settings, 'num_samples': job.total}, job.total, job.batch, job.round,
                               seed=config.seed, what='images', wait_timeout=config.eval.wait_timeout)
  if finished is None:
    return None
  report, grid = job.report(finished.files)
  write_png(os.path.join(folder, 'grid.png'), grid)
  write_json(os.path.join(folder, 'report.json'), report)
  print(job.summary_line(report))
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


def convert(config: ml_collections.ConfigDict, workdir: str, pytorch_checkpoint: Optional[str],
            overrides: Optional[Dict] = None) -> str:
  """Converts a score_sde_pytorch `.pth` into workdir/checkpoints/checkpoint_<N> (legacy Flax layout).

  overrides: the command line's --config.<field> values; their model.* and data.* entries are stored
  beside the checkpoint (checkpoints/config_overrides.json), and main.py applies them to every later
  command on this workdir (`checkpoints.apply_config_overrides`), so those need none.
  """
  if not pytorch_checkpoint:
    raise ValueError('--mode convert needs --pytorch_checkpoint=<file.pth>.')
  if not os.path.isfile(pytorch_checkpoint):
    raise ValueError(f'{pytorch_checkpoint}: PyTorch checkpoint not found.')
  from pds_jax import checkpoints
  path = checkpoints.write_converted_checkpoint(pytorch_checkpoint, config, workdir)
  print(f'wrote {path}')
  stored = checkpoints.write_config_overrides(workdir, overrides or {})
  if stored:
    print(f'wrote {stored}: later commands with --workdir={workdir} apply its '
          + ' '.join(f'--config.{k}={v}' for k, v in sorted(overrides.items()) if k.split('.')[0] in
                     checkpoints.STORED_OVERRIDE_GROUPS) + ' themselves')
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

  sample_folders: folders written by --mode sample or --mode compare (each of compare's
  samples_<run>.npz is a run), or single samples_<run>.npz files (default: workdir/<eval_folder>).
  The reference is compare's: the first eval.num_reference images of one seeded permutation of
  eval.reference_split (for the shipped model the 2000 patches), whatever the number of samples; the
  noise floor is the same metrics of as many other real images as the largest run has samples.
  Writes workdir/<eval_folder>/metrics.json (per run: settings, NFE, metrics; num_reference,
  reference_split and noise_floor) and one <metric>_vs_nfe.png per metric: every run a labelled
  point at its NFE per sample, runs of one method, init and PDS joined into a line, the floor dashed.
  With eval.fid_stats_path (a `<dataset>_stats.npz` of --mode fid_stats or score_sde) the reference's
  Inception statistics come from that file; the reference images still give SWD and the feature metrics.
  """
  from pds_jax import eval_run, evaluation
  reference_stats = eval_run.check_eval_config(config)
  runs = eval_run.load_runs(list(sample_folders or [os.path.join(workdir, eval_folder)]))  # every input checked first
  out = output_folder(workdir, eval_folder)
  reference = eval_run.EvalReference(config, runs, reference_stats)
  print(reference.description())
  floor = reference.noise_floor()
  print(f'noise floor ({len(reference.held_out)} real images not in the reference): {eval_run.metrics_line(floor)}')
  results = {}
  for name, samples, report in runs:
    results[name] = reference.measure(samples, report)
    print(f'{name}: {eval_run.run_label(report["settings"])} steps={report["settings"]["num_steps"]} '
          f'nfe={report["nfe_per_sample"]:g} {eval_run.metrics_line(results[name]["metrics"])}')
  evaluation.write_metrics(os.path.join(out, 'metrics.json'),
                           {**results, 'num_reference': reference.num_reference,
                            'reference_split': config.eval.reference_split, 'noise_floor': floor})
  written = eval_run.plot_metrics_vs_nfe(results, floor, reference, out, bool(config.eval.inception_path))
  print(f'wrote {out}/metrics.json, {", ".join(written)}')
  return results


def fit_init(config: ml_collections.ConfigDict, workdir: str) -> Dict:
  """Fits q_T ≈ p_T = data * N(0, σ_T² I) for init-aware sampling (config.sampling.init) and saves it.

  Chooses σ_T unless config.init_aware.sigma_t is set (init_aware.sigma_t_rule 'principal', the
  default, or 'dip'; `init_aware.fit.choose_sigma_t`), fits the flow (maximum likelihood on noised
  data) or the closed-form init on a seeded subset of the training images (in the model's data
  range), and prints the validation NLL per dimension and the init error (sliced Wasserstein to
  held-out noised data), next to N(0, σ_T² I)'s, and whether the fit beats that baseline. Writes
  <workdir>/init/init.json plus the init's file (see `init_aware.store`), and nowhere else:
  sampling.init_path is only read (sampling prefers <workdir>/init when it exists). sampling.init =
  'prior' (the default) fits `store.FIT_DEFAULT`, the closed-form spectral Gaussian.
  """
  from pds_jax.init_aware import fit, store
  kind = fit.check_fit_config(config)
  folder = store.fit_folder(workdir)
  store.check_writable(folder)  # before any compute
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
  info['beats_baseline'] = fit.beats_baseline(info[kind], info['gaussian_baseline'])
  print(fit.baseline_verdict(kind, info[kind], info['gaussian_baseline']))
  path = store.save_init(folder, kind, init, sigma_t, image_shape(config), info, history)
  print(f'wrote {path}')
  print(f'sampling with --config.sampling.init={kind} and --workdir={workdir} reads it from {folder} (before '
        'sampling.init_path)')
  return {'sigma_t': sigma_t, 'path': path, **info}


def tune_schedule(config: ml_collections.ConfigDict, workdir: str) -> Dict:
  """Searches the σ nodes of sampling.method at sampling.num_steps on this model (`pds_jax.samplers.tune`: GITS's
  DP, then a descent of the global error) and writes workdir/schedule/<method>_<nfe>.json atomically; sample with
  it by --config.sampling.schedule=tuned --config.sampling.schedule_path=<that file>."""
  from pds_jax.samplers import tune
  run = SamplingRun.build(config, workdir)
  spec = tune.search(config.sampling, run.sampler().sampler, run.score_fn, run.eps, config.seed, progress=True)
  spec['model'] = run.model_info
  path = os.path.join(workdir, 'schedule', f'{spec["method"]}_{spec["nfe"]}.json')
  write_json(path, spec)
  print(tune.summary(spec, path))
  return spec


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

  from pds_jax import checkpoints
  from pds_jax.models import utils as mutils

  training.check_train_config(config)
  t = config.training
  os.makedirs(workdir, exist_ok=True)
  checkpoint_dir = os.path.join(workdir, 'checkpoints')
  meta_dir = os.path.join(workdir, 'checkpoints-meta')
  model, state = training.init_state(config)
  state = training.restore_latest(state, (meta_dir, checkpoint_dir), config, workdir)
  initial_step = int(state.step)
  rng = state.rng

  train_ds, eval_ds = datasets.get_dataset(training.reseeded(config, initial_step),
                                           uniform_dequantization=config.data.uniform_dequantization)
  train_iter, eval_iter = iter(train_ds), training.cycle(eval_ds, t.batch_size)
  scaler, inverse_scaler = datasets.get_data_scaler(config), datasets.get_data_inverse_scaler(config)
  sde, sampling_eps = sde_lib.get_sde(config)
  p_train_step, p_eval_step = training.pmapped_steps(config, sde, model)
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
      loss = training.finite_loss(ploss, step)
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
        training.save_snapshot_samples(os.path.join(workdir, 'samples', f'iter_{step}'), samples)
  bar.close()
  summary.update(final_step=initial_step + steps_done, seconds=time.perf_counter() - start)
  write_json(os.path.join(workdir, 'train_summary.json'), summary)
  return summary
