"""Tasks the one trainer runs: `config.task` picks one (docs/design.md, "Tasks").

A task is what differs between pretraining and fine-tuning: the model (InterBert or a
subclass that adds heads), the batch maker (train / eval iterators), the loss terms
`(outputs, batch, config) -> {name: (num, den)}`, how they combine into (loss, metrics)
and the eval. `interbert_jax/main.py` is the only training loop.

Importing this package is light (start-up validation reads TASKS); `get_task` imports
the task's module.
"""
import importlib

from interbert_jax.errors import BadValueError

TASKS = ("pretrain", "retrieval", "multiple_choice", "classification")   # config.task


def get_task(config):
  """The Task object for `config.task` (one of TASKS; checked at start-up)."""
  if config.task not in TASKS:
    raise BadValueError(f"config.task={config.task!r}: must be one of {TASKS}")
  return importlib.import_module(f"interbert_jax.tasks.{config.task}").TASK
