"""InterBERT-JAX: vision-and-language BERT pretraining in JAX/Flax.

Public API:
  model = interbert_jax.build_model(config.model)
  model, params, model_config = interbert_jax.load_checkpoint(path)
  interbert_jax.save_checkpoint(path, params, model_config)

Importing the package stays light (no TensorFlow, orbax only when checkpoints are used).
"""
from interbert_jax.model import build_model


def load_checkpoint(path):
  """-> (model, params, model_config); see interbert_jax.model_files.load_checkpoint."""
  from interbert_jax.checkpoints import model_files
  return model_files.load_checkpoint(path)


def save_checkpoint(path, params, model_config):
  """See interbert_jax.model_files.save_checkpoint."""
  from interbert_jax.checkpoints import model_files
  return model_files.save_checkpoint(path, params, model_config)


__all__ = ["build_model", "load_checkpoint", "save_checkpoint"]
