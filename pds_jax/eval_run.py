"""The metrics of sampled runs against the data (`--mode eval`): the runs, the reference, the plots.

`check_eval_config(config)` checks config.eval and loads the reference's Inception statistics
(eval.fid_stats_path) before anything is computed; `load_runs` reads and checks every run of the
given sample folders; `EvalReference(config, runs, fid_stats)` reads compare's reference (the first
eval.num_reference images of one seeded permutation of eval.reference_split) and its features, and
measures the noise floor and each run against it (`pds_jax.evaluation`); `plot_metrics_vs_nfe`
draws one <metric>_vs_nfe.png per metric.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np

from pds_jax import evaluation, gaussian, shards
from pds_jax.references import exact_metrics, is_gaussian_reference, reference_images


def check_eval_config(config):
  """Checks eval.fid_stats_path / inception_path and eval.num_reference; returns the reference's Inception
  statistics (`fid_stats.load_fid_stats`) or None. ValueError naming the field."""
  reference_stats = None
  if config.eval.get('fid_stats_path'):
    from pds_jax import fid_stats as fid_stats_lib
    if not config.eval.inception_path:
      raise ValueError(f'config.eval.fid_stats_path = {config.eval.fid_stats_path!r} holds reference Inception '
                       'statistics for FID, which also needs the samples\' Inception features: set '
                       'config.eval.inception_path too.')
    reference_stats = fid_stats_lib.load_fid_stats(config.eval.fid_stats_path)
  if config.eval.num_reference < 1:
    raise ValueError(f'config.eval.num_reference = {config.eval.num_reference} must be >= 1.')
  return reference_stats


def load_runs(paths: Sequence[str]) -> List[Tuple[str, np.ndarray, Dict]]:
  """(name, uint8 samples (N, H, W, C), {'settings', 'nfe_per_sample'}) of every run in `paths`: a
  --mode sample folder, a --mode compare folder (each of its samples_<run>.npz) or one such file.
  Every path is checked before anything is computed; ValueError naming the path."""
  runs = []
  for path in paths:
    compare_file = os.path.isfile(path) and os.path.basename(path).startswith('samples_') and path.endswith('.npz')
    folder = os.path.dirname(path) if compare_file else path
    report_path = os.path.join(folder, 'report.json')
    report = None
    if os.path.isfile(report_path):
      with open(report_path) as f:
        report = json.load(f)
    if not compare_file and (report is None or 'settings' in report):  # a --mode sample folder
      samples, report = shards.load_sample_folder(folder)
      runs.append((folder, samples, report))
      continue
    names = ([os.path.basename(path)[len('samples_'):-len('.npz')]] if compare_file else
             [n for n in report if isinstance(report[n], dict) and 'settings' in report[n]])
    if report is None or not names or any(n not in report for n in names):
      raise ValueError(f'{path}: not a --mode compare output (its report.json has no run {names[0] if names else ""!r}); '
                       'pass folders written by --mode sample or compare, or their samples_<run>.npz.')
    for name in names:
      npz = os.path.join(folder, f'samples_{name}.npz')
      if not os.path.isfile(npz):
        raise ValueError(f'{npz}: missing (report.json of --mode compare names the run {name!r}).')
      with np.load(npz) as f:
        runs.append((npz, f['samples'], report[name]))
  return runs


def run_label(settings: Dict) -> str:
  """'<method> · init <init> · PDS | no PDS': the line of a run in eval's metric-vs-NFE plots."""
  return (f'{settings.get("method", "unknown method")} · init {settings.get("init", "prior")} · '
          f'{"PDS" if settings.get("preconditioned") else "no PDS"}')


def point_name(name: str) -> str:
  """A run's point label: its sample folder's name, or <folder>/<run> for compare's <folder>/samples_<run>.npz."""
  base = os.path.basename(name.rstrip('/'))
  return (f'{os.path.basename(os.path.dirname(name))}/{base[len("samples_"):-len(".npz")]}'
          if base.startswith('samples_') and base.endswith('.npz') else base)


def metrics_line(metrics: Dict) -> str:
  """'swd=… fd_features=… kid=… [fid=…]': eval's printed line of a run's metrics."""
  return (f'swd={metrics["swd"]["avg"]:.4g} fd_features={metrics["fd_features"]:.4g} '
          f'kid={metrics["kid"]["mean"]:.4g}' + (f' fid={metrics["fid"]:.6g}' if 'fid' in metrics else ''))


class EvalReference:
  """compare's reference for `runs`, its features, and as many held-out real images as the largest run has samples."""

  def __init__(self, config, runs: Sequence[Tuple[str, np.ndarray, Dict]], reference_stats=None):
    self.config, self.reference_stats = config, reference_stats
    num_floor = max(len(samples) for _, samples, _ in runs)
    reference_x, self.held_out = reference_images(config, config.eval.num_reference, num_floor)
    self.num_reference = len(reference_x)
    sizes = [self.num_reference, num_floor, min(len(samples) for _, samples, _ in runs)]
    if reference_stats is not None and reference_stats.pool_3 is not None:
      sizes.append(len(reference_stats.pool_3))  # KID-Inception's reference subsets come from the file's pool_3
    self.metric_config = evaluation.with_kid_subset(config, *sizes)
    self.features = evaluation.image_features(reference_x, self.metric_config, 'reference', fid_stats=reference_stats)
    counts = sorted({len(samples) for _, samples, _ in runs})
    self.sample_count = f'{counts[0]}' if len(counts) == 1 else f'{counts[0]}-{counts[-1]}'

  def description(self) -> str:
    """The printed line naming the reference."""
    config = self.config
    split = 'exact draws of the Gaussian reference' if is_gaussian_reference(config) else \
        f'the {config.eval.reference_split} split'
    return (f'reference: {self.num_reference} images of {split} (eval.num_reference {config.eval.num_reference}; '
            'the same reference as --mode compare)')

  def noise_floor(self) -> Dict:
    """The metrics of the held-out real images (plus the exact ones for the Gaussian reference)."""
    floor = evaluation.evaluate_samples(self.held_out, self.features, self.metric_config)
    if is_gaussian_reference(self.config):
      floor['exact_gaussian'] = exact_metrics(self.config, gaussian.MomentAccumulator().add(self.held_out))
    return floor

  def measure(self, samples: np.ndarray, report: Dict) -> Dict:
    """One run's {'settings', 'nfe_per_sample', 'metrics'} from its samples and its report."""
    metrics = evaluation.evaluate_samples(samples, self.features, self.metric_config)
    if is_gaussian_reference(self.config) and report.get('metrics'):
      metrics['exact_gaussian'] = report['metrics']
    if self.reference_stats is not None:
      metrics['fid_stats'] = {'path': self.reference_stats.path, 'num_images': self.reference_stats.num_images}
    return {'settings': report['settings'], 'nfe_per_sample': report['nfe_per_sample'], 'metrics': metrics}


def plot_metrics_vs_nfe(results: Dict[str, Dict], floor: Dict, reference: EvalReference, out: str,
                        inception: bool) -> List[str]:
  """One <metric>_vs_nfe.png per metric in `out`: every run a labelled point at its NFE per sample, the runs of
  one `run_label` joined into a line, the noise floor dashed. Returns the file names."""
  groups = {}
  for name, result in results.items():
    xs, metrics, names = groups.setdefault(run_label(result['settings']), ([], [], []))
    xs.append(result['nfe_per_sample'])
    metrics.append(result['metrics'])
    names.append(point_name(name))
  written = []
  for metric in ('swd.avg', 'fd_features', 'kid') + (('fid',) if inception else ()):
    value = evaluation.metric_value(floor, metric)
    path = os.path.join(out, f'{metric.replace(".", "_")}_vs_nfe.png')
    evaluation.plot_metric_vs_steps(
        [(label, xs, m) for label, (xs, m, _) in groups.items()], metric, path, xlabel='NFE per sample',
        reference_lines={f'real images ({len(reference.held_out)}, noise floor)': value['mean']
                         if isinstance(value, dict) else value},
        title=(f'{metric} vs NFE: {len(results)} runs of {reference.sample_count} samples, against '
               f'{reference.num_reference} reference images'),
        point_labels=[names for _, _, names in groups.values()])
    written.append(os.path.basename(path))
  return written
