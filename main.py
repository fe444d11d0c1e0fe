"""Command-line entry point of pds_jax (score_sde / official PDS flags); the modes live in run_lib."""
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_dict
from ml_collections.config_flags import config_flags

import run_lib
from pds_jax import config_check, parallel
from pds_jax.samplers import methods

FLAGS = flags.FLAGS

config_flags.DEFINE_config_file('config', None, 'Configuration file (ml_collections); --config.<field>=None unsets a '
                                'field whose default is None (e.g. init_aware.sigma_t, sampling.num_steps).',
                                lock_config=True)


class _NullableParser(flags.ArgumentParser):
  """absl's float / int parser, plus 'None' -> None (`_check_none_overrides` admits it for nullable fields only)."""

  def __init__(self, parser: flags.ArgumentParser):
    self._parser = parser

  def parse(self, argument):
    if isinstance(argument, str) and argument.strip().lower() == 'none':
      return None
    return self._parser.parse(argument)

  def flag_type(self):
    return self._parser.flag_type()


for _type, _parser in ((float, flags.FloatParser()), (int, flags.IntegerParser())):
  config_flags.register_flag_parser_for_type(_type, _NullableParser(_parser))
flags.DEFINE_string('workdir', None, 'Work directory (checkpoints/ of the model; outputs go under it).')
flags.DEFINE_enum('mode', None, list(run_lib.MODES), 'Running mode.')
flags.DEFINE_string('eval_folder', None, 'Output folder inside workdir (default: eval; the mode name for compare, '
                    'stats, fid_stats, likelihood, inpaint, colorize).')
flags.DEFINE_float('speed_up', None, 'PDS speed-up k: sample with int(num_scales / k) steps (default: the '
                   "config's sampling.speed_up: 1 in score_sde's configs, 20 in configs/default_model.py).")
flags.DEFINE_float('alpha', None, 'PDS mask strength alpha >= 1 (larger = closer to the vanilla sampler); '
                   "default: the config's sampling.alpha, unset in the shipped configs, which means the rule "
                   'alpha(N) = max(5, N / 5, 500 / N^2) of the N steps (configs/pds/ set the official 5).')
flags.DEFINE_string('freq_mask_path', None, 'Official PDS frequency statistic (.npy, shape (C, H, W)).')
flags.DEFINE_string('space_mask_path', None, 'Official PDS space statistic (.npy, shape (C, H, W)).')
flags.DEFINE_list('sample_dirs', None, '--mode eval: sample folders to score (default: workdir/eval).')
flags.DEFINE_string('pytorch_checkpoint', None, 'score_sde_pytorch .pth file for --mode convert.')
flags.DEFINE_string('input_dir', None, '--mode inpaint / colorize: a folder of png/jpg images (default: the eval split).')
flags.DEFINE_string('mask_path', None, '--mode inpaint: a mask (.npy or .png, H×W or H×W×C, 1 = known pixel); '
                    'default: config.inpaint.mask.')
flags.DEFINE_string('jax_cache', os.path.expanduser('~/.cache/pds_jax/jax'),
                    'Persistent JAX compilation cache folder ("" to disable).')
flags.DEFINE_string('coordinator_address', None, 'Multi-host: address:port of process 0 (jax.distributed).')
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host: index of this process.')
flags.DEFINE_bool('distributed', False, 'Multi-host with the settings auto-detected by JAX (TPU pods, SLURM).')
flags.mark_flags_as_required(['workdir', 'config', 'mode'])

# The official PDS flags override config.sampling.<name> when given on the command line.
_PDS_FLAGS = ('speed_up', 'alpha', 'freq_mask_path', 'space_mask_path')
# Flags only some modes read; giving one to another mode is an error rather than silently ignored.
_EDIT_MODES = ('inpaint', 'colorize')
_MODE_FLAGS = {
    'speed_up': ('sample', 'compare') + _EDIT_MODES, 'freq_mask_path': ('sample', 'compare', 'stats') + _EDIT_MODES,
    'space_mask_path': ('sample', 'compare', 'stats') + _EDIT_MODES,
    'alpha': ('sample', 'compare', 'stats') + _EDIT_MODES,
    'eval_folder': ('sample', 'compare', 'stats', 'fid_stats', 'eval', 'likelihood') + _EDIT_MODES,
    'sample_dirs': ('eval',),
    'pytorch_checkpoint': ('convert',), 'input_dir': _EDIT_MODES, 'mask_path': _EDIT_MODES,  # colorize explains why it takes no mask
}


# Modes that split their batches over one CPU device per core (PDS_JAX_CPU_DEVICES: auto, the default, or 1), and
# the config.eval field of the batch: the sampler's, or the FID Inception network's (pds_jax.metrics.inception).
_CPU_CORE_MODES = {**{mode: 'batch_size' for mode in ('sample', 'compare', 'likelihood') + _EDIT_MODES},
                   'eval': 'inception_batch_size', 'fid_stats': 'inception_batch_size'}


def _fail(message: str) -> None:
  print(f'pds_jax: error: {message}', file=sys.stderr)
  sys.exit(2)


def parse_flags(argv):
  """absl's flag parsing; a bad flag, config file or config field is one line on stderr and exit code 2."""
  try:
    remaining = FLAGS(argv)
    FLAGS.config.keys()  # a config file that failed to load raises on first access
    return remaining
  except Exception as e:  # absl and ml_collections raise many types here; none should be a traceback
    _fail(config_check.explain(argv, e))


def _check_mode_flags() -> None:
  for name, modes in _MODE_FLAGS.items():
    if FLAGS[name].present and FLAGS.mode not in modes:
      _fail(f'--{name} is read by --mode {" / ".join(modes)} only; --mode {FLAGS.mode} would ignore it.')
  try:
    method = methods.resolve(FLAGS.config.sampling).method.name
  except ValueError as e:
    _fail(str(e))
  if FLAGS['speed_up'].present and (method != 'pc' or FLAGS.config.sampling.num_steps is not None):
    _fail(f'--speed_up sets the steps of sampling.method pc without sampling.num_steps; here (method {method!r}, '
          f'num_steps {FLAGS.config.sampling.num_steps}) it would be ignored: set --config.sampling.num_steps.')


def _drop_config_masks(config) -> None:
  """PDS masks set by the config file only are dropped, with one info line, for a method without PDS.

  Masks given on the command line (--freq_mask_path, --config.sampling.freq_mask_path, …) are kept,
  and the method then refuses them with its reason (`samplers.driver.Solver.check_preconditioner`).
  """
  names = ('freq_mask_path', 'space_mask_path')
  given = any(FLAGS[n].present or f'sampling.{n}' in FLAGS['config'].override_values for n in names)
  masks = [n for n in names if config.sampling[n]]
  if FLAGS.mode != 'sample' or given or not masks or methods.resolve(config.sampling).method.pds:
    return
  logging.info('sampling.method %s has no PDS: sampling without the config\'s %s (PDS applies to %s).',
               methods.resolve(config.sampling).method.name, ' and '.join(masks), ', '.join(methods.pds_methods()))
  with config.unlocked():
    for n in masks:
      config.sampling[n] = None


def _check_none_overrides() -> None:
  """--config.<field>=None is accepted only for fields declared nullable (config_dict.placeholder)."""
  for path, value in FLAGS['config'].override_values.items():
    if value is not None:
      continue
    *parents, name = path.split('.')
    node = FLAGS.config
    for parent in parents:
      node = node[parent]
    if not isinstance(node._fields.get(name), config_dict.FieldReference):  # pylint: disable=protected-access
      _fail(f'--config.{path}=None: config.{path} has no "unset" value (its default is not None); give a value.')


def main(argv):
  if len(argv) > 1:
    _fail(f'unexpected arguments {argv[1:]} (flags are --name=value).')
  if FLAGS.mode in _CPU_CORE_MODES:  # first: JAX's backend must not have started (pds_jax.parallel.use_cpu_cores)
    try:
      field = _CPU_CORE_MODES[FLAGS.mode]
      batch = FLAGS.config.eval.get(field)
      if batch is None:  # a config that predates the field: the metrics' own default Inception batch
        from pds_jax import evaluation
        batch = evaluation.MetricSettings._field_defaults[field]
      parallel.use_cpu_cores(int(batch))
    except ValueError as e:
      _fail(str(e))
  _check_none_overrides()
  _check_mode_flags()
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger('jax._src.xla_bridge').setLevel(logging.WARNING)  # "Unable to initialize backend 'tpu'" on every run
  if FLAGS.jax_cache:
    import jax
    jax.config.update('jax_compilation_cache_dir', FLAGS.jax_cache)
  config = FLAGS.config
  with config.unlocked():
    for name in _PDS_FLAGS:
      if FLAGS[name].present:
        setattr(config.sampling, name, FLAGS[name].value)
  _drop_config_masks(config)
  try:
    if FLAGS.mode != 'convert':  # the model / data overrides --mode convert stored for this workdir's checkpoint
      from pds_jax import checkpoints
      applied = checkpoints.apply_config_overrides(config, FLAGS.workdir, FLAGS['config'].override_values)
      if applied:
        logging.info('applying %s from %s', ' '.join(f'--config.{k}={v}' for k, v in applied.items()),
                     os.path.join(FLAGS.workdir, 'checkpoints', checkpoints.OVERRIDES_FILE))
    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                                    auto=FLAGS.distributed)
    if FLAGS.mode == 'train':
      run_lib.train(config, FLAGS.workdir)
    elif FLAGS.mode == 'sample':
      run_lib.sample(config, FLAGS.workdir, FLAGS.eval_folder or 'eval')
    elif FLAGS.mode == 'compare':
      run_lib.compare(config, FLAGS.workdir, FLAGS.eval_folder or 'compare')
    elif FLAGS.mode == 'convert':
      run_lib.convert(config, FLAGS.workdir, FLAGS.pytorch_checkpoint, FLAGS['config'].override_values)
    elif FLAGS.mode == 'stats':
      run_lib.stats(config, FLAGS.workdir, FLAGS.eval_folder or 'stats')
    elif FLAGS.mode == 'fid_stats':
      run_lib.fid_stats(config, FLAGS.workdir, FLAGS.eval_folder or 'fid_stats')
    elif FLAGS.mode == 'fit_init':
      run_lib.fit_init(config, FLAGS.workdir)
    elif FLAGS.mode == 'tune_schedule':
      run_lib.tune_schedule(config, FLAGS.workdir)
    elif FLAGS.mode == 'eval':
      run_lib.evaluate(config, FLAGS.workdir, FLAGS.sample_dirs, FLAGS.eval_folder or 'eval')
    elif FLAGS.mode == 'likelihood':
      run_lib.likelihood(config, FLAGS.workdir, FLAGS.eval_folder or 'likelihood')
    elif FLAGS.mode == 'inpaint':
      run_lib.inpaint(config, FLAGS.workdir, FLAGS.input_dir, FLAGS.mask_path, FLAGS.eval_folder or 'inpaint')
    elif FLAGS.mode == 'colorize':
      run_lib.colorize(config, FLAGS.workdir, FLAGS.input_dir, FLAGS.eval_folder or 'colorize', FLAGS.mask_path)
  except (ValueError, FloatingPointError, OSError) as e:  # bad input, non-finite samples, a full disk: a message
    print(f'pds_jax: error: {e}', file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt as e:  # Ctrl-C: one line (shards.Interrupted: how far); every file is atomic
    print(f'pds_jax: {str(e) or "interrupted; rerun the same command to resume"}', file=sys.stderr)
    sys.exit(130)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
