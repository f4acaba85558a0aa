"""model.feature_norm (docs/plateau.md): the statistics prepare records, the frozen
standardisation the trainer sets, its folding into the released layout (standardize)
and the refusal of what the released layout cannot express (rms_standardize)."""
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs.pretrain import get_config
from interbert_jax.convert import reference
from interbert_jax.data import schema
from interbert_jax.model import interbert
from interbert_jax.training import feature_norm


def test_accumulator_matches_numpy_over_every_region():
  rng = np.random.default_rng(0)
  images = [np.exp(rng.normal(-1, 1, (n, 8))).astype(np.float16) for n in (3, 7, 1)]
  acc = schema.FeatureStatsAccumulator(8)
  for f in images:
    acc.add(f)
  mean, std = acc.result()
  every = np.concatenate(images).astype(np.float64)
  assert acc.count == 11
  np.testing.assert_allclose(mean, every.mean(0), rtol=1e-6)
  np.testing.assert_allclose(std, every.std(0), rtol=1e-5)
  rms = every / np.sqrt(np.mean(every ** 2, axis=1, keepdims=True))
  mean, std = acc.result("rms")
  np.testing.assert_allclose(mean, rms.mean(0), rtol=1e-6)
  np.testing.assert_allclose(std, rms.std(0), rtol=1e-5)
  np.testing.assert_allclose(schema.region_rms_normalised(np.zeros((2, 3))), 0.0)


def test_scale_floors_channels_that_never_vary():
  std = np.array([1.0, 2.0, 0.0, 1e-9], np.float32)
  scale = feature_norm.scale_of(std)
  floor = 0.01 * std.mean()
  np.testing.assert_allclose(scale, [1.0, 0.5, 1 / floor, 1 / floor], rtol=1e-6)
  assert np.all(np.isfinite(scale))


def _tiny_model(norm):
  m = ml_collections.ConfigDict(get_config("tiny").model.to_dict())
  m.feature_norm = norm
  return interbert.InterBert(ml_collections.FrozenConfigDict(m)), m


def test_standardize_is_the_identity_until_set_and_frozen_parameters_get_no_gradient():
  model, m = _tiny_model("standardize")
  raw_model, _ = _tiny_model("none")
  inputs = interbert.dummy_inputs(m, batch_size=2, text_len=4, num_regions=3)
  inputs["region_features"] = np.random.default_rng(0).normal(
      size=inputs["region_features"].shape).astype(np.float32)
  params = jax.tree.map(lambda x: x, model.init(jax.random.key(0), **inputs)["params"])
  params = jax.tree.map(lambda x: getattr(x, "value", x), params,
                        is_leaf=lambda x: hasattr(x, "value"))
  reg = params["region_embeddings"]
  np.testing.assert_array_equal(reg["feature_mean"], 0.0)
  np.testing.assert_array_equal(reg["feature_scale"], 1.0)
  raw = {k: v for k, v in params.items()}
  raw["region_embeddings"] = {k: v for k, v in reg.items()
                              if k not in ("feature_mean", "feature_scale")}
  out = model.apply({"params": params}, **inputs)
  out_raw = raw_model.apply({"params": raw}, **inputs)
  np.testing.assert_array_equal(out["itm_logits"], out_raw["itm_logits"])

  def loss(p):
    return jnp.sum(model.apply({"params": p}, **inputs)["itm_logits"] ** 2)
  grads = jax.grad(loss)(params)["region_embeddings"]
  assert not np.any(grads["feature_mean"]) and not np.any(grads["feature_scale"])
  assert np.any(grads["feature"]["kernel"])


def test_to_reference_folds_the_standardisation_into_the_projection():
  rng = np.random.default_rng(1)
  F, H = 6, 4
  reg = {"feature": {"kernel": rng.normal(size=(F, H)), "bias": rng.normal(size=H)},
         "feature_mean": rng.normal(size=F), "feature_scale": rng.uniform(0.5, 2, F)}
  folded = reference._fold_feature_norm(reg)     # pylint: disable=protected-access
  f = np.exp(rng.normal(size=(5, F)))
  want = ((f - reg["feature_mean"]) * reg["feature_scale"]) @ reg["feature"]["kernel"] \
      + reg["feature"]["bias"]
  np.testing.assert_allclose(f @ folded["kernel"] + folded["bias"], want, rtol=1e-5,
                             atol=1e-5)


def test_to_reference_refuses_the_rms_normalisation_it_cannot_express():
  from interbert_jax.convert.tensor_io import ConversionError
  m = ml_collections.ConfigDict(get_config("tiny").model.to_dict())
  m.feature_norm = "rms_standardize"                   # the default of small and base
  with pytest.raises(ConversionError, match="rms_standardize.*cannot express"):
    reference.params_to_reference({"embeddings": {}, "region_embeddings": {}}, m)


def test_prepared_split_records_its_statistics(tmp_path):
  rng = np.random.default_rng(2)
  feats = [np.exp(rng.normal(size=(n, 4))).astype(np.float32) for n in (2, 3)]
  images = [dict(image_id=f"i{k}", width=np.int32(100), height=np.int32(100),
                 num_boxes=np.int32(len(f)),
                 boxes=np.tile(np.array([[0, 0, 10, 10]], np.float32), (len(f), 1)),
                 features=f, object_ids=np.zeros(len(f), np.int32),
                 object_conf=np.ones(len(f), np.float32)) for k, f in enumerate(feats)]
  schema.write_split(str(tmp_path), "train", images, {"i0": [[5, 6]], "i1": [[7]]},
                     feature_dim=4, num_classes=3, class_target="object_ids", vocab_size=10,
                     lower_case=True, source_format="test")
  stats = schema.read_feature_stats(str(tmp_path), "train")
  mean, std, regions = stats["mean"], stats["std"], stats["regions"]
  assert set(stats) == {"mean", "std", "rms_mean", "rms_std", "regions"}
  every = np.concatenate(feats).astype(np.float16).astype(np.float64)
  assert regions == 5
  np.testing.assert_allclose(mean, every.mean(0), rtol=1e-5)
  np.testing.assert_allclose(std, every.std(0), rtol=1e-4)
  meta = schema.read_metadata(str(tmp_path))
  assert meta["splits"]["train"]["feature_stats"] == {"file": "feature_stats.npz",
                                                      "regions": 5}


def test_identity_statistics_are_recognised_and_a_mismatch_names_the_flag():
  params = {"region_embeddings": {"feature_mean": np.zeros(3, np.float32),
                                  "feature_scale": np.ones(3, np.float32)}}
  assert feature_norm.is_identity(params)           # e.g. what `convert hf_bert` writes
  params["region_embeddings"]["feature_scale"][1] = 0.5
  assert not feature_norm.is_identity(params)
  feature_norm.check_loaded("ckpt", "rms_standardize", "rms_standardize")
  from interbert_jax import errors
  with pytest.raises(errors.UserError, match="--config.model.feature_norm=none"):
    feature_norm.check_loaded("ckpt", "none", "rms_standardize")
