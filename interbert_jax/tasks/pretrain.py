"""Pretraining (MSM, MRM, ITM): the Task defaults (tasks/base.py)."""
from interbert_jax.tasks import base

TASK = base.Task()
