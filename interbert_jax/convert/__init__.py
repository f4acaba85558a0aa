"""Checkpoint converters: `python -m interbert_jax.convert {hf_bert,reference,to_reference}`.

  hf_bert       Hugging Face BERT -> initial InterBERT (embeddings, first L layers -> single
                stream, next K_t -> text stream, MLM head -> MSM head; the rest fresh).
  reference     official InterBERT PyTorch checkpoint (black4321/InterBERT) -> ours.
  to_reference  ours -> the official state dict (.bin via torch, or .safetensors), lossless.

Library use: `interbert_jax.convert.commands.{hf_bert_checkpoint, reference_checkpoint,
to_reference_checkpoint}`; the pure tree mappings are in `reference.py` and `hf_bert.py`.
"""
from interbert_jax.convert.tensor_io import ConversionError

__all__ = ["ConversionError"]
