"""Hugging Face BERT checkpoint -> initial InterBERT params (docs/reference_notes.md, "Initialisation from BERT").

BERT's embeddings -> ours; layers 0..L-1 -> single stream; L..L+K_t-1 -> text stream; its MLM
head (`cls.predictions.*`, when the checkpoint has one) -> MSM head. All other parameters
(region embeddings, image stream, poolers, ITM and MRM heads) keep the model's own init.
"""
import numpy as np

from interbert_jax.convert import layout
from interbert_jax.convert.tensor_io import ConversionError, TensorSource
from interbert_jax.model import common

_LAYER_PREFIX = "encoder.layer."


def normalise_names(state_dict):
  """Drops a `bert.` prefix from the encoder's names (BertForPreTraining/MaskedLM keep
  `cls.*` top level) and renames old TF-style LayerNorm `gamma`/`beta` to `weight`/`bias`."""
  out = {}
  for name, v in state_dict.items():
    if name.startswith("bert."):
      name = name[len("bert."):]
    if name.endswith(".gamma"):
      name = name[:-len("gamma")] + "weight"
    elif name.endswith(".beta"):
      name = name[:-len("beta")] + "bias"
    out[name] = v
  return out


def _ignorable(used_layers):
  """Names a BERT checkpoint may have that InterBERT does not use."""
  def ignorable(name):
    if name.endswith("position_ids") or name.startswith(("pooler.", "cls.seq_relationship.")):
      return True
    if name == "cls.predictions.decoder.bias":  # HF ties it to cls.predictions.bias.
      return True
    if name.startswith(_LAYER_PREFIX):
      return int(name[len(_LAYER_PREFIX):].split(".")[0]) >= used_layers
    return False
  return ignorable


def hf_bert_to_params(state_dict, m, init_params, origin="BERT checkpoint"):
  """BERT weights onto freshly initialised unscanned params.

  Args:
    state_dict: {name: array} of a BertModel / BertForPreTraining / BertForMaskedLM.
    m: config.model (model_configs.from_hf_bert): its single_stream.layers = L and
      text_stream.layers = K_t choose which BERT layers go where.
    init_params: unscanned params of `build_model(m).init` (numpy or jax arrays), or {}
      to get back only the converted subtrees.
  Returns:
    (params, report): params a nested dict of numpy arrays; report a dict with the lists
    `converted` (our top-level subtrees taken from BERT) and `ignored` (BERT names unused).
  Raises:
    ConversionError listing missing, mis-shaped and unknown tensors.
  """
  src = TensorSource(normalise_names(state_dict), origin)
  H, V = m.hidden_size, m.vocab_size
  p = _to_numpy(init_params)
  word = src.take("embeddings.word_embeddings.weight", (V, H))
  p["embeddings"] = {
      "word_embeddings": {"embedding": word},
      "position_embeddings": {"embedding": src.take(
          "embeddings.position_embeddings.weight", (m.max_position_embeddings, H))},
      "token_type_embeddings": {"embedding": src.take(
          "embeddings.token_type_embeddings.weight", (m.type_vocab_size, H))},
      "LayerNorm": layout.norm_from_torch(src, "embeddings.LayerNorm", H),
  }
  converted = ["embeddings"]
  L, Kt = m.single_stream.layers, m.text_stream.layers
  for name, offset, count in (("single_stream", 0, L), ("text_stream", L, Kt)):
    if count:
      st = m[name]
      p[name] = {f"layer_{i}": layout.layer_from_torch(
          src, f"{_LAYER_PREFIX}{offset + i}", H, st.heads, st.mlp_dim) for i in range(count)}
      converted.append(name)
  if src.has("cls.predictions.transform.dense.weight"):
    p["msm_head"] = {
        "transform": layout.dense_from_torch(src, "cls.predictions.transform.dense", H, H),
        "transform_norm": layout.norm_from_torch(src, "cls.predictions.transform.LayerNorm", H),
        "bias": src.take("cls.predictions.bias", (V,)),
    }
    converted.append("msm_head")
    if src.has("cls.predictions.decoder.weight"):
      decoder = src.take("cls.predictions.decoder.weight", (V, H))
      if decoder.shape == word.shape and not np.array_equal(decoder, word):
        raise ConversionError(f"{origin}: cls.predictions.decoder.weight differs from the "
                              "word embeddings; InterBERT ties them")
  ignored = src.check(_ignorable(L + Kt))
  layout.pad_vocab_params(p, common.vocab_rows(m))   # model.vocab_pad_multiple: zero rows
  return p, {"converted": converted, "ignored": ignored}


def _to_numpy(tree):
  if hasattr(tree, "items"):
    return {k: _to_numpy(v) for k, v in tree.items()}
  return np.asarray(tree)
