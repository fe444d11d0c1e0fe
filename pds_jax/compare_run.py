"""Vanilla vs PDS from the same seeds (`--mode compare`): the runs, their samplers, the reference, the figures.

`CompareRun(config, workdir)` lists the runs (`compare_runs`), checks every setting and restores the
model once before anything is sampled; `load_reference` then reads the reference the metrics are
computed against (eval.num_reference dataset images, or nothing for the Gaussian reference, whose
metrics are exact), `draw` samples one run from the shared per-sample keys and `noise_floor` gives
the same metrics of real images that are not in the reference set.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Tuple

import jax
import ml_collections
import numpy as np

from pds_jax import gaussian, sampling
from pds_jax.figures import headline_metric, image_grid, metric_line
from pds_jax.preconditioning import Preconditioner
from pds_jax.references import gaussian_reference, is_gaussian_reference, reference_images, sample_metrics
from pds_jax.samplers import methods
from pds_jax.sampling_run import SamplingRun, compare_preconditioner, draw


def with_sampling(config: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  """A copy of `config` with config.sampling.<name> = value for each field."""
  config = ml_collections.ConfigDict(config.to_dict())
  for name, value in fields.items():
    setattr(config.sampling, name, value)
  return config


def compare_runs(config: ml_collections.ConfigDict) -> List[Dict]:
  """compare's runs: vanilla (sampling.vanilla_speed_up when set) and PDS (sampling.speed_up), then vanilla
  and PDS at each N of sampling.compare_num_steps; each {'name', 'config', 'pds', 'panel'}."""
  vanilla = config if config.sampling.vanilla_speed_up is None else with_sampling(
      config, speed_up=config.sampling.vanilla_speed_up)
  runs = [{'name': 'vanilla', 'config': vanilla, 'pds': False, 'panel': True},
          {'name': 'pds', 'config': config, 'pds': True, 'panel': True}]
  steps = tuple(config.sampling.get('compare_num_steps') or ())  # absent from configs written for score_sde
  if any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in steps):
    raise ValueError(f'config.sampling.compare_num_steps = {steps}: step counts must be integers >= 1.')
  for n in steps:
    swept = with_sampling(config, num_steps=n)
    runs += [{'name': f'vanilla_{n}', 'config': swept, 'pds': False, 'panel': False},
             {'name': f'pds_{n}', 'config': swept, 'pds': True, 'panel': False}]
  return runs


def vanilla_and_pds(results: Dict[str, Dict], x: Callable[[Dict], float]) -> List[Tuple[str, List, List]]:
  """The runs of a report grouped for `evaluation.plot_metric_vs_steps`: ('vanilla' | 'PDS', x of each run, metrics)."""
  groups = {}
  for result in results.values():
    xs, metrics = groups.setdefault('PDS' if result['settings']['preconditioned'] else 'vanilla', ([], []))
    xs.append(x(result))
    metrics.append(result['metrics'])
  return [(label, xs, metrics) for label, (xs, metrics) in groups.items()]


def plot_compare(results: Dict, floor: Dict[str, float], path: str, title: str) -> None:
  """metric_vs_nfe.png: the headline metric of every compare run against its NFE, vanilla and PDS, data's as a line."""
  from pds_jax import evaluation
  runs = vanilla_and_pds(results, lambda r: r['nfe_per_sample'])
  name = headline_metric(floor)
  values = [m[name] for _, _, metrics in runs for m in metrics] + [floor[name]]
  log_y = min(values) > 0 and max(values) > 10 * min(values)  # spans an order of magnitude: log scale
  evaluation.plot_metric_vs_steps(runs, name, path, xlabel='NFE per sample',
                                  reference_lines={'data (noise floor)': floor[name]}, title=title, log_y=log_y)


@dataclasses.dataclass
class Run:
  """One run of compare: its name, config, whether it is preconditioned and shown as a panel, its built run
  and sampler."""
  name: str
  config: ml_collections.ConfigDict
  pds: bool
  panel: bool
  sampling_run: SamplingRun
  sampler: sampling.SamplingFn


class CompareRun:
  """Everything `--mode compare` needs; every run's setting is checked and the model restored once on construction."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config, self.runs = config, []
    score = None  # every setting is checked, and the model restored once, before anything is sampled
    for spec in compare_runs(config):
      run = SamplingRun.build(spec['config'], workdir, score)
      score = run.score_fn, run.model_info
      sampler = run.sampler(compare_preconditioner(spec['config']) if spec['pds'] else Preconditioner())
      self.runs.append(Run(spec['name'], spec['config'], spec['pds'], spec['panel'], run, sampler))
    self.keys = sampling.sample_keys(config.seed, 0, config.eval.batch_size)
    self.reference, self.held_out = None, None
    resolved = methods.resolve(config.sampling)
    self.method = resolved.alias or resolved.method.name

  def load_reference(self) -> None:
    """Reads the eval.num_reference dataset images and their features (nothing for the Gaussian reference)."""
    config = self.config
    if not is_gaussian_reference(config):
      from pds_jax import evaluation
      images, self.held_out = reference_images(config, config.eval.num_reference, config.eval.batch_size)
      self.reference = evaluation.image_features(images, evaluation.with_kid_subset(config, config.eval.batch_size),
                                                 'reference')

  def draw(self, run: Run) -> Tuple[np.ndarray, Dict]:
    """Samples `run` from the shared keys: (samples (B, H, W, C), {'settings', 'nfe_per_sample',
    'wall_seconds_incl_compile', 'metrics'})."""
    samples, nfe, seconds = draw(run.sampler, self.keys, run.sampling_run.score_fn)
    return samples, {'settings': run.sampling_run.settings(run.sampler), 'nfe_per_sample': nfe,
                     'wall_seconds_incl_compile': seconds,
                     'metrics': sample_metrics(self.config, np.clip(samples, 0., 1.), self.reference)}

  def noise_floor(self) -> Tuple[Dict[str, float], Tuple[str, np.ndarray]]:
    """(the metrics of as many data images that are not in the reference set, their titled panel)."""
    config = self.config
    if is_gaussian_reference(config):
      reference_model = gaussian_reference(config)
      self.held_out = np.asarray(reference_model.sample(jax.random.PRNGKey(config.seed + 2), config.eval.batch_size))
      floor = gaussian.metrics(self.held_out, reference_model)
    else:  # the same metrics of as many data images that are not in the reference set
      floor = sample_metrics(config, self.held_out, self.reference)
    return floor, (f'data (not in the reference set)\n{metric_line(floor)}', image_grid(self.held_out[:36], nrow=6))

  def title(self, figure: str) -> str:
    """The title of vanilla_vs_pds.png ('grid') or metric_vs_nfe.png ('plot')."""
    if figure == 'grid':
      return (f'{self.method} sampler, vanilla vs PDS from the same seeds '
              f'({self.config.eval.batch_size} samples each; 36 shown)')
    return f'{self.method} sampler, {self.config.eval.batch_size} samples per run'


def run_line(name: str, result: Dict, width: int) -> str:
  """compare's printed line of one run: its steps, NFE, wall time and metrics."""
  return (f'{name:{width}s} steps={result["settings"]["num_steps"]:5d} nfe={result["nfe_per_sample"]:5g} '
          f'wall={result["wall_seconds_incl_compile"]:7.2f}s ' + metrics_text(result['metrics']))


def metrics_text(metrics: Dict[str, float]) -> str:
  """'k=v k=v …' of a flat metrics dict, 4 significant digits."""
  return ' '.join(f'{k}={v:.4g}' for k, v in metrics.items())
