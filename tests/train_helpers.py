"""Shared by the train-step tests: a few sharded steps from a fixed init."""
import flax.linen as nn
import jax

import interbert_jax
from interbert_jax.parallel import partitioning
from interbert_jax.training import optimizer as optimizer_lib
from interbert_jax.training import state as state_lib
from interbert_jax.training import train_step as train_step_lib

FAST_COMPILE = {"xla_backend_optimization_level": 0}


def compile_step(config, mesh, batch):
  """-> (the trainer's compiled step for `batch`'s shapes, the state from init key 0)."""
  model = interbert_jax.build_model(config.model)
  opt = optimizer_lib.build_optimizer(config)
  shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
  with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.logical_axis_rules()):
    abstract, sh = state_lib.abstract_state(model, opt.tx, mesh, jax.random.key(0))
    state = state_lib.create_state(model, opt.tx, sh, jax.random.key(0))
    compiled = train_step_lib.compile_train_step(config, model, opt, abstract, sh, shapes,
                                                 jax.random.key(1), mesh, FAST_COMPILE)
  return compiled, state


def run_steps(config, mesh, batches):
  """One step per host batch from init key 0 (step key 1); -> (metrics per step, state)."""
  compiled, state = compile_step(config, mesh, batches[0])
  history = []
  for b in batches:
    state, metrics = compiled(state, partitioning.global_batch(b, mesh), jax.random.key(1))
    history.append(jax.device_get(metrics))
  return history, jax.device_get(state)
