"""The frozen input standardisation of `model.feature_norm` (docs/plateau.md).

With `standardize` / `rms_standardize` (the default) the model reads region features as
(g - feature_mean) * feature_scale, g the features (over each region's RMS for
`rms_standardize`; model/embeddings.py). Both start as the identity. The trainer sets them
from the training data's statistics when the feature projection starts fresh, or comes
from a checkpoint that never had them set (`convert hf_bert` writes a new projection);
a projection trained by an earlier run keeps the statistics it was trained with, and one
trained with another `feature_norm` (the converted released model reads raw features:
`none`) is refused with the flag to pass. No gradient reaches them, so a run keeps them
as set, and checkpoints, exports and fine-tuning carry them with the weights.
"""
import jax
import numpy as np

from interbert_jax import errors

MEAN, SCALE = "feature_mean", "feature_scale"
MODULE, PROJECTION = "region_embeddings", "feature"
SCALE_FLOOR = 0.01   # std below this fraction of the mean std counts as this much


def scale_of(std) -> np.ndarray:
  """1 / std per channel, with channels that barely vary (std < SCALE_FLOOR x the mean
  std, e.g. always 0 in the training data) scaled as if they varied that much (at most
  1 / SCALE_FLOOR = 100x a typical channel's scale), so that an unseen value there stays
  finite. [F] float32."""
  std = np.asarray(std, np.float64)
  floor = max(SCALE_FLOOR * float(std.mean()), 1e-6)
  return (1.0 / np.maximum(std, floor)).astype(np.float32)


def applies(params) -> bool:
  """Whether the model has the standardisation (model.feature_norm=standardize)."""
  return MEAN in params.get(MODULE, {})


def is_identity(params) -> bool:
  """Whether feature_mean / feature_scale are still their initial identity (0, 1)."""
  emb = params[MODULE]
  return bool(np.all(np.asarray(jax.device_get(emb[MEAN])) == 0)
              and np.all(np.asarray(jax.device_get(emb[SCALE])) == 1))


def check_loaded(init_from: str, loaded_norm: str, norm: str) -> None:
  """A feature projection loaded from `init_from` (trained with `loaded_norm`) must read
  features the way it was trained: BadValueError naming the flag otherwise."""
  if loaded_norm != norm:
    raise errors.BadValueError(
        f"config.init_from={init_from}: its image feature projection was trained with "
        f"model.feature_norm={loaded_norm!r}, this run reads features with {norm!r}; pass "
        f"--config.model.feature_norm={loaded_norm} (docs/plateau.md)")


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
