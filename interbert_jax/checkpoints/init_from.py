"""`config.init_from`: start training from a converted model checkpoint.

A converted checkpoint (e.g. bert-base-uncased mapped onto InterBERT's tree by
`interbert_jax.convert`) may hold only part of the tree (a BERT has no image stream or
MRM head); those parameters keep their fresh initialisation. Everything it does hold must
exist in the model with the same shape, otherwise start-up fails naming the parameter.
"""
import logging

import flax
import jax
import numpy as np


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
    raise ValueError(f"config.init_from={source!r}: parameter {unknown[0]!r} is not in the "
                     f"model ({len(unknown)} unknown){hint}.")
  for name, value in loaded.items():
    if tuple(np.shape(value)) != tuple(target[name].shape):
      raise ValueError(f"config.init_from={source!r}: {name} has shape {np.shape(value)} but "
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


def load_init_params(path: str, init_params, ignore=()):
  """Loads `path` with interbert_jax.load_checkpoint and merges it into init_params."""
  import interbert_jax  # pylint: disable=g-import-not-at-top  (public API, avoids a cycle)
  _, loaded, _ = interbert_jax.load_checkpoint(path)
  return merge_params(init_params, jax.device_get(loaded), source=path, ignore=ignore)
