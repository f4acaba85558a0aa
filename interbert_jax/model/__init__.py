"""InterBERT linen modules (docs/design.md, "Model API")."""
from interbert_jax.model.interbert import (STACKS, InterBert, build_model, dummy_inputs,
                                           validate_model_config)
from interbert_jax.model.params import count_params, param_shapes, scan_params, unscan_params

__all__ = ["STACKS", "InterBert", "build_model", "dummy_inputs", "validate_model_config",
           "count_params", "param_shapes", "scan_params", "unscan_params"]
