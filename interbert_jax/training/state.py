"""Train state {"params", "opt", "step"}: abstract shapes, shardings, sharded init.

Parameter shapes do not depend on the batch, so init runs on `model.dummy_inputs`.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from interbert_jax.model import dummy_inputs
from interbert_jax.parallel import partitioning


def init_fn(model, tx):
  """rng -> state with *boxed* params (logical axis names kept for the sharding rules)."""
  def init(rng):
    if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
      rng = jax.random.wrap_key_data(rng)        # raw key data (global array, multi-host)
    params = model.init({"params": rng, "dropout": rng}, **dummy_inputs(model.config),
                        deterministic=True)["params"]
    # Adam moments inherit the boxes, hence the params' shardings (FSDP shards them too).
    return {"params": params, "opt": tx.init(params), "step": jnp.zeros([], jnp.int32)}
  return init


def abstract_state(model, tx, mesh, rng):
  """(unboxed abstract state with .sharding set, shardings tree). Nothing is allocated."""
  boxed = jax.eval_shape(init_fn(model, tx), rng)
  shardings = partitioning.tree_shardings(boxed, mesh)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          partitioning.unbox(boxed), shardings)
  return abstract, shardings


def create_state(model, tx, shardings, rng):
  """Initialises the state directly in its sharded layout (no host-side full copy)."""
  init = init_fn(model, tx)
  return jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)(rng)
