"""Evaluation of InterBERT checkpoints, one module per task.

  pretraining  MSM / MRM / ITM losses and accuracies on the eval split (the trainer's evals)
"""
