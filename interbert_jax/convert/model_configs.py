"""Model configs of converted checkpoints, derived from the reference or BERT config JSON.

Architecture comes from the source config; everything else (dtypes, scan, remat, MRM target,
feature sizes the source does not know) from a variant of `configs/pretrain.py`.
"""
import importlib.util
import os

import ml_collections

from configs import pretrain
from interbert_jax.convert.tensor_io import ConversionError

# Defaults of the reference's BertConfig for keys its released JSON leaves out.
REFERENCE_DEFAULTS = {"bi_hidden_size": 1024, "fusion_method": "mul", "predict_feature": False,
                      "v_hidden_act": "gelu"}


def variant_model_config(variant="base", config_file=None):
  """config.model of `<variant>` in the shipped `configs.pretrain`, or in `config_file`
  (a file with the same `get_config(variant)`)."""
  module = pretrain
  if config_file:
    if not os.path.exists(config_file):
      raise ConversionError(f"--config_file={config_file}: file not found")
    spec = importlib.util.spec_from_file_location("_interbert_user_config", config_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  try:
    return module.get_config(variant).model
  except ValueError as e:
    raise ConversionError(f"--config_variant={variant!r}: {e}") from e


def _require(cfg, keys, origin):
  missing = [k for k in keys if k not in cfg]
  if missing:
    raise ConversionError(f"{origin}: config lacks {', '.join(missing)}")


def _check_gelu(cfg, keys, origin):
  for k in keys:
    if cfg.get(k, "gelu") != "gelu":
      raise ConversionError(f"{origin}: {k}={cfg[k]!r}; only 'gelu' (erf) is supported")


def _stack(layers, heads, mlp_dim, hidden_dropout, attention_dropout):
  return ml_collections.ConfigDict(dict(layers=int(layers), heads=int(heads),
                                        mlp_dim=int(mlp_dim), hidden_dropout=hidden_dropout,
                                        attention_dropout=attention_dropout))


def from_reference(ref, base, origin="reference config"):
  """Reference BertConfig dict (bert_base_6layer_interbert.json keys) -> config.model."""
  ref = {**REFERENCE_DEFAULTS, **ref}
  _require(ref, ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "intermediate_size", "max_position_embeddings", "type_vocab_size",
                 "t_num_hidden_layers", "v_feature_size", "v_target_size", "v_hidden_size",
                 "v_num_hidden_layers", "v_num_attention_heads", "v_intermediate_size"), origin)
  _check_gelu(ref, ("hidden_act", "v_hidden_act"), origin)
  if ref["v_hidden_size"] != ref["hidden_size"]:
    raise ConversionError(f"{origin}: v_hidden_size={ref['v_hidden_size']} != hidden_size="
                          f"{ref['hidden_size']}; the image stream reads the single stream "
                          "directly, so they must be equal")
  if ref["fusion_method"] not in ("mul", "sum"):
    raise ConversionError(f"{origin}: fusion_method={ref['fusion_method']!r}: mul | sum")
  m = ml_collections.ConfigDict(base.to_dict())
  hd, ad = ref.get("hidden_dropout_prob", 0.1), ref.get("attention_probs_dropout_prob", 0.1)
  m.vocab_size = int(ref["vocab_size"])
  m.hidden_size = int(ref["hidden_size"])
  m.max_position_embeddings = int(ref["max_position_embeddings"])
  m.type_vocab_size = int(ref["type_vocab_size"])
  m.feature_dim = int(ref["v_feature_size"])
  m.pooler_dim = int(ref["bi_hidden_size"])
  m.single_stream = _stack(ref["num_hidden_layers"], ref["num_attention_heads"],
                           ref["intermediate_size"], hd, ad)
  m.text_stream = _stack(ref["t_num_hidden_layers"], ref["num_attention_heads"],
                         ref["intermediate_size"], hd, ad)
  m.image_stream = _stack(ref["v_num_hidden_layers"], ref["v_num_attention_heads"],
                          ref["v_intermediate_size"], ref.get("v_hidden_dropout_prob", 0.1),
                          ref.get("v_attention_probs_dropout_prob", 0.1))
  m.embedding_dropout = hd
  m.itm_dropout = 0.1                      # hard-coded in the reference's heads.
  m.fusion = ref["fusion_method"]
  m.modality_segments = False
  m.feature_norm = "none"                  # the released model reads raw features.
  m.layer_norm_eps = 1e-12                 # hard-coded in the reference's BertLayerNorm.
  m.initializer_range = float(ref.get("initializer_range", 0.02))
  if ref["predict_feature"]:
    if ref["v_target_size"] != ref["v_feature_size"]:
      raise ConversionError(f"{origin}: predict_feature needs v_target_size == v_feature_size")
    m.mrm_target = "regress"
  else:
    m.num_region_classes = int(ref["v_target_size"])
    if m.mrm_target == "regress":
      m.mrm_target = "kl"
  return m


def to_reference(m):
  """config.model -> the reference's BertConfig dict (for a config.json beside a .bin)."""
  if m.modality_segments:
    raise ConversionError("model.modality_segments=True has no counterpart in the reference")
  return {
      "vocab_size": m.vocab_size, "hidden_size": m.hidden_size,
      "max_position_embeddings": m.max_position_embeddings,
      "type_vocab_size": m.type_vocab_size, "hidden_act": "gelu", "v_hidden_act": "gelu",
      "num_hidden_layers": m.single_stream.layers,
      "num_attention_heads": m.single_stream.heads,
      "intermediate_size": m.single_stream.mlp_dim,
      "hidden_dropout_prob": m.single_stream.hidden_dropout,
      "attention_probs_dropout_prob": m.single_stream.attention_dropout,
      "t_num_hidden_layers": m.text_stream.layers,
      "v_hidden_size": m.hidden_size, "v_num_hidden_layers": m.image_stream.layers,
      "v_num_attention_heads": m.image_stream.heads,
      "v_intermediate_size": m.image_stream.mlp_dim,
      "v_hidden_dropout_prob": m.image_stream.hidden_dropout,
      "v_attention_probs_dropout_prob": m.image_stream.attention_dropout,
      "v_feature_size": m.feature_dim,
      "v_target_size": m.feature_dim if m.mrm_target == "regress" else m.num_region_classes,
      "predict_feature": m.mrm_target == "regress",
      "bi_hidden_size": m.pooler_dim, "fusion_method": m.fusion,
      "initializer_range": m.initializer_range, "v_initializer_range": m.initializer_range,
  }


def from_hf_bert(bert, base, single_stream_layers, text_layers, image_layers=None,
                 origin="BERT config"):
  """HF BertConfig dict + layer split -> config.model.

  Sizes (hidden, heads, FFN, vocab, positions, type vocab, eps, dropouts) come from BERT;
  the image stream keeps the variant's head count when it divides the hidden size (BERT's
  otherwise) and uses BERT's FFN width, like the released model.
  """
  _require(bert, ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "intermediate_size", "max_position_embeddings"), origin)
  _check_gelu(bert, ("hidden_act",), origin)
  if bert.get("position_embedding_type", "absolute") != "absolute":
    raise ConversionError(f"{origin}: position_embedding_type="
                          f"{bert['position_embedding_type']!r}; only 'absolute' is supported")
  n = int(bert["num_hidden_layers"])
  if single_stream_layers < 0 or text_layers < 0:
    raise ConversionError("--single_stream_layers and --text_layers must be >= 0")
  if single_stream_layers + text_layers > n:
    raise ConversionError(f"{origin}: --single_stream_layers={single_stream_layers} + "
                          f"--text_layers={text_layers} > the checkpoint's {n} layers")
  m = ml_collections.ConfigDict(base.to_dict())
  hidden, heads = int(bert["hidden_size"]), int(bert["num_attention_heads"])
  hd = bert.get("hidden_dropout_prob", 0.1)
  ad = bert.get("attention_probs_dropout_prob", 0.1)
  m.vocab_size = int(bert["vocab_size"])
  m.hidden_size = hidden
  m.max_position_embeddings = int(bert["max_position_embeddings"])
  m.type_vocab_size = int(bert.get("type_vocab_size", 2))
  m.layer_norm_eps = float(bert.get("layer_norm_eps", 1e-12))
  m.initializer_range = float(bert.get("initializer_range", 0.02))
  m.embedding_dropout = hd
  mlp = int(bert["intermediate_size"])
  m.single_stream = _stack(single_stream_layers, heads, mlp, hd, ad)
  m.text_stream = _stack(text_layers, heads, mlp, hd, ad)
  image_heads = base.image_stream.heads if hidden % base.image_stream.heads == 0 else heads
  m.image_stream = _stack(base.image_stream.layers if image_layers is None else image_layers,
                          image_heads, mlp, base.image_stream.hidden_dropout, ad)
  return m
