"""The frozen input standardisation of `model.feature_norm=standardize` (docs/plateau.md).

The model reads region features as (f - feature_mean) * feature_scale
(model/embeddings.py). Both start as the identity; the trainer sets them from the training
data's per-channel statistics when, and only when, the feature projection itself starts
fresh: a projection loaded by `init_from` (a pretrained InterBERT, the converted released
model) keeps the statistics that came with it, or the identity if it was trained on raw
features. No gradient reaches them, so a run keeps them as set and checkpoints, exports
and fine-tuning carry them with the weights.
"""
import jax
import numpy as np

MEAN, SCALE = "feature_mean", "feature_scale"
MODULE, PROJECTION = "region_embeddings", "feature"
SCALE_FLOOR = 0.01   # std below this fraction of the mean std counts as this much


def scale_of(std) -> np.ndarray:
  """1 / std per channel, with channels that barely vary (std < SCALE_FLOOR x the mean
  std, e.g. always 0 in the training data) scaled as if they varied that much, so that
  an unseen value there stays finite and moderate. [F] float32."""
  std = np.asarray(std, np.float64)
  floor = max(SCALE_FLOOR * float(std.mean()), 1e-6)
  return (1.0 / np.maximum(std, floor)).astype(np.float32)


def applies(params) -> bool:
  """Whether the model has the standardisation (model.feature_norm=standardize)."""
  return MEAN in params.get(MODULE, {})


def projection(params):
  """The feature projection's kernel (compare by identity to tell a loaded one)."""
  return params[MODULE][PROJECTION]["kernel"]


def with_stats(params, stats: dict, mode: str):
  """params with feature_mean / feature_scale set from the data's statistics `stats`
  (pipeline.feature_stats) for model.feature_norm `mode`; each leaf keeps its sharding."""
  prefix = "rms_" if mode == "rms_standardize" else ""
  mean, std = stats[prefix + "mean"], stats[prefix + "std"]
  emb = dict(params[MODULE])
  for name, value in ((MEAN, np.asarray(mean, np.float32)), (SCALE, scale_of(std))):
    old = emb[name]
    if tuple(value.shape) != tuple(old.shape):
      raise ValueError(f"feature statistics have shape {value.shape}, the model's "
                       f"{MODULE}/{name} {tuple(old.shape)}: check config.model.feature_dim")
    value = value.astype(old.dtype)
    emb[name] = jax.make_array_from_callback(old.shape, old.sharding,
                                             lambda i, v=value: v[i])
  return {**params, MODULE: emb}
