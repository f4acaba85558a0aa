"""Evaluation of InterBERT checkpoints, one module per task.

  pretraining     MSM / MRM / ITM losses and accuracies on the eval split (the trainer's evals)
  retrieval       image-text retrieval: P(match) scoring, R@K metrics, the trainer's evaluator
  retrieval_data  a prepared split as retrieval inputs (every image, every caption)
  retrieval_cli   `python -m interbert_jax.evaluate retrieval` (add_arguments / run)
  block_store     finished score blocks on disk (resumable evaluations)
  common          checkpoint loading onto a data-parallel mesh, EvaluationError
The CLI (interbert_jax/evaluate.py) maps TASK -> a module with add_arguments and run.
"""
