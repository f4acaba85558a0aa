"""Pretraining losses and metrics (docs/design.md, "Losses")."""
from interbert_jax.objectives.losses import (TASKS, combine, itm_terms, mrm_region_weights,
                                             mrm_terms, msm_terms, pretraining_terms)

__all__ = ["TASKS", "combine", "itm_terms", "mrm_region_weights", "mrm_terms", "msm_terms",
           "pretraining_terms"]
