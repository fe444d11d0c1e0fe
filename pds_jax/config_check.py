"""One-line explanations of command-line and config-file problems (used by main.py's flag parser).

absl and ml_collections report a bad `--config` file or a bad `--config.<field>=<value>` override
with a traceback or with the name of the flag only. `explain(argv, error)` re-reads the command
line and says which file, field or value is at fault and what it expected:
  - the config file is missing, does not import, or has no `get_config()`;
  - an override names a field the config does not have (listing the fields of its parent);
  - an override's value does not parse as the field's type.
"""
from __future__ import annotations

import os
import runpy
from typing import List, Optional, Tuple

import ml_collections

CONFIG_FLAG = 'config'


def _config_arguments(argv: List[str]) -> Tuple[Optional[str], List[Tuple[str, Optional[str]]]]:
  """(the --config path, [(dotted field, raw value or None)] of the --config.<field> overrides)."""
  path, overrides = None, []
  args = iter(argv[1:])
  for arg in args:
    if not arg.startswith('--'):
      continue
    name, has_value, value = arg[2:].partition('=')
    if name == CONFIG_FLAG:
      path = value if has_value else next(args, None)
    elif name.startswith(CONFIG_FLAG + '.'):
      overrides.append((name[len(CONFIG_FLAG) + 1:], value if has_value else None))
  return path, overrides


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file; ValueError naming the file on any problem."""
  if not os.path.isfile(path):
    raise ValueError(f'--config {path}: config file not found.')
  try:
    module = runpy.run_path(path)
  except Exception as e:  # a syntax error or an exception at import time
    raise ValueError(f'--config {path}: the config file does not load: {type(e).__name__}: {e}') from e
  if 'get_config' not in module:
    raise ValueError(f'--config {path}: the config file has no get_config() function.')
  try:
    return module['get_config']()
  except Exception as e:
    raise ValueError(f'--config {path}: get_config() failed: {type(e).__name__}: {e}') from e


def _check_override(config: ml_collections.ConfigDict, field: str, value: Optional[str]) -> Optional[str]:
  """The problem with `--config.<field>=<value>`, or None."""
  node, parts = config, field.split('.')
  for depth, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      parent = 'config' + ''.join('.' + p for p in parts[:depth])
      known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      return f'--config.{field}: unknown config field ({parent} has {", ".join(known) or "no fields"}).'
    if depth < len(parts) - 1:
      node = node[part]
  if value is None:
    return None
  current = node[parts[-1]]
  field_type = node.get_type(parts[-1]) if hasattr(node, 'get_type') else type(current)
  if field_type in (int, float) and not isinstance(current, bool):
    try:
      field_type(value)
    except ValueError:
      return f'--config.{field}={value}: not a valid {field_type.__name__} (the field holds {current!r}).'
  return None


def explain(argv: List[str], error: Exception) -> str:
  """A one-line message for a flag-parsing error, naming the file, field or value at fault."""
  path, overrides = _config_arguments(argv)
  if path is not None:
    try:
      config = load_config_file(path)
    except ValueError as e:
      return str(e)
    for field, value in overrides:
      problem = _check_override(config, field, value)
      if problem:
        return problem
  return str(error) or type(error).__name__
