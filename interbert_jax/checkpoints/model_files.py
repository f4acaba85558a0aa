"""Model checkpoints: a directory with `config.json` (config.model) and either `params/` (an
orbax StandardCheckpointer tree, format "native") or `model.safetensors` (the same tree
flattened to "a/b/c" names, format "safetensors"); scanned or not as the config says.
Params are float32 or (an export with --dtype=bfloat16) bfloat16; `load_checkpoint`
returns them in the model's `param_dtype`.

`load_checkpoint` also accepts a training checkpoint: `<workdir>/checkpoints/<step>` (or its
`params` item), whose config is the trainer's resolved `<workdir>/config.json` (a full
config; its `model` section is used).
"""
import hashlib
import json

import jax
import ml_collections
import numpy as np
from etils import epath
from flax import traverse_util

from interbert_jax import errors

from interbert_jax.model import build_model, param_shapes

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
SAFETENSORS_FILE = "model.safetensors"
FORMATS = ("native", "safetensors")


class CheckpointReadError(errors.UserError, ValueError):
  """A model or training checkpoint that cannot be read: missing, truncated or corrupt
  files, or tensors that do not fit its config (the message names the path)."""


class CheckpointNotFoundError(CheckpointReadError, FileNotFoundError):
  """The checkpoint directory, or the config.json it needs, does not exist."""


def _to_dict(model_config):
  if isinstance(model_config, ml_collections.FrozenConfigDict):
    model_config = ml_collections.ConfigDict(model_config)
  if isinstance(model_config, ml_collections.ConfigDict):
    return model_config.to_dict()
  return dict(model_config)


def abstract_params(model_config, sharding=None):
  """ShapeDtypeStruct tree of the (unboxed) params `build_model(model_config)` expects."""
  shapes = param_shapes(model_config)
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                      shapes)


def flatten(params) -> dict:
  """Nested dict of arrays -> {"a/b/c": array} (the safetensors names)."""
  return traverse_util.flatten_dict(dict(params), sep="/")


def checksums(params) -> dict:
  """{"a/b/c": "sha256:<hex>"} of each tensor's bytes (C order, its dtype), sorted by name."""
  return {name: "sha256:" + hashlib.sha256(
      np.ascontiguousarray(jax.device_get(x)).tobytes()).hexdigest()
          for name, x in sorted(flatten(params).items())}


def save_checkpoint(path, params, model_config, format="native"):  # pylint: disable=redefined-builtin
  """Writes `path/config.json` and `path/params/` (native) or `path/model.safetensors`.

  `params` must be unboxed arrays (`flax.linen.unbox`); `path` must not already hold a
  checkpoint."""
  if format not in FORMATS:
    raise ValueError(f"format {format!r} is not one of {FORMATS}")
  path = epath.Path(path)
  build_model(model_config)  # Validates the config before anything is written.
  path.mkdir(parents=True, exist_ok=True)
  for existing in (PARAMS_DIR, SAFETENSORS_FILE):
    if (path / existing).exists():
      raise FileExistsError(f"{path / existing} already exists; choose a new directory")
  (path / CONFIG_FILE).write_text(json.dumps(_to_dict(model_config), indent=2,
                                             sort_keys=True))
  if format == "safetensors":
    from safetensors.numpy import save_file
    flat = {k: np.ascontiguousarray(jax.device_get(v)) for k, v in flatten(params).items()}
    save_file(flat, str(path / SAFETENSORS_FILE), metadata={"format": "interbert_jax"})
    return path
  import orbax.checkpoint as ocp  # Deferred: keeps `import interbert_jax` light.
  ckptr = ocp.StandardCheckpointer()
  ckptr.save((path / PARAMS_DIR).absolute(), params)
  ckptr.wait_until_finished()
  return path


def _load_safetensors(file, target):
  """model.safetensors -> params placed and typed like `target` (names/shapes checked)."""
  from safetensors.numpy import load_file
  flat = load_file(str(file))
  want = flatten(target)
  missing = sorted(set(want) - set(flat))
  unknown = sorted(set(flat) - set(want))
  misshaped = [f"{k}: {flat[k].shape} != {want[k].shape}" for k in sorted(set(flat) & set(want))
               if tuple(flat[k].shape) != tuple(want[k].shape)]
  if missing or unknown or misshaped:
    raise CheckpointReadError(
        f"{file}: tensors do not fit the model of its config.json: missing {missing}, "
        f"unknown {unknown}, mis-shaped {misshaped}")
  return traverse_util.unflatten_dict(
      {k: jax.device_put(np.asarray(flat[k]).astype(t.dtype), t.sharding)
       for k, t in want.items()}, sep="/")


def _find_config(path):
  """config.json in `path` or up to three levels up (step dir -> checkpoints -> workdir)."""
  for candidate in [path, *list(path.parents)[:3]]:
    if (candidate / CONFIG_FILE).exists():
      return candidate / CONFIG_FILE
  raise CheckpointNotFoundError(
      f"no {CONFIG_FILE} in {path} or the three directories above it; a model checkpoint "
      f"needs one (interbert_jax.save_checkpoint writes it)")


def read_model_config(path):
  """The model ConfigDict of a model or training checkpoint at `path`."""
  config_file = _find_config(epath.Path(path))
  try:
    data = json.loads(config_file.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointReadError(f"{config_file} is not valid JSON: {e}") from None
  if "model" in data and isinstance(data["model"], dict):
    data = data["model"]  # The trainer's full config.
  return ml_collections.ConfigDict(data)


def load_checkpoint(path, sharding=None):
  """-> (model, params, model_config).

  `path` is a model checkpoint directory (native or safetensors), a training step
  directory (`<workdir>/checkpoints/<step>`) or its `params` item. `sharding` (optional)
  places every leaf; by default the params land on the first device. A checkpoint that
  cannot be read raises CheckpointReadError (one line: the path and the innermost cause).
  """
  import orbax.checkpoint as ocp
  path = epath.Path(path)
  if not path.exists():
    raise CheckpointNotFoundError(f"checkpoint {path} does not exist")
  params_dir = path / PARAMS_DIR if (path / PARAMS_DIR).exists() else path
  model_config = read_model_config(path)
  model = build_model(model_config)
  target = abstract_params(model_config, sharding)
  if (path / SAFETENSORS_FILE).exists():
    try:
      return model, _load_safetensors(path / SAFETENSORS_FILE, target), model_config
    except CheckpointReadError:
      raise
    except Exception as e:  # safetensors raises its own (Rust) error types
      raise CheckpointReadError(f"{path / SAFETENSORS_FILE}: cannot be read "
                                f"({errors.cause_line(e)})") from None
  if not params_dir.exists() or not any(params_dir.iterdir()):
    raise CheckpointReadError(f"{path}: no {PARAMS_DIR}/ or {SAFETENSORS_FILE} (not a "
                              "model or training checkpoint)")
  try:
    params = ocp.StandardCheckpointer().restore(params_dir.absolute(), target)
  except Exception as e:  # orbax / TensorStore: a missing, truncated or foreign file
    raise CheckpointReadError(
        f"cannot restore params from {params_dir} for the model of {_find_config(path)} "
        f"(scan_layers={model_config.scan_layers}): {errors.cause_line(e)}") from None
  return model, params, model_config
