r"""Export a training run's parameters for evaluation: python -m interbert_jax.export.

  python -m interbert_jax.export --workdir=workdirs/tiny --output=workdirs/tiny_export
  python -m interbert_jax.export --workdir=DIR --output=OUT --step=2000 --weights=raw \
      --dtype=bfloat16 --format=safetensors

Reads `<workdir>/checkpoints/<step>` (default: the latest step) and writes to OUT
(which must be new or empty) parameters only, no optimizer state:
  native       OUT/config.json + OUT/params/ (orbax), as interbert_jax.save_checkpoint
  safetensors  OUT/config.json + OUT/model.safetensors ("a/b/c" names)
  reference    OUT/config.json + OUT/pytorch_model.bin + OUT/bert_config.json: the
               official PyTorch state dict and BertConfig (convert/reference.py; needs
               torch; float32 only; no fine-tuning heads)
plus OUT/export.json: source workdir and step, the weights used (ema | raw), dtype,
format, the eval_* metrics logged at that step in <workdir>/metrics.jsonl, parameter count
and a sha256 per tensor (of its bytes as exported, C order). native and safetensors load
with `interbert_jax.load_checkpoint(OUT)` (bfloat16 exports come back in float32).

Weights: `ema` = the exponential moving average of the weights kept by fine-tuning (an
`ema_params` item of the step, or an `ema_params` key of its `train_state` item); the
default is ema when the checkpoint has one, else raw (logged). A user mistake (no
checkpoint, a missing step, --weights=ema without EMA, a format that cannot hold the
params) exits 2 with a one-line error.
"""
import json
import os
import shutil

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from interbert_jax import cli
from interbert_jax import errors
from interbert_jax.checkpoints import model_files
from interbert_jax.checkpoints import run_state
from interbert_jax.model import count_params
from interbert_jax.training import log_filter

FORMATS = ("native", "safetensors", "reference")
WEIGHTS = ("ema", "raw")
DTYPES = ("float32", "bfloat16")
EMA_KEY = "ema_params"
EXPORT_FILE = "export.json"
REFERENCE_WEIGHTS = "pytorch_model.bin"
REFERENCE_CONFIG = "bert_config.json"


class ExportError(errors.UserError, ValueError):
  """A user mistake (bad workdir, step, weights or format); the message says what to do."""


def available_steps(workdir: str) -> list[int]:
  """The committed checkpoint steps of a training workdir, ascending."""
  directory = run_state.checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory)
                if n.isdigit() and os.path.isdir(os.path.join(directory, n, "params")))


def step_dir(workdir: str, step: int | None) -> tuple[int, str]:
  """-> (step, <workdir>/checkpoints/<step>); step None = the latest."""
  steps = available_steps(workdir)
  if not steps:
    raise ExportError(f"--workdir={workdir}: no checkpoint in "
                      f"{run_state.checkpoint_dir(workdir)} (train first: "
                      "python -m interbert_jax.main)")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise ExportError(f"--step={step}: {run_state.checkpoint_dir(workdir)} has steps "
                      f"{', '.join(map(str, steps))}")
  return step, os.path.join(run_state.checkpoint_dir(workdir), str(step))


def _stored_tree(path: str):
  """The metadata tree (shape, dtype per leaf) of an orbax item inside a step directory."""
  import orbax.checkpoint as ocp
  from etils import epath
  return ocp.StandardCheckpointHandler().metadata(epath.Path(os.path.abspath(path))).tree


def _restore_as_stored(path: str):
  """An orbax StandardCheckpointer item restored with its stored tree, shapes and dtypes;
  a missing, truncated or corrupt file is an ExportError naming the item."""
  import orbax.checkpoint as ocp
  try:
    ckptr = ocp.StandardCheckpointer()
    tree = _stored_tree(path)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          tree)
    return ckptr.restore(os.path.abspath(path), target)
  except Exception as e:  # orbax / TensorStore wrap the cause in long spec dumps
    raise ExportError(f"{path}: the checkpoint cannot be read ({errors.cause_line(e)}); "
                      "export another --step") from None


def _has_ema(directory: str) -> str | None:
  """Where the step keeps EMA params: "item", "train_state" or None."""
  if os.path.isdir(os.path.join(directory, EMA_KEY)):
    return "item"
  train_state = os.path.join(directory, "train_state")
  if os.path.isdir(train_state):
    try:
      tree = _stored_tree(train_state)
    except Exception as e:  # a truncated or deleted _METADATA file
      raise ExportError(f"{train_state}: the checkpoint cannot be read "
                        f"({errors.cause_line(e)}); export another --step") from None
    if EMA_KEY in tree:
      return "train_state"
  return None


def read_params(directory: str, weights: str | None) -> tuple[dict, str]:
  """-> (params as numpy arrays, "ema" | "raw") of a training step directory."""
  where = _has_ema(directory)
  if weights == "ema" and where is None:
    raise ExportError(f"--weights=ema: {directory} has no {EMA_KEY} (EMA is kept by "
                      "fine-tuning runs); use --weights=raw")
  if weights is None:
    weights = "ema" if where else "raw"
    logging.info("weights: %s (%s)", weights, "the checkpoint keeps an EMA" if where
                 else "the checkpoint has no EMA; using the raw weights")
  if weights == "ema":
    tree = _restore_as_stored(os.path.join(directory, EMA_KEY if where == "item"
                                           else "train_state"))
    tree = tree if where == "item" else tree[EMA_KEY]
  else:
    tree = _restore_as_stored(os.path.join(directory, "params"))
  return jax.tree.map(np.asarray, tree), weights


def eval_metrics(workdir: str, step: int) -> dict:
  """The eval_* scalars logged at `step` in <workdir>/metrics.jsonl (later lines win)."""
  path = os.path.join(workdir, "metrics.jsonl")
  out = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        record = json.loads(line) if line.strip() else {}
        if record.get("step") == step:
          out.update({k: v for k, v in record.items() if k.startswith("eval_")})
  return dict(sorted(out.items()))


def _cast(params, dtype: str):
  if dtype == "float32":
    return params
  import ml_dtypes
  return jax.tree.map(lambda x: x.astype(ml_dtypes.bfloat16)
                      if np.issubdtype(x.dtype, np.floating) else x, params)


def export(workdir: str, output: str, *, step: int | None = None,  # pylint: disable=redefined-builtin
           weights: str | None = None, dtype: str = "float32", format: str = "native",
           overwrite: bool = False) -> dict:
  """Writes the export (see the module docstring) and returns export.json's content.
  An existing export at `output` is replaced only with `overwrite`, and only once the new
  one is complete."""
  if format not in FORMATS or dtype not in DTYPES or weights not in WEIGHTS + (None,):
    raise ExportError(f"format={format!r} / dtype={dtype!r} / weights={weights!r}: choose "
                      f"from {FORMATS} / {DTYPES} / {WEIGHTS}")
  if format == "reference" and dtype != "float32":
    raise ExportError("--format=reference holds float32 only (the official state dict); "
                      "use --format=native or safetensors for --dtype=bfloat16")
  replace = _check_output(output, overwrite)
  step, directory = step_dir(workdir, step)
  model_config = model_files.read_model_config(directory)
  params, weights = read_params(directory, weights)
  params = _cast(params, dtype)
  if not replace:
    info = _write(workdir, output, step, weights, dtype, format, params, model_config)
    logging.info("export written to %s", output)
    return info
  final = os.path.realpath(output)   # a trailing slash or a link: the directory itself
  staging = _staging_dir(final)
  try:
    info = _write(workdir, staging, step, weights, dtype, format, params, model_config)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)   # the old export stays as it was
    raise
  old = f"{final}.replaced-{os.getpid()}"   # the new export is complete: only now the swap
  os.rename(final, old)
  os.rename(staging, final)
  shutil.rmtree(old, ignore_errors=True)
  logging.info("export written to %s (the earlier export there replaced)", final)
  return info


def _write(workdir, output, step, weights, dtype, format, params, model_config) -> dict:  # pylint: disable=redefined-builtin
  """Writes the export files into `output` (see the module docstring) -> export.json's
  content."""
  if format == "reference":
    from interbert_jax.convert import commands
    from interbert_jax.convert.tensor_io import ConversionError
    try:
      os.makedirs(output, exist_ok=True)
      commands.write_reference(params, model_config, os.path.join(output, REFERENCE_WEIGHTS),
                               os.path.join(output, REFERENCE_CONFIG))
    except ConversionError as e:
      if not os.listdir(output):
        os.rmdir(output)   # Nothing half-written.
      raise ExportError(f"--format=reference: {e}") from None
    with open(os.path.join(output, model_files.CONFIG_FILE), "w") as f:
      json.dump(model_config.to_dict(), f, indent=2, sort_keys=True)
  else:
    try:
      model_files.save_checkpoint(output, params, model_config, format=format)
    except ValueError as e:   # e.g. params that the model config does not describe
      raise ExportError(f"--format={format}: {e}") from None
  info = dict(source_workdir=os.path.abspath(workdir), step=step, weights=weights,
              dtype=dtype, format=format, eval_metrics=eval_metrics(workdir, step),
              parameters=count_params(params), checksums=model_files.checksums(params))
  with open(os.path.join(output, EXPORT_FILE), "w") as f:
    json.dump(info, f, indent=2)
    f.write("\n")
  logging.info("exported %s step %d (%s weights, %s, %s, %s parameters)", workdir, step,
               weights, dtype, format, f"{info['parameters']:,}")
  return info


def _check_output(output: str, overwrite: bool) -> bool:
  """Whether `output` is an earlier export to replace (with --overwrite); raises when it
  holds anything else. Checked before any work."""
  if os.path.exists(output) and not os.path.isdir(output):
    raise ExportError(f"--output={output} is a file; give a directory")
  if not os.path.isdir(output) or not os.listdir(output):
    return False
  if not overwrite:
    raise ExportError(f"--output={output} exists and is not empty; pass --overwrite to "
                      "replace an earlier export there, or choose a new directory")
  if not os.path.exists(os.path.join(output, EXPORT_FILE)):
    raise ExportError(f"--output={output} holds files but no {EXPORT_FILE}: it is not an "
                      "export, and --overwrite replaces only exports")
  return True


def _staging_dir(output: str) -> str:
  """Where a replacing export is written first, beside `output` (same file system)."""
  parent, name = os.path.split(os.path.abspath(output))
  staging = os.path.join(parent, f".{name}.export-{os.getpid()}")
  shutil.rmtree(staging, ignore_errors=True)
  return staging


def _define_flags():
  """The CLI's flags, defined only when run as a program (the module is also a library,
  and absl flags are process-global)."""
  flags.DEFINE_string("workdir", None, "Training run directory (its "
                      "checkpoints/<step>/ and metrics.jsonl are read).")
  flags.DEFINE_string("output", None, "Export directory (new or empty).")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_enum("weights", None, list(WEIGHTS), "ema (the fine-tuning EMA) "
                    "or raw; default: ema when the checkpoint keeps one, else raw.")
  flags.DEFINE_enum("dtype", "float32", list(DTYPES), "Stored parameter dtype.")
  flags.DEFINE_enum("format", "native", list(FORMATS), "native (orbax, "
                    "load_checkpoint), safetensors (load_checkpoint) or reference "
                    "(the official PyTorch state dict).")
  flags.DEFINE_bool("overwrite", False, "Replace an earlier export at --output (a "
                    "directory holding export.json); without it a non-empty --output is "
                    "refused.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS.workdir or not flags.FLAGS.output:
    raise app.UsageError("--workdir and --output are required")
  log_filter.install()
  f = flags.FLAGS
  # A user mistake (ExportError and every errors.UserError) is one line and exit 2.
  export(f.workdir, f.output, step=f.step, weights=f.weights, dtype=f.dtype, format=f.format,
         overwrite=f.overwrite)


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
