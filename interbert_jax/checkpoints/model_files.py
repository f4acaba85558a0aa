"""Model checkpoints: a directory with `config.json` (config.model) and `params/` (an orbax
StandardCheckpointer tree of float32 params, scanned or not as the config says).

`load_checkpoint` also accepts a training checkpoint: `<workdir>/checkpoints/<step>` (or its
`params` item), whose config is the trainer's resolved `<workdir>/config.json` (a full
config; its `model` section is used).
"""
import json

import jax
import ml_collections
from etils import epath

from interbert_jax.model import build_model, param_shapes

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"


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


def save_checkpoint(path, params, model_config):
  """Writes `path/config.json` and `path/params/`. `params` must be unboxed arrays
  (`flax.linen.unbox`); `path` must not already hold a checkpoint."""
  path = epath.Path(path)
  import orbax.checkpoint as ocp  # Deferred: keeps `import interbert_jax` light.
  build_model(model_config)  # Validates the config before anything is written.
  path.mkdir(parents=True, exist_ok=True)
  if (path / PARAMS_DIR).exists():
    raise FileExistsError(f"{path / PARAMS_DIR} already exists; choose a new directory")
  (path / CONFIG_FILE).write_text(json.dumps(_to_dict(model_config), indent=2,
                                             sort_keys=True))
  ckptr = ocp.StandardCheckpointer()
  ckptr.save((path / PARAMS_DIR).absolute(), params)
  ckptr.wait_until_finished()
  return path


def _find_config(path):
  """config.json in `path` or up to three levels up (step dir -> checkpoints -> workdir)."""
  for candidate in [path, *list(path.parents)[:3]]:
    if (candidate / CONFIG_FILE).exists():
      return candidate / CONFIG_FILE
  raise FileNotFoundError(
      f"no {CONFIG_FILE} in {path} or the three directories above it; a model checkpoint "
      f"needs one (interbert_jax.save_checkpoint writes it)")


def read_model_config(path):
  """The model ConfigDict of a model or training checkpoint at `path`."""
  config_file = _find_config(epath.Path(path))
  try:
    data = json.loads(config_file.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{config_file} is not valid JSON: {e}") from e
  if "model" in data and isinstance(data["model"], dict):
    data = data["model"]  # The trainer's full config.
  return ml_collections.ConfigDict(data)


def load_checkpoint(path, sharding=None):
  """-> (model, params, model_config).

  `path` is a model checkpoint directory, a training step directory
  (`<workdir>/checkpoints/<step>`) or its `params` item. `sharding` (optional) places every
  leaf; by default the params land on the first device.
  """
  import orbax.checkpoint as ocp
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"checkpoint {path} does not exist")
  params_dir = path / PARAMS_DIR if (path / PARAMS_DIR).exists() else path
  model_config = read_model_config(path)
  model = build_model(model_config)
  target = abstract_params(model_config, sharding)
  try:
    params = ocp.StandardCheckpointer().restore(params_dir.absolute(), target)
  except (ValueError, KeyError, FileNotFoundError) as e:
    raise ValueError(
        f"cannot restore params from {params_dir} for the model of {_find_config(path)} "
        f"(scan_layers={model_config.scan_layers}): {e}") from e
  return model, params, model_config
