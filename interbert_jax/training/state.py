"""Train state {"params", "opt", "step"}: abstract shapes, shardings, sharded init."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from interbert_jax.parallel import partitioning


def example_inputs(batch_shapes: dict) -> dict:
  """One-example zero batch with the contract's shapes/dtypes (for model.init)."""
  return {k: jnp.zeros((1,) + tuple(s.shape[1:]), s.dtype) for k, s in batch_shapes.items()}


def init_fn(model, tx, batch_shapes: dict):
  """rng -> state with *boxed* params (logical axis names kept for the sharding rules)."""
  def init(rng):
    if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
      rng = jax.random.wrap_key_data(rng)        # raw key data (global array, multi-host)
    b = example_inputs(batch_shapes)
    params = model.init(
        {"params": rng, "dropout": rng}, b["text_ids"], b["text_mask"], b["region_features"],
        b["region_locations"], b["region_mask"], segment_ids=b["segment_ids"],
        deterministic=True, msm_positions=b["msm_positions"])["params"]
    # Adam moments inherit the boxes, hence the params' shardings (FSDP shards them too).
    return {"params": params, "opt": tx.init(params), "step": jnp.zeros([], jnp.int32)}
  return init


def abstract_state(model, tx, batch_shapes: dict, mesh, rng):
  """(unboxed abstract state with .sharding set, shardings tree). Nothing is allocated."""
  boxed = jax.eval_shape(init_fn(model, tx, batch_shapes), rng)
  shardings = partitioning.tree_shardings(boxed, mesh)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          partitioning.unbox(boxed), shardings)
  return abstract, shardings


def create_state(model, tx, batch_shapes: dict, shardings, rng):
  """Initialises the state directly in its sharded layout (no host-side full copy)."""
  init = init_fn(model, tx, batch_shapes)
  return jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)(rng)


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
