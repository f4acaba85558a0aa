"""Logical-axis rules and the shardings of train state and batches.

Model code names the axes of every parameter and of the activations whose layout matters
(`nn.with_logical_partitioning`, `nn.with_logical_constraint`); this table maps those
names onto the (data, fsdp, tensor) mesh. docs/partitioning.md explains each rule.
"""
import logging
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

# Priority order matters: flax assigns a mesh axis to the first rule that claims it, so an
# activation [batch, length, embed] gets batch -> (data, fsdp) and embed stays unsharded,
# while a parameter [embed, mlp] (no batch axis) gets embed -> fsdp, mlp -> tensor.
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    # Examples are split over every data-parallel device: DP replicas x FSDP shards.
    ("batch", ("data", "fsdp")),
    # FSDP / ZeRO-3: the hidden axis of each weight (and of its Adam moments) is sharded;
    # XLA all-gathers it just before use and reduce-scatters its gradient.
    ("embed", "fsdp"),
    # Megatron tensor parallelism: attention heads and the MLP's hidden units are split,
    # so QKV/wi are column-parallel, out/wo row-parallel (one all-reduce per block).
    ("heads", "tensor"),
    # ZeRO-3 for what has no embed axis (MLP/pooler biases [mlp], the ITM head [mlp, 2]):
    # fsdp x tensor while fsdp is free; weights [embed, mlp] and activations (fsdp already
    # taken by embed / batch) fall through to the next rule, unchanged.
    ("mlp", ("fsdp", "tensor")),
    ("mlp", "tensor"),
    # The tied word embedding/MSM decoder: vocab-parallel logits. Its MSM bias [vocab] has
    # no embed axis: ZeRO-3 over fsdp x tensor as for [mlp], which needs the rows to divide
    # (model.vocab_pad_multiple; 30522 itself divides by 2 only). The table [vocab, embed]
    # and the logits (fsdp taken by embed / batch) fall through to tensor.
    ("vocab", ("fsdp", "tensor")),
    ("vocab", "tensor"),
    # Small or awkward axes stay replicated: per-head width, stacked-layer axis (scanned
    # layers are gathered one at a time), sequence positions, 2048-d region features
    # (their projection is sharded on embed), detector classes (1601 divides nothing).
    ("kv", None),
    ("layers", None),
    ("length", None),
    ("features", None),
    ("classes", None),
)


# The mesh axes examples are split over (the "batch" rule).
BATCH_AXES: tuple[str, ...] = dict(LOGICAL_AXIS_RULES)["batch"]


def unbox(tree):
  """Strips logical-partitioning boxes without applying sharding constraints."""
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.Partitioned) else x,
                      tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def logical_axis_rules():
  """The rules as a list, for `nn.logical_axis_rules(...)` contexts."""
  return list(LOGICAL_AXIS_RULES)


def _fit_to_shape(spec: P, shape: tuple[int, ...], mesh: jax.sharding.Mesh, name: str) -> P:
  """Drops mesh axes from dims they do not divide (e.g. vocab 30522 over tensor=4).

  jit refuses unevenly sharded arguments; replicating such a dim is always correct and
  only costs memory on that one array, so we log it instead of failing.
  """
  entries = list(spec) + [None] * (len(shape) - len(spec))
  fitted = []
  for dim, axes in zip(shape, entries):
    if axes is None:
      fitted.append(None)
      continue
    names = (axes,) if isinstance(axes, str) else tuple(axes)
    size = int(np.prod([mesh.shape[a] for a in names]))
    if dim % size:
      logging.warning("%s: dim %d not divisible by mesh axes %s (size %d); replicated.%s",
                      name, dim, names, size,
                      " (set model.vocab_pad_multiple to split the vocabulary)"
                      if "vocab" in name or "msm_head" in name or "word_emb" in name else "")
      fitted.append(None)
    else:
      fitted.append(axes)
  while fitted and fitted[-1] is None:
    fitted.pop()
  return P(*fitted)


def tree_shardings(abstract_tree, mesh: jax.sharding.Mesh, rules=LOGICAL_AXIS_RULES):
  """NamedShardings for a (possibly boxed) abstract tree, e.g. from `jax.eval_shape`.

  Boxed leaves (`nn.LogicallyPartitioned`) are mapped through the rules; plain leaves
  (step counters, RNG keys) are replicated. The result mirrors the *unboxed* tree.
  """
  specs = nn.get_partition_spec(abstract_tree)
  mesh_shardings = nn.logical_to_mesh_sharding(specs, mesh, list(rules))
  unboxed = unbox(abstract_tree)
  paths = jax.tree_util.tree_flatten_with_path(unboxed)[0]
  leaves_sh = jax.tree.leaves(mesh_shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  assert len(paths) == len(leaves_sh), (len(paths), len(leaves_sh))
  fitted = [
      NamedSharding(mesh, _fit_to_shape(sh.spec, leaf.shape, mesh, jax.tree_util.keystr(path)))
      for (path, leaf), sh in zip(paths, leaves_sh)]
  return jax.tree.unflatten(jax.tree.structure(unboxed), fitted)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading (example) axis over data x fsdp; every other axis replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def replicate(value, mesh: jax.sharding.Mesh) -> jax.Array:
  """A host value (identical on every process) as a global array replicated on `mesh`.

  Unlike device_put of a local array, this is valid in multi-process runs, where jit
  arguments must be global arrays over the whole mesh.
  """
  value = np.asarray(value)
  return jax.make_array_from_callback(value.shape, replicated(mesh), lambda idx: value[idx])


def global_batch(host_batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Host-local numpy rows -> one global jax.Array per key, sharded on the batch axis.

  Each process passes its own `batch_size // process_count` rows; the global shape is
  inferred (rows x process_count), so no host ever holds the whole batch.
  """
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in host_batch.items()}
