"""The MSM head only at the slots that hold a target, packed per batch shard (`loss.msm_packing`).

The model runs the MSM head (transform + the [H, V] tied decoder, ~12% of the `base` step's
FLOPs) at every slot of `msm_positions` [B, P]; with the default P = text_len most slots are
padding (the span rule masks about a third of a caption). With `loss.msm_packing = f > 0`
the train step runs the head only at the target slots instead:

  1. The batch is cut into G groups, one per batch shard of the mesh (data x fsdp devices),
     each holding S = (B / G) * P slots.
  2. In each group the slots with weight > 0 are moved to the front, in order, and the first
     n = ceil(f * S) are gathered from the text-stream states: [G, n, H] (`pack_group`,
     inside `jax.shard_map`, so each gather and its scatter-add transpose stay on the device
     that holds the rows: XLA's partitioner never sees them).
  3. The head runs at those G * n slots; the loss numerators are summed over them.

When some group holds more than n targets, that step runs the head at every slot instead
(`lax.cond`), so the loss is always over every target: the same objective as the unpacked
head, with float32 round-off from another summation order (which is why it is off by
default: a run's trajectory moves at the rounding level; docs/performance.md). Whether a
(micro)batch fell back is returned too; the trainer logs the rate as the metric
`msm_packing_fallback` (a rate near 1 means f is too small for the batch shards: the step
then pays for the packing and for every slot).
"""
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from interbert_jax.errors import BadValueError
from interbert_jax.objectives import losses
from interbert_jax.parallel import partitioning


def packed_slots(rows: int, positions: int, fraction: float) -> int:
  """n: packed slots per group of `rows` examples with `positions` MSM slots each."""
  slots = rows * positions
  return min(slots, max(1, math.ceil(fraction * slots)))


def batch_shards(mesh) -> tuple[tuple[str, ...], int]:
  """(mesh axes the batch is split over, their number of shards G); ((), 1) without a mesh.

  The trainer always traces under `jax.set_mesh`; a caller that jits a sharded batch
  without one gets one group (the whole batch), packed through XLA's partitioner."""
  if mesh.empty:
    return (), 1
  axes = tuple(a for a in partitioning.BATCH_AXES if a in mesh.shape)
  return axes, math.prod(mesh.shape[a] for a in axes)


def pack_group(text, positions, targets, weights, n: int):
  """One group's target slots moved to the front, the first n kept.

  Args:
    text: [b, T, H] text-stream states; positions, targets: int [b, P]; weights: [b, P].
    n: packed slots.
  Returns:
    hidden [n, H], targets int [n], weights float32 [n] (0 past the group's targets),
    count int32 [1] (the group's targets; more than n means the packing dropped some).
  """
  b, t, h = text.shape
  live = (weights > 0).reshape(-1)
  order = jnp.argsort(~live, stable=True)[:n]                # target slots first, in order
  flat = (jnp.arange(b, dtype=jnp.int32)[:, None] * t + positions.astype(jnp.int32)).reshape(-1)
  hidden = text.reshape(b * t, h)[flat[order]]
  w = weights.astype(jnp.float32).reshape(-1)[order] * live[order]
  return hidden, targets.reshape(-1)[order], w, live.sum(dtype=jnp.int32)[None]


def msm_numerators(head_fn, text_hidden, batch: dict, fraction: float):
  """The numerators of `losses.msm_terms` (weighted CE and correct-argmax sums) with the
  head at the packed target slots (module docstring).

  Args:
    head_fn: [G, n, H] -> float32 logits [G, n, V] (the model's MSM head).
    text_hidden: [B, T, H] text-stream states.
    batch: msm_positions, msm_targets (int), msm_weights, all [B, P].
    fraction: loss.msm_packing, in (0, 1].
  Returns:
    (CE sum, correct sum, fell back): float32 scalars; the denominator of the sums is
    msm_weights' sum; fell back is 1.0 when some group held more than n targets and the
    head ran at every slot, else 0.0.
  """
  b, p = batch["msm_positions"].shape
  mesh = jax.sharding.get_abstract_mesh()
  axes, groups = batch_shards(mesh)
  if b % groups:
    raise BadValueError(f"loss.msm_packing: a (micro)batch of {b} does not split over the "
                        f"{groups} batch shards of the mesh")
  n = packed_slots(b // groups, p, fraction)
  args = (text_hidden, batch["msm_positions"], batch["msm_targets"], batch["msm_weights"])
  pack = lambda *a: pack_group(*a, n=n)
  if mesh.empty:
    packed = pack(*args)
  else:                                  # every device packs the rows it holds
    spec = P(axes or None)
    packed = jax.shard_map(pack, in_specs=spec, out_specs=spec)(*args)
  hidden, targets, weights, count = packed

  def sums(logits, targets, weights):
    terms = losses.msm_terms(logits, targets, weights)
    return terms["msm"][0], terms["msm_acc"][0]

  def every_slot():
    positions = batch["msm_positions"][..., None].astype(jnp.int32)
    logits = head_fn(jnp.take_along_axis(text_hidden, positions, axis=1))
    return sums(logits, batch["msm_targets"], batch["msm_weights"])

  def packed_slots_only():
    logits = head_fn(hidden.reshape(groups, n, -1))
    return sums(logits, targets.reshape(groups, n), weights.reshape(groups, n))

  # Differentiating a cond keeps the residuals of both branches; remat on the fallback
  # makes its residuals its inputs, so the common (packed) step does not also hold the
  # every-slot head's [B, P, V] activations (tiny at batch 512: 921.1 -> 896.0 MB of XLA
  # temp memory; unpacked 895.8). A fallback step recomputes its head once.
  overflow = jnp.any(count > n)
  ce, correct = jax.lax.cond(overflow, jax.checkpoint(every_slot), packed_slots_only)
  return ce, correct, overflow.astype(jnp.float32)
