"""`config.init_from`: start training from a converted model checkpoint or a BERT.

A converted checkpoint (e.g. bert-base-uncased mapped onto InterBERT's tree by
`interbert_jax.convert`) may hold only part of the tree (a BERT has no image stream or
MRM head); those parameters keep their fresh initialisation. Everything it does hold must
exist in the model with the same shape, otherwise start-up fails naming the parameter.

A Hugging Face BERT directory (config.json with model_type "bert" + weights) is converted
at start-up with the converter's mapping (convert/hf_bert.py): BERT layers
0..L-1 -> single stream, L..L+K_t-1 -> text stream, with L and K_t read from config.model,
so one command converts and trains. Its config.json must agree with config.model on every
size the conversion reads, otherwise start-up fails listing each disagreeing key.
"""
import functools
import json
import logging
import os

import flax
import jax
import numpy as np

from interbert_jax import errors


class InitFromError(errors.UserError, ValueError):
  """config.init_from does not fit the model (reported in one line, exit 2)."""


# config.model keys a BERT checkpoint fixes (the converter reads these shapes from it).
BERT_KEYS = ("vocab_size", "hidden_size", "max_position_embeddings", "type_vocab_size",
             "layer_norm_eps", "single_stream.heads", "single_stream.mlp_dim",
             "text_stream.heads", "text_stream.mlp_dim")


def hf_bert_config(path: str):
  """The config.json of a Hugging Face BERT directory (model_type "bert"), else None."""
  cfg = os.path.join(path, "config.json")
  if not os.path.isfile(cfg):
    return None
  try:
    with open(cfg) as f:
      config = json.load(f)
  except (OSError, ValueError):
    return None
  return config if isinstance(config, dict) and config.get("model_type") == "bert" else None


def bert_mismatches(bert_config: dict, m) -> list[str]:
  """`model.KEY=ours (BERT: theirs)` for each BERT_KEYS entry where config.model `m`
  differs from what the converter derives from the BERT's config.json."""
  from interbert_jax.convert import model_configs  # pylint: disable=g-import-not-at-top
  expected = model_configs.from_hf_bert(bert_config, m, m.single_stream.layers,
                                        m.text_stream.layers, m.image_stream.layers)
  get = lambda cfg, key: functools.reduce(lambda c, k: c[k], key.split("."), cfg)
  return [f"model.{k}={get(m, k)!r} (BERT: {get(expected, k)!r})" for k in BERT_KEYS
          if get(m, k) != get(expected, k)]


def load_hf_bert(path: str, bert_config: dict, init_params, m, ignore=()):
  """Converts the HF BERT at `path` (its config.json `bert_config`) for config.model `m`
  and merges the subtrees it holds into init_params (the rest keep their initialisation)."""
  from interbert_jax.convert import hf_bert, tensor_io  # pylint: disable=g-import-not-at-top
  from interbert_jax.model import scan_params  # pylint: disable=g-import-not-at-top
  try:
    errors = bert_mismatches(bert_config, m)
    if errors:
      raise InitFromError(f"config.init_from={path!r} is a BERT checkpoint whose config.json "
                          f"disagrees with config.model: {'; '.join(errors)}")
    weights = tensor_io.resolve_weights(path)
    # {} for the fresh params: only the converted subtrees come back (merge_params checks
    # their names and shapes against the model), so no second model init at start-up.
    params, report = hf_bert.hf_bert_to_params(tensor_io.read_state_dict(weights), m, {},
                                               origin=weights)
  except tensor_io.ConversionError as e:
    raise InitFromError(f"config.init_from={path!r}: {e}") from e
  logging.info("init_from %s: BERT layers 0-%d -> single stream, %d-%d -> text stream%s",
               path, m.single_stream.layers - 1, m.single_stream.layers,
               m.single_stream.layers + m.text_stream.layers - 1,
               ", MLM head -> MSM head" if "msm_head" in report["converted"] else "")
  if m.scan_layers:
    params = scan_params(params)
  return merge_params(init_params, params, source=path, ignore=ignore)


def merge_params(init_params, loaded_params, source: str = "init_from", ignore=()):
  """Returns init_params with every leaf present in loaded_params replaced by it.

  Args:
    init_params: freshly initialised tree (arrays, any sharding).
    loaded_params: tree from the checkpoint (host or device arrays).
    ignore: top-level subtrees of loaded_params to skip (a fine-tuning task's model may
      drop parts of InterBERT, e.g. the image stream of the text-only classifier).
  Raises:
    ValueError naming the first unknown parameter or shape mismatch.
  """
  target = flax.traverse_util.flatten_dict(init_params, sep="/")
  loaded = flax.traverse_util.flatten_dict(flax.core.unfreeze(loaded_params), sep="/")
  skipped = [k for k in loaded if k.split("/")[0] in ignore]
  if skipped:
    logging.info("init_from %s: %d tensors of %s are not used by this task", source,
                 len(skipped), sorted({k.split("/")[0] for k in skipped}))
    loaded = {k: v for k, v in loaded.items() if k.split("/")[0] not in ignore}
  unknown = sorted(set(loaded) - set(target))
  if unknown:
    hint = (" (one tree is scanned, the other not: match config.model.scan_layers)"
            if any("/layers/" in k or "/layer_" in k for k in unknown) else "")
    raise InitFromError(f"config.init_from={source!r}: parameter {unknown[0]!r} is not in the "
                     f"model ({len(unknown)} unknown){hint}.")
  for name, value in loaded.items():
    if tuple(np.shape(value)) != tuple(target[name].shape):
      raise InitFromError(f"config.init_from={source!r}: {name} has shape {np.shape(value)} but "
                       f"the model expects {tuple(target[name].shape)}; check config.model.")
  kept = sorted(set(target) - set(loaded))
  logging.info("init_from %s: loaded %d tensors, %d keep their initialisation%s", source,
               len(loaded), len(kept), f" (e.g. {kept[:3]})" if kept else "")
  merged = {}
  for name, init in target.items():
    if name in loaded:
      value = np.asarray(loaded[name], dtype=init.dtype)
      merged[name] = jax.make_array_from_callback(init.shape, init.sharding, lambda i, v=value: v[i])
    else:
      merged[name] = init
  return flax.traverse_util.unflatten_dict(merged, sep="/")


def load_init_params(path: str, init_params, ignore=(), model_config=None):
  """Loads `path` (a model checkpoint, or a HF BERT directory converted for config.model
  `model_config`) and merges it into init_params."""
  bert_config = hf_bert_config(path) if model_config is not None else None
  if bert_config is not None:
    return load_hf_bert(path, bert_config, init_params, model_config, ignore=ignore)
  import interbert_jax  # pylint: disable=g-import-not-at-top  (public API, avoids a cycle)
  _, loaded, _ = interbert_jax.load_checkpoint(path)
  return merge_params(init_params, jax.device_get(loaded), source=path, ignore=ignore)
