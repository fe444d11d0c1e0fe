"""Command-line entry point of pds_jax (score_sde / official PDS flags); the modes live in run_lib."""
import logging
import os
import sys

from absl import app, flags
from ml_collections.config_flags import config_flags

import run_lib
from pds_jax import config_check, parallel

FLAGS = flags.FLAGS

config_flags.DEFINE_config_file('config', None, 'Configuration file (ml_collections).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Work directory (checkpoints/ of the model; outputs go under it).')
flags.DEFINE_enum('mode', None, list(run_lib.MODES), 'Running mode.')
flags.DEFINE_string('eval_folder', None, 'Output folder inside workdir (default: eval; the mode name for compare, '
                    'stats, fid_stats, likelihood, inpaint, colorize).')
flags.DEFINE_float('speed_up', 1., 'PDS speed-up k: sample with int(num_scales / k) steps.')
flags.DEFINE_float('alpha', 5., 'PDS mask strength alpha >= 1 (larger = closer to the vanilla sampler); '
                   'without this flag the config decides (default: alpha(N) = max(5, N / 5, 500 / N^2)).')
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
  method = FLAGS.config.sampling.method.lower()
  if FLAGS['speed_up'].present and (method != 'pc' or FLAGS.config.sampling.num_steps is not None):
    _fail(f'--speed_up sets the steps of sampling.method pc without sampling.num_steps; here (method {method!r}, '
          f'num_steps {FLAGS.config.sampling.num_steps}) it would be ignored: set --config.sampling.num_steps.')


def main(argv):
  if len(argv) > 1:
    _fail(f'unexpected arguments {argv[1:]} (flags are --name=value).')
  _check_mode_flags()
  logging.getLogger().setLevel(logging.INFO)
  if FLAGS.jax_cache:
    import jax
    jax.config.update('jax_compilation_cache_dir', FLAGS.jax_cache)
  config = FLAGS.config
  with config.unlocked():
    for name in _PDS_FLAGS:
      if FLAGS[name].present:
        setattr(config.sampling, name, FLAGS[name].value)
  try:
    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                                    auto=FLAGS.distributed)
    if FLAGS.mode == 'train':
      run_lib.train(config, FLAGS.workdir)
    elif FLAGS.mode == 'sample':
      run_lib.sample(config, FLAGS.workdir, FLAGS.eval_folder or 'eval')
    elif FLAGS.mode == 'compare':
      run_lib.compare(config, FLAGS.workdir, FLAGS.eval_folder or 'compare')
    elif FLAGS.mode == 'convert':
      run_lib.convert(config, FLAGS.workdir, FLAGS.pytorch_checkpoint)
    elif FLAGS.mode == 'stats':
      run_lib.stats(config, FLAGS.workdir, FLAGS.eval_folder or 'stats')
    elif FLAGS.mode == 'fid_stats':
      run_lib.fid_stats(config, FLAGS.workdir, FLAGS.eval_folder or 'fid_stats')
    elif FLAGS.mode == 'fit_init':
      run_lib.fit_init(config, FLAGS.workdir)
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


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
