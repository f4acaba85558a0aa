"""Official InterBERT (PyTorch, black4321/InterBERT) state dict <-> InterBERT-JAX params.

Names and layouts: docs/reference_notes.md. Both directions are exact for float32 (only
transposes and reshapes), so reference -> ours -> reference is bitwise lossless.
"""
import numpy as np

from interbert_jax.convert import layout
from interbert_jax.convert.tensor_io import ConversionError, TensorSource
from interbert_jax.model import common

WORD = "bert.embeddings.word_embeddings.weight"
TIED_DECODER = "cls.predictions.decoder.weight"


def _stack_prefixes(m):
  """(our stack name, [torch prefix per layer]) in model order."""
  L, Kt, Kv = m.single_stream.layers, m.text_stream.layers, m.image_stream.layers
  return [("single_stream", [f"bert.encoder.layer.{i}" for i in range(L)]),
          ("text_stream", [f"bert.encoder.layer.{L + i}" for i in range(Kt)]),
          ("image_stream", [f"bert.encoder.v_layer.{i}" for i in range(Kv)])]


def _mrm_out_dim(m):
  return m.feature_dim if m.mrm_target == "regress" else m.num_region_classes


def reference_to_params(state_dict, m, origin="reference checkpoint"):
  """{torch name: array} -> unscanned params (nested dict of float32 numpy arrays).

  Args:
    state_dict: the reference's `InterBertForMultiModalPreTraining.state_dict()` as numpy.
    m: config.model describing the same architecture (model_configs.from_reference).
  Raises:
    ConversionError listing every missing, mis-shaped and unknown tensor, or an untied decoder.
  """
  src = TensorSource(state_dict, origin)
  H, V, D = m.hidden_size, m.vocab_size, m.pooler_dim
  word = src.take(WORD, (V, H))
  p = {
      "embeddings": {
          "word_embeddings": {"embedding": word},
          "position_embeddings": {"embedding": src.take(
              "bert.embeddings.position_embeddings.weight", (m.max_position_embeddings, H))},
          "token_type_embeddings": {"embedding": src.take(
              "bert.embeddings.token_type_embeddings.weight", (m.type_vocab_size, H))},
          "LayerNorm": layout.norm_from_torch(src, "bert.embeddings.LayerNorm", H),
      },
      "region_embeddings": {
          "feature": layout.dense_from_torch(src, "bert.v_embeddings.image_embeddings",
                                             m.feature_dim, H),
          "location": layout.dense_from_torch(
              src, "bert.v_embeddings.image_location_embeddings", 5, H),
          "LayerNorm": layout.norm_from_torch(src, "bert.v_embeddings.LayerNorm", H),
      },
  }
  for name, prefixes in _stack_prefixes(m):
    if prefixes:
      st = m[name]
      p[name] = {f"layer_{i}": layout.layer_from_torch(src, pre, H, st.heads, st.mlp_dim)
                 for i, pre in enumerate(prefixes)}
  p["text_pooler"] = layout.dense_from_torch(src, "bert.t_pooler.dense", H, D)
  p["image_pooler"] = layout.dense_from_torch(src, "bert.v_pooler.dense", H, D)
  p["itm_head"] = layout.dense_from_torch(src, "cls.bi_seq_relationship", D, 2)
  p["msm_head"] = {
      "transform": layout.dense_from_torch(src, "cls.predictions.transform.dense", H, H),
      "transform_norm": layout.norm_from_torch(src, "cls.predictions.transform.LayerNorm", H),
      "bias": src.take("cls.predictions.bias", (V,)),
  }
  p["mrm_head"] = {
      "transform": layout.dense_from_torch(src, "cls.imagePredictions.transform.dense", H, H),
      "transform_norm": layout.norm_from_torch(
          src, "cls.imagePredictions.transform.LayerNorm", H),
      "decoder": layout.dense_from_torch(src, "cls.imagePredictions.decoder", H,
                                         _mrm_out_dim(m)),
  }
  # The decoder is tied to the word embeddings; a state dict lists it twice.
  if src.has(TIED_DECODER):
    decoder = src.take(TIED_DECODER, (V, H))
    if decoder.shape == word.shape and not np.array_equal(decoder, word):
      raise ConversionError(f"{origin}: {TIED_DECODER} differs from {WORD}; the MSM decoder "
                            "is tied to the word embeddings here, so it cannot be converted")
  src.check()
  return layout.pad_vocab_params(p, common.vocab_rows(m))  # model.vocab_pad_multiple


def _fold_feature_norm(reg):
  """The feature projection with model.feature_norm's frozen standardisation folded in:
  W ((f - mean) * scale) + b = (scale * W) f + (b - (mean * scale) W), so the reference,
  which reads raw features, computes the same embedding."""
  dense = reg["feature"]
  if "feature_mean" not in reg:
    return dense
  kernel = np.asarray(dense["kernel"], np.float64)          # [F, H]
  mean = np.asarray(reg["feature_mean"], np.float64)
  scale = np.asarray(reg["feature_scale"], np.float64)
  bias = np.asarray(dense["bias"], np.float64) - (mean * scale) @ kernel
  return {"kernel": (scale[:, None] * kernel).astype(np.float32),
          "bias": bias.astype(np.float32)}


def params_to_reference(params, m):
  """Unscanned params -> {torch name: np.ndarray} in the reference's state-dict order.

  `cls.predictions.decoder.weight` is the same array object as the word embeddings, so a
  torch file stores one shared tensor (as the reference's own state dict does).
  """
  if m.get("feature_norm", "none") == "rms_standardize":
    raise ConversionError(
        "model.feature_norm=rms_standardize: this model divides each region's features by "
        "their root mean square before its projection, which the reference's linear "
        "image embedding cannot express; only feature_norm=standardize or none convert to "
        "the reference layout")
  out = {}
  word = layout.unpad_vocab(params["embeddings"]["word_embeddings"]["embedding"],
                            m.vocab_size)
  emb = params["embeddings"]
  out[WORD] = word
  out["bert.embeddings.position_embeddings.weight"] = np.asarray(
      emb["position_embeddings"]["embedding"])
  out["bert.embeddings.token_type_embeddings.weight"] = np.asarray(
      emb["token_type_embeddings"]["embedding"])
  out.update(layout.norm_to_torch(emb["LayerNorm"], "bert.embeddings.LayerNorm"))
  reg = params["region_embeddings"]
  out.update(layout.dense_to_torch(_fold_feature_norm(reg), "bert.v_embeddings.image_embeddings"))
  out.update(layout.dense_to_torch(reg["location"],
                                   "bert.v_embeddings.image_location_embeddings"))
  out.update(layout.norm_to_torch(reg["LayerNorm"], "bert.v_embeddings.LayerNorm"))
  for name, prefixes in _stack_prefixes(m):
    for i, pre in enumerate(prefixes):
      out.update(layout.layer_to_torch(params[name][f"layer_{i}"], pre))
  out.update(layout.dense_to_torch(params["text_pooler"], "bert.t_pooler.dense"))
  out.update(layout.dense_to_torch(params["image_pooler"], "bert.v_pooler.dense"))
  msm = params["msm_head"]
  out["cls.predictions.bias"] = layout.unpad_vocab(msm["bias"], m.vocab_size)
  out.update(layout.dense_to_torch(msm["transform"], "cls.predictions.transform.dense"))
  out.update(layout.norm_to_torch(msm["transform_norm"], "cls.predictions.transform.LayerNorm"))
  out[TIED_DECODER] = word
  out.update(layout.dense_to_torch(params["itm_head"], "cls.bi_seq_relationship"))
  mrm = params["mrm_head"]
  out.update(layout.dense_to_torch(mrm["transform"], "cls.imagePredictions.transform.dense"))
  out.update(layout.norm_to_torch(mrm["transform_norm"],
                                  "cls.imagePredictions.transform.LayerNorm"))
  out.update(layout.dense_to_torch(mrm["decoder"], "cls.imagePredictions.decoder"))
  return out
