"""Multiple-choice evaluation (VCR-style): Q->A, QA->R and Q->AR accuracy of a fine-tuned
`config.task=multiple_choice` checkpoint on a split.

  python -m interbert_jax.evaluation.multiple_choice --checkpoint=workdirs/tiny_vcr \
      --split=test [--data=DIR] [--output=FILE.json]

Scoring: tasks/multiple_choice.py (`eval_terms`: softmax over the 4 choices' Dense(1)
logits), summed by evaluation/finetuned.py `score`. Prints one JSON line.
"""

from interbert_jax import errors
from interbert_jax.evaluation import finetuned

TASK = "multiple_choice"


add_arguments = finetuned.add_arguments   # for python -m interbert_jax.evaluate TASK


def run(args) -> dict:
  """The result dict for parsed flags (--checkpoint, --data, --split, --weights, ...)."""
  return finetuned.run_task(TASK, args)


if __name__ == "__main__":
  errors.exit_now(finetuned.run_cli(TASK, description=__doc__.splitlines()[0]))
