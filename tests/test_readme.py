"""The README tells the truth: its library snippet runs and its test command is what CI runs."""
import re
import subprocess
import sys

from conftest import ROOT

README = (ROOT / 'README.md').read_text()


def test_readme_starts_with_the_two_quick_start_commands():
  blocks = re.findall(r'```bash\n(.*?)```', README, re.S)
  install_and_run, test = blocks[0].strip(), blocks[1].strip()
  assert README.index('```bash') < README.index('## ')
  assert 'pip install -e .' in install_and_run and 'main.py --mode compare' in install_and_run
  command = 'pytest -x -q -m "not slow"'
  assert test.endswith(f'pip install -e ".[test,torch]" && {command}')
  ci = (ROOT / '.ci' / 'run').read_text()
  assert 'pip install -q -e ".[test,torch]"' in ci and ci.rstrip().endswith(command)


def test_readme_python_snippet_runs(tmp_path):
  snippet = re.findall(r'```python\n(.*?)```', README, re.S)
  script = tmp_path / 'snippet.py'
  script.write_text(snippet[-1])
  proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  pc, dpm = proc.stdout.splitlines()[-2:]
  assert pc.startswith('200 {') and dpm.startswith('16 {')
