"""File-to-file conversions behind `python -m interbert_jax.convert` (one function per mode)."""
import json
import logging
import os

import jax
import ml_collections
import numpy as np
from flax import linen as nn

from interbert_jax.checkpoints import model_files
from interbert_jax.convert import hf_bert, layout, model_configs, reference, tensor_io
from interbert_jax.model import (build_model, count_params, dummy_inputs, param_shapes,
                                 scan_params, unscan_params)
from interbert_jax.convert.tensor_io import ConversionError

log = logging.getLogger(__name__)


def _read_json(path, what):
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError as e:
    raise ConversionError(f"{path}: {what} not found") from e
  except json.JSONDecodeError as e:
    raise ConversionError(f"{path}: {what} is not valid JSON ({e})") from e


def _unscanned(m):
  m = ml_collections.ConfigDict(m.to_dict())
  m.scan_layers = False
  return m


def init_params(m, seed):
  """Freshly initialised unscanned params of config.model `m` as numpy arrays."""
  m = _unscanned(m)
  model = build_model(m)
  params = jax.jit(lambda key: model.init(key, **dummy_inputs(m)))(jax.random.PRNGKey(seed))
  return jax.tree.map(np.asarray, nn.unbox(params["params"]))


def finalize(params, m, origin):
  """Unscanned numpy params -> the layout `m.scan_layers` asks for, checked against the
  model's parameter tree."""
  if m.scan_layers:
    params = jax.tree.map(np.asarray, scan_params(params))
  layout.check_tree(params, param_shapes(m), origin)
  return params


def _check_output(output):
  """Fails before any work when the output directory already holds something."""
  if output and os.path.isdir(output) and os.listdir(output):
    raise ConversionError(f"--output={output} exists and is not empty; choose a new directory")


def _save(output, params, m):
  model_files.save_checkpoint(output, params, m)
  log.info("wrote %s (%d parameters)", output, count_params(params))


def reference_checkpoint(checkpoint, reference_config, output=None, scan_layers=False,
                         config_variant="base", config_file=None):
  """Official InterBERT .bin/.safetensors + its config JSON -> (params, model_config).

  Writes a model checkpoint (interbert_jax.save_checkpoint) to `output` when given.
  """
  _check_output(output)
  ref_cfg = _read_json(reference_config, "reference config")
  base = model_configs.variant_model_config(config_variant, config_file)
  m = model_configs.from_reference(ref_cfg, base, origin=reference_config)
  m.scan_layers = bool(scan_layers)
  sd = tensor_io.read_state_dict(checkpoint)
  params = reference.reference_to_params(sd, m, origin=checkpoint)
  params = finalize(params, m, checkpoint)
  if output:
    _save(output, params, m)
  return params, m


def hf_bert_checkpoint(checkpoint, single_stream_layers, text_layers, image_layers=None,
                       output=None, seed=0, scan_layers=False, config_variant="base",
                       config_file=None):
  """HF BERT dir (config.json + model.safetensors | pytorch_model.bin) -> initial params.

  Returns (params, model_config, report); writes a model checkpoint to `output` when given.
  """
  _check_output(output)
  if not os.path.isdir(checkpoint):
    raise ConversionError(f"{checkpoint}: expected a Hugging Face BERT directory "
                          "(config.json + model.safetensors or pytorch_model.bin)")
  bert_cfg = _read_json(os.path.join(checkpoint, "config.json"), "BERT config")
  base = model_configs.variant_model_config(config_variant, config_file)
  m = model_configs.from_hf_bert(bert_cfg, base, single_stream_layers, text_layers,
                                 image_layers, origin=os.path.join(checkpoint, "config.json"))
  m.scan_layers = bool(scan_layers)
  weights = tensor_io.resolve_weights(checkpoint)
  sd = tensor_io.read_state_dict(weights)
  params, report = hf_bert.hf_bert_to_params(sd, m, init_params(m, seed), origin=weights)
  params = finalize(params, m, weights)
  if report["ignored"]:
    log.info("BERT tensors not used: %s", ", ".join(report["ignored"]))
  log.info("from BERT: %s; freshly initialised (seed %d): the rest; image stream "
           "%d layers x %d heads", ", ".join(report["converted"]), seed,
           m.image_stream.layers, m.image_stream.heads)
  if output:
    _save(output, params, m)
  return params, m, report


def to_reference_checkpoint(checkpoint, output, reference_config_output=None,
                            overwrite=False):
  """Model checkpoint (scanned or not) -> the reference's state dict at `output`
  (.bin via torch, or .safetensors); optionally its BertConfig JSON too. Returns the dict.
  Existing output files are replaced only with `overwrite` (checked before any work)."""
  if not output.endswith(tensor_io.TORCH_SUFFIXES + (tensor_io.SAFETENSORS_SUFFIX,)):
    raise ConversionError(f"--output={output}: must end in .bin/.pt/.pth or .safetensors")
  for flag, path in (("--output", output), ("--reference_config_output",
                                             reference_config_output)):
    if path and os.path.exists(path) and not overwrite:
      raise ConversionError(f"{flag}={path} exists; pass --overwrite to replace it")
    if path and os.path.isdir(path):
      raise ConversionError(f"{flag}={path} is a directory; give a file name")
  # A file we cannot write fails now, before loading and converting (OSError: one line).
  probe = _tmp_beside(output)
  with open(probe, "wb"):
    pass
  os.remove(probe)
  try:
    _, params, m = model_files.load_checkpoint(checkpoint)
  except (ValueError, FileNotFoundError) as e:
    raise ConversionError(f"--checkpoint={checkpoint}: {e}") from None
  return write_reference(params, m, output, reference_config_output)


def _tmp_beside(path: str) -> str:
  """A temporary name in `path`'s directory with its extension (writers pick the format
  by extension); renamed over `path` once complete."""
  head, tail = os.path.split(os.path.abspath(path))
  stem, ext = os.path.splitext(tail)
  return os.path.join(head, f".{stem}.tmp-{os.getpid()}{ext}")


def write_reference(params, m, output, reference_config_output=None):
  """Params of config.model `m` (scanned or not) -> the reference's state dict at `output`.

  Raises ConversionError when the tree holds more than the reference model has (e.g. a
  fine-tuning head): the official state dict cannot hold it.
  """
  params = jax.tree.map(np.asarray, unscan_params(params))
  extra = sorted(set(model_files.flatten(params))
                 - set(model_files.flatten(param_shapes(_unscanned(m)))))
  if extra:
    raise ConversionError(f"the reference state dict has no place for {extra} (a "
                          "fine-tuning head?); export --format=native or safetensors")
  ref_cfg = model_configs.to_reference(m)
  sd = reference.params_to_reference(params, m)
  tmp = _tmp_beside(output)   # whole or not at all: a failed write leaves `output` as it was
  try:
    tensor_io.write_state_dict(tmp, sd)
    os.replace(tmp, output)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  if reference_config_output:
    tmp = _tmp_beside(reference_config_output)
    with open(tmp, "w") as f:
      json.dump(ref_cfg, f, indent=2, sort_keys=True)
    os.replace(tmp, reference_config_output)
  log.info("wrote %s (%d tensors)", output, len(sd))
  return sd
