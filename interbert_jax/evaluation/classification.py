"""Text classification evaluation: accuracy and macro F1 of a fine-tuned
`config.task=classification` checkpoint on a split (GLUE-style TSV).

  python -m interbert_jax.evaluation.classification --checkpoint=workdirs/tiny_text \
      --split=test [--data=DIR] [--output=FILE.json]

Scoring: tasks/classification.py (`eval_terms`), summed by evaluation/finetuned.py
`score`. Prints one JSON line.
"""

from interbert_jax import errors
from interbert_jax.evaluation import finetuned

TASK = "classification"


add_arguments = finetuned.add_arguments   # for python -m interbert_jax.evaluate TASK


def run(args) -> dict:
  """The result dict for parsed flags (--checkpoint, --data, --split, --weights, ...)."""
  return finetuned.run_task(TASK, args)


if __name__ == "__main__":
  errors.exit_now(finetuned.run_cli(TASK, description=__doc__.splitlines()[0]))
