"""Every command of the README's task sections runs, at tiny settings.

The ```bash blocks under each task heading run as one bash script in a temporary folder (a `configs`
link, the user's files the README assumes: images, a mask, PDS statistics, score_sde checkpoints from
the shared fixtures). `python main.py` is replaced by this file run as a script, which appends tiny
settings to the command line (small batches and models, two or three steps, loose ODE tolerances), runs
main.py, and logs the mode and output folder so the test can check what each command wrote.
"""
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / 'README.md'
FIXTURES = ROOT.parent / 'shared' / 'fixtures'
MAX_README_LINES = 350

# the task sections, in README order
TASKS = ('Sample my checkpoint fast', 'PDS', 'Fit an init', 'Likelihood', 'Inpaint or colorize my images',
         'Train and evaluate on my data', 'Scale out')
# commands of another section that make the files a section uses: (section, text of the commands to run)
PREREQUISITES = {'Fit an init': ('Train and evaluate on my data', '--mode train')}  # runs/mine's checkpoint
WORKDIRS = {'/path/to/score_sde_workdir': 'score_sde/ve_cifar10_ncsnpp_continuous',
            '/path/to/score_sde_vp_workdir': 'score_sde/vp_cifar10_ddpmpp_continuous'}

TINY = {  # by config: the fixtures' shrunk models, 2-sample rounds
    'gaussian': ['--config.data.image_size=8', '--config.eval.batch_size=4', '--config.eval.num_samples=4'],
    'default': ['--config.eval.batch_size=2', '--config.eval.num_samples=2', '--config.eval.num_reference=8'],
    'patches': ['--config.model.nf=8', '--config.model.ch_mult=(1, 2)', '--config.model.attn_resolutions=(16,)',
                '--config.model.num_scales=10', '--config.training.batch_size=4', '--config.optim.warmup=2',
                '--config.training.n_iters=2', '--config.training.snapshot_freq=2', '--config.training.log_freq=1',
                '--config.training.eval_freq=2', '--config.training.snapshot_freq_for_preemption=2',
                '--config.eval.batch_size=4', '--config.eval.num_samples=4', '--config.eval.num_reference=8',
                '--config.stats.num_images=16', '--config.init_aware.num_images=32'],
    'cifar10': ['--config.model.nf=8', '--config.eval.batch_size=2', '--config.eval.num_samples=2'],
}
TINY_FLOW = ['--config.init_aware.epochs=1', '--config.init_aware.batch_size=16',
             '--config.init_aware.tarflow.channels=16', '--config.init_aware.tarflow.layers_per_block=1',
             '--config.init_aware.tarflow.head_dim=8']
TINY_INCEPTION = ['--config.eval.inception_batch_size=4', '--config.eval.kid_subsets=2', '--config.eval.is_splits=2']
SAMPLING_MODES = ('sample', 'compare', 'inpaint', 'colorize')


# ----------------------------------------------------------------------------- the README


def section(title: str) -> str:
  text = README.read_text()
  match = re.search(rf'^## {re.escape(title)}\n(.*?)(?=^## |\Z)', text, re.S | re.M)
  assert match, f'README.md has no section "## {title}"'
  return match.group(1)


def bash_blocks(title: str):
  return re.findall(r'```bash\n(.*?)```', section(title), re.S)


# ----------------------------------------------------------------------------- main.py at tiny settings


def _value(args, name):
  for i, arg in enumerate(args):
    if arg == name and i + 1 < len(args):
      return args[i + 1]
    if arg.startswith(name + '='):
      return arg.split('=', 1)[1]
  return None


def _kind(config: str) -> str:
  for kind, part in (('gaussian', 'configs/gaussian/'), ('default', 'default_model.py'),
                     ('patches', 'configs/patches/'), ('cifar10', 'cifar10_')):
    if part in config:
      return kind
  raise AssertionError(f'no tiny settings for the README config {config}')


def _num_scales(config: str, args) -> int:
  sys.path.insert(0, str(ROOT))
  import importlib.util
  spec = importlib.util.spec_from_file_location('readme_config', config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  overrides = [a.split('=', 1)[1] for a in args if a.startswith('--config.model.num_scales=')]
  return int(overrides[-1]) if overrides else int(module.get_config().model.num_scales)


def tiny_args(args):
  """The README command's arguments with tiny settings: values replaced in place, flags appended."""
  config, mode = _value(args, '--config'), _value(args, '--mode')
  extra = list(TINY[_kind(config)])
  k = _num_scales(config, extra) // 2  # PDS's speed_up k: 2 steps
  out = []
  for arg in args:
    if re.fullmatch(r'--config\.sampling\.num_steps=\d+', arg):
      arg = '--config.sampling.num_steps=3'
    elif arg.startswith('--config.sampling.compare_num_steps='):
      arg = '--config.sampling.compare_num_steps=(2, 3)'
    elif arg.startswith('--config.eval.inception_path='):
      arg = f'--config.eval.inception_path={os.environ["README_INCEPTION"]}'
    out.append(arg)
  for i, arg in enumerate(out):
    if arg == '--speed_up':
      out[i + 1] = str(k)
  method = ([a.split('=', 1)[1] for a in out if a.startswith('--config.sampling.method=')] or ['pc'])[-1]
  if mode in SAMPLING_MODES:
    if method == 'pc' and not any(a.startswith('--config.sampling.num_steps=') for a in out):
      extra += [f'--config.sampling.speed_up={k}'] + (['--config.sampling.vanilla_speed_up=%d' % k]
                                                      if mode == 'compare' else [])
    if method in ('heun', 'euler', 'ancestral', 'dpm_solver') and '--config.sampling.num_steps=3' not in out:
      extra.append('--config.sampling.num_steps=3')
    if method == 'ode':
      extra += ['--config.sampling.ode_rtol=1e-2', '--config.sampling.ode_atol=1e-2']
    if method == 'init_aware':
      extra.append('--config.sampling.init_nodes=3')
  if mode == 'likelihood':
    extra += ['--config.likelihood.rtol=1e-2', '--config.likelihood.atol=1e-2']
  if mode == 'fit_init' and '--config.sampling.init=flow' in out:
    extra += TINY_FLOW
  if mode in ('fid_stats', 'eval') and any(a.startswith('--config.eval.inception_path=') for a in out):
    extra += TINY_INCEPTION
  return out + extra


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def run_main(args) -> int:
  """Runs main.py with the tiny settings; a 2-process multi-host command runs both hosts here."""
  args = tiny_args(args)
  command = [sys.executable, str(ROOT / 'main.py'), f'--jax_cache={ROOT / ".jax_cache"}']
  with open(os.environ['README_LOG'], 'a') as log:
    log.write(json.dumps({'mode': _value(args, '--mode'), 'workdir': _value(args, '--workdir'),
                          'eval_folder': _value(args, '--eval_folder'), 'args': args}) + '\n')
  if _value(args, '--num_processes') == '2' and _value(args, '--process_id') == '0':
    port = _free_port()
    hosts = []
    for i in (0, 1):
      host_args = [re.sub(r'^--coordinator_address=.*', f'--coordinator_address=127.0.0.1:{port}', a) for a in args]
      host_args = [f'--process_id={i}' if a.startswith('--process_id=') else a for a in host_args]
      hosts.append(subprocess.Popen(command + host_args))
    return max(h.wait(timeout=1200) for h in hosts)
  return subprocess.call(command + args)


# ----------------------------------------------------------------------------- the files a user has


def _user_files(folder: pathlib.Path, script: str):
  """The inputs the README's commands name: images, a mask, PDS statistics, checkpoints, Inception weights."""
  import numpy as np
  from PIL import Image
  (folder / 'configs').symlink_to(ROOT / 'configs')
  images = folder / 'my_images'
  images.mkdir()
  rng = np.random.default_rng(0)
  for i in range(32):
    yy, xx = np.mgrid[:40, :40] / 40.
    img = np.stack([xx, yy, (xx + yy) / 2], -1) * rng.uniform(0.3, 1., 3) + rng.uniform(0, .1, (40, 40, 3))
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(images / f'img_{i}.png')
  mask = np.ones((32, 32), np.uint8) * 255
  mask[8:24, 8:24] = 0
  Image.fromarray(mask).save(folder / 'my_mask.png')
  np.save(folder / 'cifar10_freq.npy', rng.uniform(1., 5., (3, 32, 32)))
  if 'checkpoint.pth' in script:
    shutil.copy(FIXTURES / 'score_sde_pytorch' / 've_cifar10_ncsnpp_continuous' / 'checkpoint.pth',
                folder / 'checkpoint.pth')
  for name, fixture in WORKDIRS.items():
    if str(_local(folder, name)) in script:
      shutil.copytree(FIXTURES / fixture / 'checkpoints', _local(folder, name) / 'checkpoints')
  if 'inception_path' not in script:
    return ''
  sys.path.insert(0, str(ROOT / 'tests'))
  from test_fid_stats import write_random_inception_weights
  return write_random_inception_weights(folder / 'inception.npz')


def _local(folder: pathlib.Path, name: str) -> pathlib.Path:
  """Where a README placeholder path such as /path/to/score_sde_workdir lives in the test's folder."""
  return folder / name.strip('/').replace('/', '_')


def _script(blocks, folder: pathlib.Path) -> str:
  """(bash block, filter) pairs as one script: `python main.py` runs this file, and only on the lines the
  block's filter keeps; pip lines (done already) are left out."""
  lines = ['set -eo pipefail']
  for block, only in blocks:
    block = block.replace('\\\n', ' ')
    for name in WORKDIRS:
      block = block.replace(name, str(_local(folder, name)))
    for line in block.splitlines():
      if line.strip().startswith('pip '):
        continue
      if only is not None and 'python main.py' in line and not only(line):
        continue
      lines.append(line.replace('python main.py', '"$README_PY" "$README_WRAPPER"'))
  return '\n'.join(lines) + '\n'


EXPECTED = {  # files each mode writes into its output folder
    'sample': ('report.json', 'grid.png', 'samples_0_0.npz'),
    'compare': ('report.json', 'vanilla_vs_pds.png', 'metric_vs_nfe.png'),
    'likelihood': ('report.json', 'bpd_0_0.npz'),
    'inpaint': ('report.json', 'grid.png'),
    'colorize': ('report.json', 'grid.png'),
    'eval': ('metrics.json',),
    'fit_init': ('init.json',),
}
DEFAULT_FOLDER = {'sample': 'eval', 'eval': 'eval', 'fit_init': 'init', 'train': 'checkpoints',
                  'convert': 'checkpoints', 'stats': 'stats', 'fid_stats': 'fid_stats'}


def run_sections(titles, tmp_path, only=None, prerequisites=()):
  """Runs the README sections' bash blocks in order, the prerequisite (section, command text) pairs first
  and of the rest the commands `only` keeps; checks each command's exit code and outputs."""
  work = tmp_path / 'work'
  work.mkdir()
  log = tmp_path / 'commands.jsonl'
  blocks = [(b, lambda line, text=text: text in line) for title, text in prerequisites for b in bash_blocks(title)]
  blocks += [(b, only) for title in titles for b in bash_blocks(title)]
  script = _script(blocks, work)
  inception = _user_files(work, script)
  env = dict(os.environ, README_PY=sys.executable, README_WRAPPER=str(pathlib.Path(__file__).resolve()),
             README_LOG=str(log), README_INCEPTION=str(inception),
             JAX_COMPILATION_CACHE_DIR=str(ROOT / '.jax_cache'))
  proc = subprocess.run(['bash', '-c', script], cwd=work, env=env, capture_output=True, text=True, timeout=3000)
  assert proc.returncode == 0, f'README commands failed ({proc.returncode}):\n{script}\n{proc.stdout[-4000:]}\n' \
                               f'{proc.stderr[-6000:]}'
  commands = [json.loads(line) for line in log.read_text().splitlines()]
  assert commands, f'no `python main.py` command ran from {titles}'
  for command in commands:
    mode = command['mode']
    folder = work / command['workdir'] / (command['eval_folder'] or DEFAULT_FOLDER.get(mode, mode))
    assert folder.is_dir(), f'{mode} wrote no {folder}: {command["args"]}'
    missing = [name for name in EXPECTED.get(mode, ()) if not (folder / name).is_file()]
    assert not missing and any(folder.iterdir()), f'{mode} left {missing} out of {folder}: {command["args"]}'
  return proc, commands


# ----------------------------------------------------------------------------- the tests


def test_readme_is_short_and_starts_with_the_two_commands_ci_runs():
  text = README.read_text()
  assert len(text.splitlines()) <= MAX_README_LINES
  blocks = re.findall(r'```bash\n(.*?)```', text, re.S)
  assert text.index('```bash') < text.index('\n## ') and text.index(blocks[1]) < text.index('\n## ')
  install, test = blocks[0].strip(), blocks[1].strip()
  assert install.endswith('pip install -e . && python main.py --mode compare --config configs/default_model.py '
                          '--workdir runs/quickstart')
  ci = (ROOT / '.ci' / 'run').read_text()
  assert 'pip install -q -e ".[test,torch]"' in ci and ci.rstrip().endswith('pytest -x -q -m "not slow"')
  assert test.endswith('pip install -e ".[test,torch]" && pytest -x -q -m "not slow"')
  for title in TASKS:
    assert bash_blocks(title), f'README section "{title}" has no command'
  for name in ('docs/results.md', 'docs/method.md'):
    assert name in text and (ROOT / name).is_file()


def test_the_gaussian_reference_commands_run(tmp_path):
  """The commands that need no checkpoint (the exact Gaussian reference), from every task section."""
  _, commands = run_sections(TASKS, tmp_path, only=lambda line: 'configs/gaussian/' in line)
  assert sorted(c['mode'] for c in commands) == ['compare', 'likelihood', 'sample']


@pytest.mark.slow  # each section compiles several NCSN++ programs (sampling, training, likelihood)
@pytest.mark.parametrize('title', TASKS)
def test_task_section_commands_run(title, tmp_path):
  run_sections([title], tmp_path, prerequisites=[PREREQUISITES[title]] if title in PREREQUISITES else [])


if __name__ == '__main__':
  sys.exit(run_main(sys.argv[1:]))
