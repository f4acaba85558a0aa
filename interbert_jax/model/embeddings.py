"""Text (BERT) and region embeddings of InterBERT (docs/reference_notes.md, Model facts 1)."""
import jax
import jax.numpy as jnp
from flax import linen as nn

from interbert_jax.model import common


class TextEmbeddings(nn.Module):
  """BERT embeddings: word + position (from 0 at [CLS]) + segment, LayerNorm, dropout.

  Defined with `setup` so the model can reuse the word table (tied MSM decoder) and the
  segment table (image tokens under `model.modality_segments`).
  """
  config: object  # FrozenConfigDict of config.model.

  def setup(self):
    cfg = self.config
    dtype, pdtype = common.to_dtype(cfg.dtype), common.to_dtype(cfg.param_dtype)
    init = lambda names: common.kernel_init(cfg.initializer_range, names)
    self.word_embeddings = nn.Embed(
        common.vocab_rows(cfg), cfg.hidden_size, dtype=dtype, param_dtype=pdtype,
        embedding_init=init(("vocab", "embed")))
    self.position_embeddings = nn.Embed(
        cfg.max_position_embeddings, cfg.hidden_size, dtype=dtype, param_dtype=pdtype,
        embedding_init=init((None, "embed")))
    self.token_type_embeddings = nn.Embed(
        cfg.type_vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=pdtype,
        embedding_init=init((None, "embed")))
    self.LayerNorm = common.layer_norm(cfg, name=None)
    self.dropout = common.Dropout(cfg.embedding_dropout)

  def __call__(self, text_ids, segment_ids, deterministic):
    """text_ids, segment_ids: int [B, T] -> [B, T, H] in the compute dtype."""
    length = text_ids.shape[1]
    if length > self.config.max_position_embeddings:
      raise ValueError(f"text length {length} exceeds model.max_position_embeddings="
                       f"{self.config.max_position_embeddings}")
    x = (self.word_embeddings(text_ids)
         + self.position_embeddings(jnp.arange(length))[None]
         + self.token_type_embeddings(segment_ids))
    x = self.LayerNorm(x)
    x = self.dropout(x, deterministic=deterministic)
    return common.constrain(x, common.HIDDEN_AXES)

  def segment(self, segment_ids):
    """Segment embeddings [.., H] (image tokens when model.modality_segments)."""
    return self.token_type_embeddings(segment_ids)

  def word_table(self):
    """The word embedding matrix [Vp, H] (float32 params; Vp = common.vocab_rows) for the
    tied MSM decoder."""
    return self.word_embeddings.embedding


FEATURE_NORMS = ("standardize", "rms_standardize", "none")


class RegionEmbeddings(nn.Module):
  """LayerNorm(Dense_F->H(feature') + Dense_5->H(location) [+ segment]), dropout.

  feature' (model.feature_norm, docs/plateau.md):
    "rms_standardize" (the default): g = feature / RMS(feature) per region, then
                      (g - feature_mean) * feature_scale;
    "standardize":    (feature - feature_mean) * feature_scale;
    "none":           the raw feature (the released model; no such parameters).
  feature_mean / feature_scale [F] are the training split's statistics, set by the trainer
  when the projection starts fresh (training/feature_norm.py) and never trained (no
  gradient reaches them, so Adam and weight decay leave them as set). They start as the
  identity (0, 1).

  The released model gives image tokens no segment embedding; with
  `model.modality_segments` the caller passes `segment` (token-type 0) and it is added
  before the LayerNorm, like BERT's sum of embeddings.
  """
  config: object

  @nn.compact
  def __call__(self, features, locations, deterministic, segment=None):
    """features [B, R, F], locations [B, R, 5] -> [B, R, H] in the compute dtype."""
    cfg = self.config
    dtype = common.to_dtype(cfg.dtype)
    norm = cfg.get("feature_norm", "none")    # absent in older config.json
    if norm != "none":
      shape, pdtype = (features.shape[-1],), common.to_dtype(cfg.param_dtype)
      mean = self.param("feature_mean", common.zeros_init(("features",)), shape, pdtype)
      scale = self.param("feature_scale", common.ones_init(("features",)), shape, pdtype)
      mean, scale = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(scale)
      f = features.astype(jnp.float32)
      if norm == "rms_standardize":   # each region over its RMS: no per-image scale left
        rms = jnp.sqrt(jnp.mean(jnp.square(f), axis=-1, keepdims=True))
        f = f / jnp.maximum(rms, 1e-6)
      features = (f - mean) * scale
    x = common.dense(cfg, cfg.hidden_size, ("features", "embed"), ("embed",),
                     name="feature")(features.astype(dtype))
    x = x + common.dense(cfg, cfg.hidden_size, (None, "embed"), ("embed",),
                         name="location")(locations.astype(dtype))
    if segment is not None:
      x = x + segment
    x = common.layer_norm(cfg, name="LayerNorm")(x)
    x = common.Dropout(cfg.embedding_dropout)(x, deterministic=deterministic)
    return common.constrain(x, common.HIDDEN_AXES)
