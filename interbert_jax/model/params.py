"""Pure transforms of InterBERT parameter trees (plain arrays, not boxed metadata)."""
import re

import jax
from flax import linen as nn
import jax.numpy as jnp
import numpy as np

from interbert_jax.model.interbert import STACKS, build_model, dummy_inputs

_LAYER = re.compile(r"^layer_(\d+)$")


def _is_unscanned(subtree):
  return bool(subtree) and all(_LAYER.match(k) for k in subtree)


def scan_params(params):
  """Unscanned tree (`<stack>/layer_{i}/...`) -> scanned (`<stack>/layers/...` with a
  leading [layers] axis). Stacks already scanned are returned as they are."""
  out = dict(params)
  for name in STACKS:
    sub = params.get(name)
    if sub is None or not _is_unscanned(sub):
      continue
    n = len(sub)
    layers = [sub[f"layer_{i}"] for i in range(n)]
    out[name] = {"layers": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}
  return out


def unscan_params(params):
  """Scanned tree (`<stack>/layers/...`, leading [layers] axis) -> `<stack>/layer_{i}/...`.
  Stacks already unscanned are returned as they are."""
  out = dict(params)
  for name in STACKS:
    sub = params.get(name)
    if sub is None or set(sub) != {"layers"}:
      continue
    n = jax.tree.leaves(sub["layers"])[0].shape[0]
    out[name] = {f"layer_{i}": jax.tree.map(lambda x, i=i: x[i], sub["layers"])
                 for i in range(n)}
  return out


# Frozen input statistics (model.feature_norm), not trained: buffers, like BatchNorm's
# running statistics, so not in the count (which stays the released model's).
FROZEN = ("feature_mean", "feature_scale")


def count_params(params):
  """Number of trained scalars in a (possibly abstract or boxed) parameter tree (FROZEN
  leaves left out)."""
  def size(path, x):
    frozen = any(getattr(k, "key", None) in FROZEN for k in path)
    return 0 if frozen else int(np.prod(np.shape(getattr(x, "value", x))))
  return int(sum(jax.tree.leaves(jax.tree_util.tree_map_with_path(
      size, params, is_leaf=lambda x: hasattr(x, "unbox")))))


def param_shapes(model_config):
  """The (unboxed) ShapeDtypeStruct tree of `build_model(model_config)`'s params; no compute."""
  model = build_model(model_config)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), **dummy_inputs(model.config))["params"])
  # No sharding constraint: callers may run under a mesh and logical-axis rules (the
  # trainer's config.init_from), where nn.unbox would constrain abstract shapes.
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False), shapes,
                      is_leaf=lambda x: isinstance(x, nn.Partitioned))
