"""Dotted-key overrides of a ConfigDict: parse `KEY=VALUE`, apply, and write as flags.

An override set is a flat dict {"model.fusion": "sum", "total_steps": 1500}, the keys being
the ones `--config.KEY=VALUE` takes. Applying one never adds a key: an unknown key or a
value of the wrong type is an OverrideError naming the key.
"""
import ast
import json

import ml_collections

from interbert_jax import errors


class OverrideError(errors.UserError, ValueError):
  """An override that does not fit the config (the message names the key)."""


def _parent(config, key: str):
  node = config
  parts = key.split(".")
  for i, part in enumerate(parts[:-1]):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise OverrideError(f"unknown key {key!r} (no {'.'.join(parts[:i + 1])!r} in the config)")
    node = node[part]
  if not isinstance(node, ml_collections.ConfigDict) or parts[-1] not in node:
    raise OverrideError(f"unknown key {key!r}")
  return node, parts[-1]


def get(config, key: str):
  node, leaf = _parent(config, key)
  return node[leaf]


def apply(config, overrides: dict):
  """A copy of `config` with the dotted-key `overrides` set (the input is not changed)."""
  out = ml_collections.ConfigDict(config.to_dict())
  for key, value in overrides.items():
    node, leaf = _parent(out, key)
    old = node[leaf]
    if isinstance(old, ml_collections.ConfigDict):
      raise OverrideError(f"{key!r} is a config section, not a value: override its keys")
    if isinstance(old, bool) != isinstance(value, bool) and old is not None:
      raise OverrideError(f"{key}={value!r}: expected {type(old).__name__} like {old!r}")
    try:
      node[leaf] = value
    except (TypeError, ValueError) as e:
      raise OverrideError(f"{key}={value!r}: expected {type(old).__name__} like {old!r} "
                          f"({e})") from None
  return out


def _parse_bool(text: str) -> bool:
  low = text.strip().lower()
  if low in ("true", "1", "yes"):
    return True
  if low in ("false", "0", "no"):
    return False
  raise ValueError(f"not a boolean: {text!r}")


def parse_assignment(text: str, config) -> tuple[str, object]:
  """'model.fusion=sum' -> ('model.fusion', 'sum'), typed by the config's current value."""
  key, sep, raw = text.partition("=")
  key = key.strip()
  if not sep or not key:
    raise OverrideError(f"--set {text!r}: expected KEY=VALUE, e.g. total_steps=1500")
  try:
    old = get(config, key)
  except OverrideError as e:
    raise OverrideError(f"--set {text!r}: {e}") from None
  try:
    if isinstance(old, bool):
      return key, _parse_bool(raw)
    if isinstance(old, int):
      return key, int(raw)
    if isinstance(old, float):
      return key, float(raw)
    if isinstance(old, str):
      return key, raw
    return key, ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    raise OverrideError(f"--set {text!r}: {raw!r} is not a {type(old).__name__} "
                        f"(current value {old!r})") from None


def flag_value(value) -> str:
  """The text `--config.KEY=` takes for `value` (config_flags' parsers read it back)."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, str):
    return value
  return repr(value)


def to_flags(overrides: dict) -> list[str]:
  """{"model.fusion": "sum"} -> ["--config.model.fusion=sum"] (in the dict's order)."""
  return [f"--config.{k}={flag_value(v)}" for k, v in overrides.items()]


def differing(overrides: dict, base) -> dict:
  """The overrides whose value differs from the base config's (unknown keys kept)."""
  out = {}
  for key, value in overrides.items():
    try:
      same = json.dumps(get(base, key)) == json.dumps(value)
    except (OverrideError, TypeError):
      same = False
    if not same:
      out[key] = value
  return out
