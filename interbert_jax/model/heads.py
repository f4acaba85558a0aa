"""Pretraining heads: MSM (tied decoder) and MRM (docs/reference_notes.md, Model facts 1)."""
import jax.numpy as jnp
from flax import linen as nn

from interbert_jax.model import common


def transform_output(h):
  """A head's transformed states [B, P|R, H], pinned to the hidden layout (batch-sharded, H
  whole) before the decoder. Without the pin XLA's SPMD partitioner (jax 0.10.2, CPU)
  computed wrong gradients on a data x fsdp x tensor = 2 x 2 x 2 mesh for some batch
  sizes (8 and 16 of `tiny`; 32 was right): the transform's output, sharded on H over
  tensor, meets the decoder's [V, H] table, sharded on H over fsdp
  (tests/test_parallel.py, docs/partitioning.md)."""
  return common.constrain(h, common.HIDDEN_AXES)


class MsmHead(nn.Module):
  """Masked segment modeling: transform, then the word embeddings as decoder + own bias [Vp].

  Vp = common.vocab_rows(config) >= V: the logits of padding rows (ids >= vocab_size) are
  the dtype's minimum, so softmax, cross-entropy and argmax are those over the V real ids.
  """
  config: object

  @nn.compact
  def __call__(self, x, word_table):
    """x [B, P, H], word_table [Vp, H] -> logits [B, P, Vp] (compute dtype)."""
    cfg = self.config
    dtype = common.to_dtype(cfg.dtype)
    # The transform is a sibling of `bias` in this module's tree (msm_head/transform,...).
    h = common.dense(cfg, cfg.hidden_size, ("embed", "mlp"), ("mlp",), name="transform")(x)
    h = transform_output(common.layer_norm(cfg, "transform_norm")(common.gelu(h)))
    rows = common.vocab_rows(cfg)
    bias = self.param("bias", common.zeros_init(("vocab",)), (rows,),
                      common.to_dtype(cfg.param_dtype))
    logits = jnp.einsum("bph,vh->bpv", h.astype(dtype), word_table.astype(dtype))
    logits = logits + bias.astype(dtype)
    if rows > cfg.vocab_size:
      real = jnp.arange(rows) < cfg.vocab_size
      logits = jnp.where(real, logits, jnp.finfo(dtype).min)
    return common.constrain(logits, ("batch", "length", "vocab"))


class MrmHead(nn.Module):
  """Masked region modeling: transform, then Dense H->C (classes) or H->F (regress)."""
  config: object

  @nn.compact
  def __call__(self, x):
    """x [B, R, H] -> [B, R, C] (or [B, R, F] when model.mrm_target == 'regress')."""
    cfg = self.config
    h = common.dense(cfg, cfg.hidden_size, ("embed", "mlp"), ("mlp",), name="transform")(x)
    h = transform_output(common.layer_norm(cfg, "transform_norm")(common.gelu(h)))
    if cfg.mrm_target == "regress":
      out_dim, names = cfg.feature_dim, ("embed", "features")
    else:
      out_dim, names = cfg.num_region_classes, ("embed", "classes")
    return common.dense(cfg, out_dim, names, names[1:], name="decoder")(h)
