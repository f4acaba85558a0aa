"""The InterBERT model: embeddings -> single stream over [image ; text] -> split ->
text and image streams -> poolers, ITM, MSM and MRM heads (docs/design.md)."""
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from interbert_jax.model import common
from interbert_jax.model.embeddings import FEATURE_NORMS, RegionEmbeddings, TextEmbeddings
from interbert_jax.model.heads import MrmHead, MsmHead
from interbert_jax.model.transformer import Stack

STACKS = ("single_stream", "text_stream", "image_stream")


def fuse(text_pooled, image_pooled, fusion: str):
  """The fused pooled vector [B, D] the ITM head (and fine-tuning heads) read."""
  return text_pooled * image_pooled if fusion == "mul" else text_pooled + image_pooled


class InterBert(nn.Module):
  """InterBERT with its pretraining heads. `config` is a FrozenConfigDict of config.model."""
  config: object

  def setup(self):
    cfg = self.config
    self.embeddings = TextEmbeddings(cfg)
    self.region_embeddings = RegionEmbeddings(cfg)
    # A stack with 0 layers is never built, so it has no subtree.
    self.single_stream = Stack(cfg, cfg.single_stream) if cfg.single_stream.layers else None
    self.text_stream = Stack(cfg, cfg.text_stream) if cfg.text_stream.layers else None
    self.image_stream = Stack(cfg, cfg.image_stream) if cfg.image_stream.layers else None
    pooler_bias = float(cfg.get("pooler_bias_init", 0.0))   # absent in older config.json
    self.text_pooler = common.dense(cfg, cfg.pooler_dim, ("embed", "mlp"), ("mlp",), None,
                                    pooler_bias)
    self.image_pooler = common.dense(cfg, cfg.pooler_dim, ("embed", "mlp"), ("mlp",), None,
                                     pooler_bias)
    self.itm_dropout = common.Dropout(cfg.itm_dropout)
    self.itm_head = common.dense(cfg, 2, ("mlp", None), (None,), None)
    self.msm_head = MsmHead(cfg)
    self.mrm_head = MrmHead(cfg)

  def text_path(self, text_ids, text_mask, segment_ids=None, deterministic=True):
    """The text path alone: embeddings -> single stream over the text (no regions) ->
    text stream. int [B, T] -> text hidden [B, T, H] (compute dtype)."""
    cfg = self.config
    if segment_ids is None:
      segment_ids = jnp.full(text_ids.shape, 1 if cfg.modality_segments else 0, jnp.int32)
    text = self.embeddings(text_ids, segment_ids, deterministic)
    if self.single_stream is not None:
      text = self.single_stream(text, text_mask, deterministic)
    if self.text_stream is not None:
      text = self.text_stream(text, text_mask, deterministic)
    return text

  def __call__(self, text_ids, text_mask, region_features, region_locations, region_mask,
               segment_ids=None, deterministic=True, msm_positions=None):
    """Runs the model.

    Args:
      text_ids, text_mask: int [B, T]; [CLS] at position 0.
      region_features: [B, R, F] any float dtype; index 0 is the global image token.
      region_locations: float [B, R, 5].
      region_mask: int [B, R], 1 = real region (and the global token).
      segment_ids: int [B, T] or None. None means 0 for every text token, or 1 when
        `model.modality_segments` (then image tokens get segment 0, as in the paper figure).
      deterministic: False enables dropout (needs rngs={"dropout": key}).
      msm_positions: int [B, P] or None; when given the MSM head runs only at these text
        positions and `msm_logits` is [B, P, Vp] (Vp = common.vocab_rows: padding rows masked).

    Returns:
      float32 dict: text_hidden [B,T,H], image_hidden [B,R,H], text_pooled [B,D],
      image_pooled [B,D], itm_logits [B,2] (class 0 = matched), msm_logits [B,T|P,V],
      mrm_logits [B,R,C] ([B,R,F] when model.mrm_target == "regress").
    """
    cfg = self.config
    num_regions = region_features.shape[1]
    if segment_ids is None:
      segment_ids = jnp.full(text_ids.shape, 1 if cfg.modality_segments else 0, jnp.int32)
    text = self.embeddings(text_ids, segment_ids, deterministic)
    image_segment = None
    if cfg.modality_segments:
      image_segment = self.embeddings.segment(jnp.zeros(region_mask.shape, jnp.int32))
    image = self.region_embeddings(region_features, region_locations, deterministic,
                                   segment=image_segment)

    if self.single_stream is not None:
      joint = jnp.concatenate([image, text], axis=1)
      joint_mask = jnp.concatenate([region_mask, text_mask], axis=1)
      joint = self.single_stream(joint, joint_mask, deterministic)
      image, text = joint[:, :num_regions], joint[:, num_regions:]
    if self.text_stream is not None:
      text = self.text_stream(text, text_mask, deterministic)
    if self.image_stream is not None:
      image = self.image_stream(image, region_mask, deterministic)

    text_pooled = nn.relu(self.text_pooler(text[:, 0]))
    image_pooled = nn.relu(self.image_pooler(image[:, 0]))
    fused = fuse(text_pooled, image_pooled, cfg.fusion)
    itm_logits = self.itm_head(self.itm_dropout(fused, deterministic=deterministic))

    msm_hidden = text
    if msm_positions is not None:
      msm_hidden = jnp.take_along_axis(text, msm_positions[..., None].astype(jnp.int32),
                                       axis=1)
    msm_logits = self.msm_head(msm_hidden, self.embeddings.word_table())
    mrm_logits = self.mrm_head(image)

    out = dict(text_hidden=text, image_hidden=image, text_pooled=text_pooled,
               image_pooled=image_pooled, itm_logits=itm_logits, msm_logits=msm_logits,
               mrm_logits=mrm_logits)
    return {k: v.astype(jnp.float32) for k, v in out.items()}

  def msm_logits(self, hidden):
    """The MSM head alone (`model.apply(..., method="msm_logits")`, training/packed_msm.py):
    text-stream states [G, n, H] -> float32 logits [G, n, Vp], as `__call__` computes them."""
    return self.msm_head(hidden, self.embeddings.word_table()).astype(jnp.float32)


FUSIONS = ("mul", "sum")                         # allowed model.fusion
MRM_TARGETS = ("kl", "ce", "regress")            # allowed model.mrm_target
# allowed model.feature_norm: FEATURE_NORMS (model/embeddings.py)
CHOICES = {"fusion": FUSIONS, "mrm_target": MRM_TARGETS, "dtype": common.DTYPES,
           "param_dtype": common.DTYPES, "remat_policy": common.REMAT_POLICIES}
_POSITIVE = ("vocab_size", "hidden_size", "max_position_embeddings", "type_vocab_size",
             "feature_dim", "num_region_classes", "pooler_dim")
_RATES = ("embedding_dropout", "itm_dropout")
_REQUIRED = _POSITIVE + _RATES + tuple(CHOICES) + (
    "location_dim", "single_stream", "text_stream", "image_stream", "modality_segments",
    "layer_norm_eps", "initializer_range", "scan_layers")
_STACK_KEYS = ("layers", "heads", "mlp_dim", "hidden_dropout", "attention_dropout")


def _is_int(v):
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def model_config_errors(cfg, prefix="model.") -> list[str]:
  """Every problem of a config.model, each as `<prefix><key>=<value>: why` (empty = valid).

  The single home of the model's checks: `build_model` raises on them and the trainer's
  start-up validation (training/config_validation.py) reports them with the rest.
  """
  missing = [k for k in _REQUIRED if k not in cfg]
  missing += [f"{n}.{k}" for n in STACKS if n in cfg for k in _STACK_KEYS if k not in cfg[n]]
  if missing:
    return [f"{prefix}{k}: missing" for k in missing]
  errors = []

  def check(ok, key, value, why):
    if not ok:
      errors.append(f"{prefix}{key}={value!r}: {why}")

  for key, choices in CHOICES.items():
    check(cfg[key] in choices, key, cfg[key], f"must be one of {choices}")
  for key in _POSITIVE:
    check(_is_int(cfg[key]) and cfg[key] > 0, key, cfg[key], "must be an integer > 0")
  for key in _RATES:
    check(0.0 <= cfg[key] < 1.0, key, cfg[key], "must be in [0, 1)")
  pad = cfg.get("vocab_pad_multiple", 1)
  check(_is_int(pad) and pad >= 1, "vocab_pad_multiple", pad, "must be an integer >= 1")
  norm = cfg.get("feature_norm", "none")
  check(norm in FEATURE_NORMS, "feature_norm", norm, f"must be one of {FEATURE_NORMS}")
  bias = cfg.get("pooler_bias_init", 0.0)
  check(isinstance(bias, (int, float)) and abs(bias) < 10, "pooler_bias_init", bias,
        "must be a number in (-10, 10)")
  check(cfg.location_dim == 5, "location_dim", cfg.location_dim, "region locations are 5-d")
  check(cfg.type_vocab_size >= 2 or not cfg.modality_segments, "modality_segments",
        cfg.modality_segments, "needs model.type_vocab_size >= 2")
  for name in STACKS:
    st = cfg[name]
    check(_is_int(st.layers) and st.layers >= 0, f"{name}.layers", st.layers,
          "must be an integer >= 0")
    if st.layers:
      heads_ok = _is_int(st.heads) and st.heads > 0
      check(heads_ok and _is_int(cfg.hidden_size) and cfg.hidden_size % st.heads == 0,
            f"{name}.heads", st.heads, f"must divide model.hidden_size={cfg.hidden_size}")
      check(_is_int(st.mlp_dim) and st.mlp_dim > 0, f"{name}.mlp_dim", st.mlp_dim,
            "must be an integer > 0")
    for rate in ("hidden_dropout", "attention_dropout"):
      check(0.0 <= st[rate] < 1.0, f"{name}.{rate}", st[rate], "must be in [0, 1)")
  return errors


def validate_model_config(cfg):
  """Raises ValueError listing every problem of `model_config_errors`."""
  errors = model_config_errors(cfg)
  if errors:
    raise ValueError("invalid model config:\n  " + "\n  ".join(errors))


def build_model(model_config, module=None):
  """config.model (ConfigDict, dict or FrozenConfigDict) -> InterBert linen Module (or
  `module`, a subclass of InterBert with fine-tuning heads)."""
  if isinstance(model_config, dict):
    model_config = ml_collections.ConfigDict(model_config)
  validate_model_config(model_config)
  if not isinstance(model_config, ml_collections.FrozenConfigDict):
    # Linen module fields must be hashable.
    model_config = ml_collections.FrozenConfigDict(model_config)
  return (module or InterBert)(model_config)


def dummy_inputs(model_config, batch_size=1, text_len=2, num_regions=2):
  """Inputs of the right dtypes for `init`/`eval_shape` (param shapes do not depend on
  T or R). Returns a dict of model.apply keyword arguments."""
  return dict(
      text_ids=jnp.zeros((batch_size, text_len), jnp.int32),
      text_mask=jnp.ones((batch_size, text_len), jnp.int32),
      region_features=jnp.zeros((batch_size, num_regions, model_config.feature_dim),
                                jnp.float32),
      region_locations=jnp.zeros((batch_size, num_regions, 5), jnp.float32),
      region_mask=jnp.ones((batch_size, num_regions), jnp.int32))
