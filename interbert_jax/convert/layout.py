"""PyTorch BERT-layer names and layouts <-> the InterBERT parameter tree (docs/design.md).

PyTorch Linear weights are [out, in]; ours are kernels [in, out], with the attention
projections split per head: query/key/value [H, heads, head_dim] (bias [heads, head_dim]) and
the output projection [heads, head_dim, H]. Heads are contiguous blocks of head_dim in the
PyTorch layout (`view(..., heads, head_dim)`), which is exactly a C-order reshape.
"""
import numpy as np


def pad_vocab(arr, rows):
  """[V, ...] -> [rows, ...] with zero rows appended (model.vocab_pad_multiple padding)."""
  arr = np.asarray(arr)
  if rows == arr.shape[0]:
    return arr
  return np.concatenate([arr, np.zeros((rows - arr.shape[0],) + arr.shape[1:], arr.dtype)])


def pad_vocab_params(p, rows):
  """A converted tree's word table [V, H] and MSM bias [V] (if any) padded to `rows` in place
  (common.vocab_rows; already-padded leaves are left as they are)."""
  emb = p["embeddings"]["word_embeddings"]
  emb["embedding"] = pad_vocab(emb["embedding"], rows)
  if "msm_head" in p:
    p["msm_head"]["bias"] = pad_vocab(p["msm_head"]["bias"], rows)
  return p


def unpad_vocab(arr, vocab):
  """[Vp, ...] -> its first `vocab` rows: what a checkpoint without padding holds."""
  return np.ascontiguousarray(np.asarray(arr)[:vocab])


def dense_from_torch(src, prefix, in_dim, out_dim):
  """`{prefix}.weight [out,in]`, `.bias [out]` -> {"kernel": [in,out], "bias": [out]}."""
  return {"kernel": src.take(f"{prefix}.weight", (out_dim, in_dim)).T.copy(),
          "bias": src.take(f"{prefix}.bias", (out_dim,))}


def dense_to_torch(p, prefix):
  return {f"{prefix}.weight": np.ascontiguousarray(np.asarray(p["kernel"]).T),
          f"{prefix}.bias": np.asarray(p["bias"])}


def norm_from_torch(src, prefix, dim):
  """BertLayerNorm weight/bias -> flax LayerNorm scale/bias."""
  return {"scale": src.take(f"{prefix}.weight", (dim,)),
          "bias": src.take(f"{prefix}.bias", (dim,))}


def norm_to_torch(p, prefix):
  return {f"{prefix}.weight": np.asarray(p["scale"]), f"{prefix}.bias": np.asarray(p["bias"])}


def layer_from_torch(src, prefix, hidden, heads, mlp_dim):
  """One BERT layer `{prefix}.attention.self.query.weight`, ... -> our layer_{i} subtree."""
  head_dim = hidden // heads
  attention = {}
  for name in ("query", "key", "value"):
    w = src.take(f"{prefix}.attention.self.{name}.weight", (hidden, hidden))
    b = src.take(f"{prefix}.attention.self.{name}.bias", (hidden,))
    attention[name] = {"kernel": w.T.reshape(hidden, heads, head_dim).copy(),
                       "bias": b.reshape(heads, head_dim)}
  w = src.take(f"{prefix}.attention.output.dense.weight", (hidden, hidden))
  attention["out"] = {"kernel": w.T.reshape(heads, head_dim, hidden).copy(),
                      "bias": src.take(f"{prefix}.attention.output.dense.bias", (hidden,))}
  return {
      "attention": attention,
      "attention_norm": norm_from_torch(src, f"{prefix}.attention.output.LayerNorm", hidden),
      "mlp": {"wi": dense_from_torch(src, f"{prefix}.intermediate.dense", hidden, mlp_dim),
              "wo": dense_from_torch(src, f"{prefix}.output.dense", mlp_dim, hidden)},
      "output_norm": norm_from_torch(src, f"{prefix}.output.LayerNorm", hidden),
  }


def layer_to_torch(p, prefix):
  """Our layer_{i} subtree -> {torch name: [out, in] array} (inverse of layer_from_torch)."""
  out = {}
  att = p["attention"]
  for name in ("query", "key", "value"):
    k = np.asarray(att[name]["kernel"])
    hidden = k.shape[0]
    out[f"{prefix}.attention.self.{name}.weight"] = np.ascontiguousarray(
        k.reshape(hidden, -1).T)
    out[f"{prefix}.attention.self.{name}.bias"] = np.asarray(att[name]["bias"]).reshape(-1)
  k = np.asarray(att["out"]["kernel"])
  out[f"{prefix}.attention.output.dense.weight"] = np.ascontiguousarray(
      k.reshape(-1, k.shape[-1]).T)
  out[f"{prefix}.attention.output.dense.bias"] = np.asarray(att["out"]["bias"])
  out.update(norm_to_torch(p["attention_norm"], f"{prefix}.attention.output.LayerNorm"))
  out.update(dense_to_torch(p["mlp"]["wi"], f"{prefix}.intermediate.dense"))
  out.update(dense_to_torch(p["mlp"]["wo"], f"{prefix}.output.dense"))
  out.update(norm_to_torch(p["output_norm"], f"{prefix}.output.LayerNorm"))
  return out


def check_tree(params, expected, origin):
  """Compares a converted param tree with the model's (shapes from jax.eval_shape).

  Raises ConversionError listing paths missing, extra or of the wrong shape. This guards the
  converter against drift from the model's parameter tree.
  """
  from interbert_jax.convert.tensor_io import ConversionError  # pylint: disable=g-import-not-at-top
  got, want = dict(_flatten(params)), dict(_flatten(expected))
  problems = [f"missing {k} {want[k]}" for k in sorted(set(want) - set(got))]
  problems += [f"extra {k} {got[k]}" for k in sorted(set(got) - set(want))]
  problems += [f"{k}: {got[k]} != model's {want[k]}" for k in sorted(set(got) & set(want))
               if got[k] != want[k]]
  if problems:
    raise ConversionError(f"{origin}: converted tree does not match the model's parameter "
                          "tree:\n  " + "\n  ".join(problems))


def _flatten(tree, prefix=""):
  for k, v in tree.items():
    path = f"{prefix}/{k}" if prefix else k
    if isinstance(v, dict) or hasattr(v, "items"):
      yield from _flatten(v, path)
    else:
      yield path, tuple(v.shape)
