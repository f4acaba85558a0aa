"""Train state {"params", "opt", "step"} (+ "ema_params"): abstract shapes, shardings, init.

Parameter shapes do not depend on the batch, so init runs on `model.dummy_inputs` (or the
task's `init_inputs`). With `ema=True` the state also holds "ema_params", the exponential
moving average of the weights (training/train_step.py `update_ema`), starting as a copy.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from interbert_jax.model import dummy_inputs
from interbert_jax.parallel import partitioning


def init_fn(model, tx, inputs=None, ema=False):
  """rng -> state with *boxed* params (logical axis names kept for the sharding rules).

  `inputs`: model.init keyword arguments (default `dummy_inputs(model.config)`).
  """
  def init(rng):
    if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
      rng = jax.random.wrap_key_data(rng)        # raw key data (global array, multi-host)
    params = model.init({"params": rng, "dropout": rng},
                        **(inputs if inputs is not None else dummy_inputs(model.config)),
                        deterministic=True)["params"]
    # Adam moments inherit the boxes, hence the params' shardings (FSDP shards them too).
    state = {"params": params, "opt": tx.init(params), "step": jnp.zeros([], jnp.int32)}
    if ema:
      state["ema_params"] = jax.tree.map(jnp.copy, params)
    return state
  return init


def abstract_state(model, tx, mesh, rng, inputs=None, ema=False):
  """(unboxed abstract state with .sharding set, shardings tree). Nothing is allocated."""
  boxed = jax.eval_shape(init_fn(model, tx, inputs, ema), rng)
  shardings = partitioning.tree_shardings(boxed, mesh)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          partitioning.unbox(boxed), shardings)
  return abstract, shardings


def create_state(model, tx, shardings, rng, inputs=None, ema=False):
  """Initialises the state directly in its sharded layout (no host-side full copy)."""
  init = init_fn(model, tx, inputs, ema)
  return jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)(rng)


def reset_ema(state: dict, shardings) -> dict:
  """state with "ema_params" set to a fresh copy of "params" (after `config.init_from`)."""
  copy = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=shardings["params"])
  return dict(state, ema_params=copy(state["params"]))
