"""Evaluation of a fine-tuned training checkpoint on a split, through its task.

The checkpoint's run config (`<workdir>/config.json`, which names `task`) rebuilds the
task's model (InterBERT plus its head) and batches; `score` sums the task's eval terms over
every batch of the split and combines them (exact float64 sums, as the trainer's eval).
Used by evaluation/multiple_choice.py and evaluation/classification.py.
"""
import argparse
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from interbert_jax import errors
from interbert_jax import tasks
from interbert_jax.evaluation.common import EvaluationError


def resolve_checkpoint(path: str) -> tuple[str, int]:
  """(workdir, step) of `<workdir>` (latest step) or `<workdir>/checkpoints/<step>`."""
  path = os.path.abspath(path)
  if os.path.basename(os.path.dirname(path)) == "checkpoints" and \
      os.path.basename(path).isdigit():
    return os.path.dirname(os.path.dirname(path)), int(os.path.basename(path))
  steps = sorted(int(s) for s in os.listdir(os.path.join(path, "checkpoints"))
                 if s.isdigit()) if os.path.isdir(os.path.join(path, "checkpoints")) else []
  if not steps:
    raise EvaluationError(f"--checkpoint={path}: no training checkpoint there (expected "
                          "<workdir> or <workdir>/checkpoints/<step>)")
  return path, steps[-1]


def load(path: str, weights: str = "ema"):
  """-> (config, params, step): the run config and the `ema_params` (when kept and
  weights == "ema") or `params` of the checkpoint."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  workdir, step = resolve_checkpoint(path)
  with open(os.path.join(workdir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  step_dir = os.path.join(workdir, "checkpoints", str(step))
  item = "ema_params" if weights == "ema" and os.path.isdir(
      os.path.join(step_dir, "ema_params")) else "params"
  if not os.path.isdir(os.path.join(step_dir, item)):
    raise EvaluationError(f"{step_dir}: no {item} item")
  params = ocp.StandardCheckpointer().restore(os.path.join(step_dir, item))
  return config, jax.device_put(params), step, item


def score(task, model, params, batches, config) -> dict:
  """Sums task.eval_terms over `batches` (host batches), then task.combine -> metrics."""
  terms_fn = jax.jit(lambda p, b: task.eval_terms(
      task.apply(model, p, b, deterministic=True), b, config))
  totals, n = None, 0
  for batch in batches:
    terms = jax.tree.map(lambda x: np.asarray(x, np.float64),
                         jax.device_get(terms_fn(params, batch)))
    totals = terms if totals is None else jax.tree.map(np.add, totals, terms)
    n += len(next(iter(batch.values())))
  if totals is None:
    raise EvaluationError("the split has no batches")
  _, metrics = task.combine(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), totals),
                            config.loss)
  out = {k: float(v) for k, v in metrics.items()}
  out["examples"] = n
  return out


def evaluate(checkpoint: str, *, task_name: str, data: str = "", split: str = "test",
             weights: str = "ema", batch_size: int = 0) -> dict:
  config, params, step, item = load(checkpoint, weights)
  if config.task != task_name:
    raise EvaluationError(f"--checkpoint={checkpoint} was trained for task "
                          f"{config.task!r}, not {task_name!r}")
  if data:
    config.data.dir = data
  config.data.eval_split = split
  config.batch_size = batch_size or config.batch_size
  task = tasks.get_task(config)
  model = task.build_model(config)
  metrics = score(task, model, params, task.eval_iterator(config), config)
  return dict(task=task_name, checkpoint=os.path.abspath(checkpoint), step=step,
              weights=item, split=split, **metrics)


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """This family's own flags (`python -m interbert_jax.evaluate TASK` adds --checkpoint,
  --data, --split, --output)."""
  parser.add_argument("--weights", choices=("ema", "raw"), default="ema",
                      help="ema_params when the run kept them (default), or the raw params")
  parser.add_argument("--batch_size", type=int, default=0, help="0 = the run's batch size")


def run_task(task_name: str, args) -> dict:
  """`run(args)` of evaluation/multiple_choice.py and classification.py."""
  return evaluate(args.checkpoint, task_name=task_name, data=args.data, split=args.split,
                  weights=args.weights, batch_size=args.batch_size)


@errors.cli_main
def run_cli(task_name: str, argv=None, description: str = "") -> int:
  """Standalone `python -m interbert_jax.evaluation.<task>`: the flags of
  `python -m interbert_jax.evaluate TASK`, one JSON line on stdout (and --output)."""
  p = argparse.ArgumentParser(prog=f"python -m interbert_jax.evaluation.{task_name}",
                              description=description)
  p.add_argument("--checkpoint", required=True,
                 help="<workdir> (latest step) or <workdir>/checkpoints/<step> of a "
                      f"config.task={task_name} run")
  p.add_argument("--data", default="", help="dataset directory (default: the run's "
                 "config.data.dir; '' there = synthetic)")
  p.add_argument("--split", default="test", help="split to evaluate (default test)")
  p.add_argument("--output", default="", help="also write the JSON here")
  add_arguments(p)
  args = p.parse_args(argv)
  errors.check_name(args.split, "--split")
  result = run_task(task_name, args)
  line = json.dumps(result, sort_keys=True)
  print(line)
  if args.output:
    tmp = f"{args.output}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
      f.write(line + "\n")
    os.replace(tmp, args.output)
  return 0
