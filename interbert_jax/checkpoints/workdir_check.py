"""Refuses to resume a workdir that holds another run (its config.json differs in shape).

A workdir's config.json is the resolved config of the run that made it. Re-running in that
workdir resumes it, so the new config must describe the same trainable state and the same
batches. Keys that must match (`_must_match`, compared after a JSON round trip):
  model.*          every architecture and vocabulary key (sizes, layers, heads, vocab,
                   feature dims, fusion, heads' targets, scan_layers, param_dtype), except
                   the MODEL_FREE ones below;
  data.text_len, data.max_regions, data.max_msm_targets   the batch shapes.
Everything else may change on resume (total_steps, log/eval/checkpoint frequency,
keep_checkpoints, mesh, batch_size, microbatches, optimizer, data.dir, data loader
settings, ...); MODEL_FREE: model.dtype, model.remat_policy and the dropout rates
(compute, not state). A key added to the config after a run was made (ADDED_KEYS) reads as
the value that run was made with, so older workdirs still resume.
"""
import json

from etils import epath

from interbert_jax.training import config_validation

CONFIG_FILE = "config.json"
DATA_KEYS = ("data.text_len", "data.max_regions", "data.max_msm_targets")
MODEL_FREE = ("model.dtype", "model.remat_policy", "model.embedding_dropout",
              "model.itm_dropout")
MODEL_FREE_SUFFIXES = ("hidden_dropout", "attention_dropout")
# Keys added after runs were made: a config.json without one was made with this value.
ADDED_KEYS = {"model.pooler_bias_init": 0.0, "model.vocab_pad_multiple": 1,
              "model.feature_norm": "none"}


class WorkdirMismatchError(config_validation.ConfigError):
  """The workdir holds a run whose config differs in keys that must match (exit 2)."""


def _flatten(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(_flatten(value, name + "."))
    else:
      out[name] = value
  return out


def _must_match(key: str) -> bool:
  if key in DATA_KEYS:
    return True
  return (key.startswith("model.") and key not in MODEL_FREE
          and not key.endswith(MODEL_FREE_SUFFIXES))


def differences(saved: dict, new: dict) -> list[str]:
  """'key: saved -> new' for every must-match key that differs (or exists on one side)."""
  a, b = {**ADDED_KEYS, **_flatten(saved)}, {**ADDED_KEYS, **_flatten(new)}
  missing = object()
  out = []
  for key in sorted(k for k in set(a) | set(b) if _must_match(k)):
    old, cur = a.get(key, missing), b.get(key, missing)
    if old != cur:
      show = lambda v: "(absent)" if v is missing else json.dumps(v)
      out.append(f"{key}: {show(old)} in the workdir, {show(cur)} now")
  return out


def check_workdir(workdir: str, config) -> None:
  """Raises WorkdirMismatchError when <workdir>/config.json is another run's config.

  Call before anything in the workdir is written. No config.json: a new run, nothing to do.
  """
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    return
  try:
    saved = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise WorkdirMismatchError(f"{path}: not valid JSON ({e}); it is not this trainer's "
                               "config.json: use another --workdir") from None
  new = json.loads(config.to_json_best_effort())
  diff = differences(saved, new)
  if diff:
    raise WorkdirMismatchError(
        f"--workdir={workdir} holds another run: its {CONFIG_FILE} differs in "
        f"{len(diff)} key(s) that must match to resume:\n  " + "\n  ".join(diff) +
        "\nUse another --workdir to start a new run (nothing was changed here).")
