"""Optimizer: schedule, per-group learning rates, decay masks and the BertAdam quirks."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import interbert_jax
from configs.pretrain import get_config
from interbert_jax.model.interbert import dummy_inputs
from interbert_jax.parallel import partitioning
from interbert_jax.training import optimizer as optimizer_lib


def _config(**optimizer):
  config = get_config("tiny")
  config.total_steps = 100
  config.optimizer.update(dict(warmup_fraction=0.0, weight_decay=0.0, grad_clip_norm=0.0))
  config.optimizer.update(optimizer)
  return config


def _toy_params():
  """A tree with the model's top-level names: BERT-initialised and new weights."""
  return {
      "embeddings": {"word_embeddings": {"embedding": jnp.full((4, 3), 1.0)},
                     "LayerNorm": {"scale": jnp.ones(3), "bias": jnp.zeros(3)}},
      "single_stream": {"layer_0": {"mlp": {"wi": {"kernel": jnp.full((3, 2), 1.0),
                                                   "bias": jnp.full(2, 1.0)}}}},
      "image_stream": {"layer_0": {"mlp": {"wi": {"kernel": jnp.full((3, 2), 1.0),
                                                  "bias": jnp.full(2, 1.0)}}}},
      "msm_head": {"bias": jnp.full(4, 1.0)},
      "itm_head": {"kernel": jnp.full((2, 2), 1.0), "bias": jnp.full(2, 1.0)},
  }


def test_schedule_warmup_then_linear_decay():
  config = _config(learning_rate=1e-3, warmup_fraction=0.1)
  lr = optimizer_lib.learning_rate_schedule(config)
  np.testing.assert_allclose([float(lr(s)) for s in (0, 5, 10, 55, 100)],
                             [0.0, 5e-4, 1e-3, 5e-4, 0.0], atol=1e-9)


def test_labels_and_decay_mask_on_the_real_tree():
  config = get_config("tiny")
  config.model.feature_norm = "rms_standardize"        # the frozen statistics too
  model = interbert_jax.build_model(config.model)
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), **dummy_inputs(config.model)))
  params = partitioning.unbox(boxed)["params"]
  labels = optimizer_lib.param_labels(params)
  assert labels["embeddings"]["word_embeddings"]["embedding"] == "bert"
  assert labels["single_stream"]["layer_0"]["attention"]["query"]["kernel"] == "bert"
  assert labels["text_stream"]["layer_1"]["mlp"]["wo"]["bias"] == "bert"
  assert labels["msm_head"]["bias"] == "bert"
  assert labels["image_stream"]["layer_0"]["mlp"]["wi"]["kernel"] == "new"
  assert labels["region_embeddings"]["feature"]["kernel"] == "new"
  assert labels["mrm_head"]["decoder"]["kernel"] == "new"
  assert labels["itm_head"]["kernel"] == "new"
  mask = optimizer_lib.decay_mask(params)
  assert mask["embeddings"]["word_embeddings"]["embedding"]
  assert mask["single_stream"]["layer_0"]["mlp"]["wi"]["kernel"]
  assert not mask["single_stream"]["layer_0"]["mlp"]["wi"]["bias"]
  assert not mask["single_stream"]["layer_0"]["attention_norm"]["scale"]
  assert not mask["embeddings"]["LayerNorm"]["bias"]
  assert not mask["msm_head"]["bias"]
  quirk = optimizer_lib.decay_mask(params, reference_decay_mask=True)
  # The quirk flips every leaf but the frozen feature statistics (model.feature_norm),
  # which are decayed under neither rule.
  frozen = params["region_embeddings"]
  for name in ("feature_mean", "feature_scale"):
    assert name in frozen and not mask["region_embeddings"][name]
    assert not quirk["region_embeddings"][name]
  flipped = jax.tree.map(lambda a, b: a != b, mask, quirk)
  flipped["region_embeddings"] = {k: v for k, v in flipped["region_embeddings"].items()
                                  if k not in ("feature_mean", "feature_scale")}
  assert jax.tree.all(flipped)


def _one_update(config, grads=None, params=None, steps=1):
  params = params if params is not None else _toy_params()
  grads = grads if grads is not None else jax.tree.map(jnp.ones_like, params)
  opt = optimizer_lib.build_optimizer(config)
  state = opt.tx.init(params)
  for _ in range(steps):
    updates, state = opt.tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params


def test_bert_weights_get_the_lr_multiplier():
  config = _config(learning_rate=1e-2, bert_lr_multiplier=0.1)
  new = _one_update(config)
  # Adam's first bias-corrected step moves every weight by lr * g/|g| = lr.
  np.testing.assert_allclose(new["image_stream"]["layer_0"]["mlp"]["wi"]["kernel"], 1 - 1e-2, rtol=1e-5)
  np.testing.assert_allclose(new["itm_head"]["bias"], 1 - 1e-2, rtol=1e-5)
  np.testing.assert_allclose(new["single_stream"]["layer_0"]["mlp"]["wi"]["kernel"], 1 - 1e-3, rtol=1e-5)
  np.testing.assert_allclose(new["embeddings"]["word_embeddings"]["embedding"], 1 - 1e-3, rtol=1e-5)
  np.testing.assert_allclose(new["msm_head"]["bias"], 1 - 1e-3, rtol=1e-5)


@pytest.mark.parametrize("reference", [False, True])
def test_weight_decay_mask(reference):
  config = _config(learning_rate=0.1, bert_lr_multiplier=1.0, weight_decay=0.5,
                   reference_decay_mask=reference)
  params = _toy_params()
  zero = jax.tree.map(jnp.zeros_like, params)
  new = _one_update(config, grads=zero, params=params)
  kernel = new["image_stream"]["layer_0"]["mlp"]["wi"]["kernel"]
  bias = new["image_stream"]["layer_0"]["mlp"]["wi"]["bias"]
  decayed, kept = (bias, kernel) if reference else (kernel, bias)
  np.testing.assert_allclose(decayed, 1 - 0.1 * 0.5, rtol=1e-6)   # p - lr * wd * p
  np.testing.assert_allclose(kept, 1.0, rtol=1e-6)


def test_no_bias_correction_matches_bertadam_formula():
  b1, b2, eps, lr = 0.9, 0.999, 1e-6, 1e-2
  config = _config(learning_rate=lr, bert_lr_multiplier=1.0, bias_correction=False, eps=eps)
  params = {"itm_head": {"kernel": jnp.array([1.0, 1.0])}}
  g = jnp.array([0.5, -2.0])
  new = _one_update(config, grads={"itm_head": {"kernel": g}}, params=params, steps=2)
  m, v, p = np.zeros(2), np.zeros(2), np.ones(2)
  for step in range(2):
    m = b1 * m + (1 - b1) * np.asarray(g)
    v = b2 * v + (1 - b2) * np.asarray(g) ** 2
    p = p - lr * (1 - step / 100) * m / (np.sqrt(v) + eps)
  np.testing.assert_allclose(new["itm_head"]["kernel"], p, rtol=1e-5)
  # Without correction the first step is (1-b1)/sqrt(1-b2) ~ 3.16x Adam's (lr).
  first = _one_update(config, grads={"itm_head": {"kernel": g}}, params=params)
  np.testing.assert_allclose(1 - first["itm_head"]["kernel"][0], lr * 0.1 / np.sqrt(0.001),
                             rtol=1e-4)


def test_global_versus_per_tensor_clipping():
  grads = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.0, 0.5])}   # norms 5 and 0.5
  global_clip = optax.clip_by_global_norm(1.0)
  per_tensor = optimizer_lib.clip_each_tensor(1.0)
  g, _ = global_clip.update(grads, global_clip.init(grads))
  t, _ = per_tensor.update(grads, per_tensor.init(grads))
  total = np.sqrt(25 + 0.25)
  np.testing.assert_allclose(g["a"], np.array([3.0, 4.0]) / total, rtol=1e-6)
  np.testing.assert_allclose(g["b"], np.array([0.0, 0.5]) / total, rtol=1e-6)
  np.testing.assert_allclose(t["a"], [0.6, 0.8], rtol=1e-6)
  np.testing.assert_allclose(t["b"], [0.0, 0.5], rtol=1e-6)      # under the cap: untouched


@pytest.mark.parametrize("per_tensor,fused", [(False, False), (True, False), (False, True)])
def test_clipping_is_wired_into_the_chain(per_tensor, fused):
  """Adam's first moment after one step is (1 - b1) * the clipped gradient."""
  config = _config(learning_rate=1.0, bert_lr_multiplier=1.0, grad_clip_norm=1.0, b1=0.5,
                   per_tensor_clipping=per_tensor, fused_clipping=fused)
  params = {"itm_head": {"kernel": jnp.zeros(2)}, "mrm_head": {"bias": jnp.zeros(2)}}
  grads = {"itm_head": {"kernel": jnp.array([3.0, 4.0])}, "mrm_head": {"bias": jnp.array([0.0, 0.5])}}
  opt = optimizer_lib.build_optimizer(config)
  _, state = opt.tx.update(grads, opt.tx.init(params), params)
  mu = [s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
        if isinstance(s, optax.ScaleByAdamState)][0].mu
  total = np.sqrt(25 + 0.25)
  want_kernel = [0.6, 0.8] if per_tensor else np.array([3.0, 4.0]) / total
  want_bias = [0.0, 0.5] if per_tensor else np.array([0.0, 0.5]) / total
  np.testing.assert_allclose(mu["itm_head"]["kernel"], 0.5 * np.asarray(want_kernel), rtol=1e-6)
  np.testing.assert_allclose(mu["mrm_head"]["bias"], 0.5 * np.asarray(want_bias), rtol=1e-6)


@pytest.mark.parametrize("scale", [0.1, 10.0])
def test_scalar_factor_clipping_matches_optax(scale):
  """optimizer.clip_by_global_norm (`optimizer.fused_clipping`: one scalar factor, fuses
  into Adam's passes) is optax.clip_by_global_norm: bitwise under the cap, to rounding
  above it, with the same (empty) state, so checkpoints do not depend on the flag."""
  rng = np.random.default_rng(0)
  grads = {"a": jnp.asarray(rng.standard_normal((7, 3)) * scale, jnp.float32),
           "b": jnp.asarray(rng.standard_normal(5) * scale, jnp.float32)}
  ours, theirs = optimizer_lib.clip_by_global_norm(1.0), optax.clip_by_global_norm(1.0)
  got, state = ours.update(grads, ours.init(grads))
  want, _ = theirs.update(grads, theirs.init(grads))
  assert state == theirs.init(grads)             # same (empty) state: checkpoints unchanged
  for k in grads:
    if scale < 1:
      np.testing.assert_array_equal(got[k], want[k])
    else:
      np.testing.assert_allclose(got[k], want[k], rtol=1e-6)
  assert float(optax.tree.norm(got)) == pytest.approx(min(1.0, float(optax.tree.norm(grads))),
                                                        rel=1e-6)
