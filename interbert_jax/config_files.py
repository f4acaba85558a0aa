"""Config and sweep files named the way `ml_collections.config_flags` names them.

`configs/pretrain.py:tiny` is the file `configs/pretrain.py` (relative to the working
directory) and the argument `tiny` of its `get_config`; `configs/sweeps.py:paper` is the
function `paper()` of `configs/sweeps.py`. Files are loaded from their path (as config_flags
does), so this works whether or not `configs/` is an importable package.
"""
import importlib.util
import os
import re
import types

from interbert_jax import errors


class ConfigFileError(errors.UserError, ValueError):
  """A config or sweep file that cannot be loaded (the message names the file)."""


def load_module(path: str) -> types.ModuleType:
  """Executes the Python file `path` as a fresh module (not added to sys.modules)."""
  if not os.path.isfile(path):
    raise ConfigFileError(f"{path}: no such file")
  name = "_interbert_cfg_" + re.sub(r"\W", "_", os.path.abspath(path))
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except  (the user's file: say where)
    raise ConfigFileError(f"{path} failed to load: {type(e).__name__}: {e}") from None
  return module


def _call(fn, spec: str, *args):
  try:
    return fn(*args)
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigFileError(f"{spec}: {fn.__name__}({', '.join(map(repr, args))}) raised "
                          f"{type(e).__name__}: {e}") from None


def split_spec(spec: str) -> tuple[str, str | None]:
  """'path.py:arg' -> ('path.py', 'arg'); 'path.py' -> ('path.py', None)."""
  path, sep, arg = spec.partition(":")
  return path, (arg if sep else None)


def load_config(spec: str):
  """The ConfigDict of `path.py[:arg]` = get_config(arg) (or get_config())."""
  path, arg = split_spec(spec)
  module = load_module(path)
  if not hasattr(module, "get_config"):
    raise ConfigFileError(f"{path} has no get_config()")
  return _call(module.get_config, spec, *([arg] if arg is not None else []))


def load_sweep(spec: str) -> dict[str, dict]:
  """The runs of `path.py:name`: the function `name()` -> {run name: {dotted key: value}}."""
  path, name = split_spec(spec)
  module = load_module(path)
  if not name:
    sweeps = sorted(k for k, v in vars(module).items()
                    if callable(v) and not k.startswith("_") and k != "get_config")
    raise ConfigFileError(f"{spec}: name the sweep, e.g. {path}:<name>; {path} defines "
                          f"{sweeps}")
  fn = getattr(module, name, None)
  if not callable(fn):
    raise ConfigFileError(f"{path} has no sweep function {name}()")
  runs = _call(fn, spec)
  if not isinstance(runs, dict) or not runs:
    raise ConfigFileError(f"{spec}: {name}() must return a non-empty dict "
                          "{run name: {dotted key: value}}")
  for run, overrides in runs.items():
    if not isinstance(run, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", run):
      raise ConfigFileError(f"{spec}: run name {run!r} must be letters, digits, '_', '.', "
                            "'-' (it names a directory)")
    if not isinstance(overrides, dict):
      raise ConfigFileError(f"{spec}: run {run!r}: overrides must be a dict, got "
                            f"{type(overrides).__name__}")
  return runs
