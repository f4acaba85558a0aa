"""Pretraining evaluation: MSM / MRM / ITM losses and accuracies over the eval split.

`eval_terms` is the pure per-batch function; `Evaluator` runs it, jitted and sharded like
the train step, over `config.eval_batches` batches and returns `eval_*` scalars. Given a
`task` (interbert_jax.tasks) it evaluates that task's terms on its eval batches instead.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from interbert_jax.data import pipeline
from interbert_jax.objectives import losses
from interbert_jax.parallel import partitioning
from interbert_jax.training import train_step as train_step_lib


def eval_terms(params, batch: dict, *, model, config, task=None) -> dict:
  """Loss-term sums {task: (num, den)} on one batch, dropout off; summed over eval batches."""
  if task is None:
    outputs = train_step_lib.apply_model(model, params, batch, deterministic=True)
    return losses.pretraining_terms(outputs, batch, config)
  return task.eval_terms(task.apply(model, params, batch, deterministic=True), batch, config)


class Evaluator:
  """params -> {"eval_loss", "eval_msm_acc", ...} on the eval split (all processes call it)."""

  def __init__(self, config, model, mesh, params_sharding, batch_keys, *, process_index=0,
               process_count=1, task=None):
    self.config, self.mesh, self.task = config, mesh, task
    self.process_index, self.process_count = process_index, process_count
    batch_sh = {k: partitioning.batch_sharding(mesh) for k in batch_keys}
    self._terms = jax.jit(functools.partial(eval_terms, model=model, config=config, task=task),
                          in_shardings=(params_sharding, batch_sh),
                          out_shardings=partitioning.replicated(mesh))

  def __call__(self, params) -> dict:
    totals = None
    iterator = pipeline.eval_iterator if self.task is None else self.task.eval_iterator
    for host_batch in iterator(
        self.config, num_batches=self.config.eval_batches or None,
        process_index=self.process_index, process_count=self.process_count):
      terms = jax.device_get(self._terms(params, partitioning.global_batch(host_batch, self.mesh)))
      terms = jax.tree.map(lambda x: np.asarray(x, np.float64), terms)   # exact sums
      totals = terms if totals is None else jax.tree.map(np.add, totals, terms)
    if totals is None:
      return {}
    combine = losses.combine if self.task is None else self.task.combine
    _, metrics = combine(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), totals),
                         self.config.loss)
    return {f"eval_{k}": float(v) for k, v in metrics.items()}
