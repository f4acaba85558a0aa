"""Pretraining losses: hand-computed examples and the accumulation property."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import pretrain

from interbert_jax import objectives
from interbert_jax.objectives import losses


def config(mrm_target="kl", matched_only=True):
  c = pretrain.get_config("tiny")
  c.model.mrm_target = mrm_target
  c.loss.mrm_matched_only = matched_only
  return c


def log_softmax(x):
  x = np.asarray(x, np.float64)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_msm_mean_ce_over_weighted_targets():
  logits = jnp.asarray([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
                        [[0.0, 0.0, 3.0], [5.0, 5.0, 5.0]]])
  targets = jnp.asarray([[0, 2], [2, 1]])
  weights = jnp.asarray([[1.0, 1.0], [1.0, 0.0]])  # last entry is padding.
  t = losses.msm_terms(logits, targets, weights)
  lp = log_softmax(logits)
  expect = -(lp[0, 0, 0] + lp[0, 1, 2] + lp[1, 0, 2])
  np.testing.assert_allclose(t["msm"][0], expect, rtol=1e-6)
  assert float(t["msm"][1]) == 3.0
  assert float(t["msm_acc"][0]) == 2.0  # [0,0] and [1,0] correct, [0,1] wrong.


def test_mrm_kl_with_zero_target_mass_and_matched_only():
  pred = jnp.asarray([[[0.0, 0.0, 0.0], [1.0, 2.0, 0.5], [0.0, 3.0, 0.0]],
                      [[0.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
  probs = jnp.asarray([[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 1.0, 0.0]],
                       [[1.0, 0.0, 0.0], [0.2, 0.0, 0.8], [1.0, 0.0, 0.0]]], jnp.float16)
  # Index 0 (global token) is flagged on purpose: it must never count.
  mrm_weights = jnp.asarray([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
  labels = jnp.asarray([0, 1])  # the second pair is mismatched.
  batch = dict(mrm_target_probs=probs, mrm_target_classes=jnp.argmax(probs, -1))

  lp = log_softmax(pred)
  kl_01 = 0.5 * (math.log(0.5) - lp[0, 1, 0]) + 0.5 * (math.log(0.5) - lp[0, 1, 1])
  w = losses.mrm_region_weights(mrm_weights, labels, matched_only=True)
  np.testing.assert_array_equal(w, [[0, 1, 0], [0, 0, 0]])
  t = losses.mrm_terms(pred, batch, w, "kl")
  assert np.isfinite(float(t["mrm"][0]))
  np.testing.assert_allclose(t["mrm"][0], kl_01, rtol=1e-6)
  assert float(t["mrm"][1]) == 1.0
  # argmax of the 0.5/0.5 target is class 0 (first of a tie), the prediction's is 1.
  assert float(t["mrm_acc"][0]) == 0.0 and float(t["mrm_acc"][1]) == 1.0

  # All pairs: region [1,1] (target 0.2/0/0.8) and [1,2] (one-hot class 0) count too.
  w_all = losses.mrm_region_weights(mrm_weights, labels, matched_only=False)
  t_all = losses.mrm_terms(pred, batch, w_all, "kl")
  kl_11 = 0.2 * (math.log(0.2) - lp[1, 1, 0]) + 0.8 * (math.log(0.8) - lp[1, 1, 2])
  kl_12 = -lp[1, 2, 0]
  np.testing.assert_allclose(t_all["mrm"][0], kl_01 + kl_11 + kl_12, rtol=1e-3)  # fp16 0.2/0.8
  assert float(t_all["mrm"][1]) == 3.0


def test_mrm_kl_of_exact_prediction_is_zero():
  probs = jnp.asarray([[[0.0, 0.25, 0.75], [0.0, 0.25, 0.75]]])
  pred = jnp.log(jnp.asarray([[[1e-30, 0.25, 0.75], [1e-30, 0.25, 0.75]]]))
  t = losses.mrm_terms(pred, dict(mrm_target_probs=probs, mrm_target_classes=jnp.asarray(
      [[2, 2]])), jnp.asarray([[0.0, 1.0]]), "kl")
  assert abs(float(t["mrm"][0])) < 1e-6


def test_mrm_ce_and_regress():
  pred = jnp.asarray([[[0.0, 0.0], [1.0, -1.0]]])
  batch = dict(mrm_target_classes=jnp.asarray([[0, 1]]),
               mrm_target_features=jnp.asarray([[[0.0, 0.0], [0.0, 1.0]]], jnp.float16))
  w = jnp.asarray([[0.0, 1.0]])
  t = losses.mrm_terms(pred, batch, w, "ce")
  np.testing.assert_allclose(t["mrm"][0], -log_softmax([1.0, -1.0])[1], rtol=1e-6)
  assert float(t["mrm_acc"][0]) == 0.0
  r = losses.mrm_terms(pred, batch, w, "regress")
  np.testing.assert_allclose(r["mrm"][0], ((1 - 0) ** 2 + (-1 - 1) ** 2) / 2, rtol=1e-6)
  assert float(r["mrm"][1]) == 1.0


def test_itm_ce_class_zero_is_matched():
  logits = jnp.asarray([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
  labels = jnp.asarray([0, 1, 1])
  t = losses.itm_terms(logits, labels)
  lp = log_softmax(logits)
  np.testing.assert_allclose(t["itm"][0], -(lp[0, 0] + lp[1, 1] + lp[2, 1]), rtol=1e-6)
  assert float(t["itm"][1]) == 3.0 and float(t["itm_acc"][0]) == 2.0


def random_batch(seed, b=6, r=4, p=3, v=11, c=5):
  rng = np.random.RandomState(seed)
  probs = rng.rand(b, r, c).astype(np.float32)
  probs[:, :, 0] = 0.0  # classes with zero target mass
  probs /= probs.sum(-1, keepdims=True)
  outputs = dict(msm_logits=jnp.asarray(rng.randn(b, p, v), jnp.float32),
                 mrm_logits=jnp.asarray(rng.randn(b, r, c), jnp.float32),
                 itm_logits=jnp.asarray(rng.randn(b, 2), jnp.float32))
  batch = dict(msm_targets=jnp.asarray(rng.randint(0, v, (b, p))),
               msm_weights=jnp.asarray(rng.rand(b, p) > 0.4, jnp.float32),
               mrm_weights=jnp.asarray(rng.rand(b, r) > 0.5, jnp.float32),
               mrm_target_probs=jnp.asarray(probs, jnp.float16),
               mrm_target_classes=jnp.asarray(probs.argmax(-1), jnp.int32),
               itm_labels=jnp.asarray(rng.randint(0, 2, (b,)), jnp.int32))
  return outputs, batch


@pytest.mark.parametrize("mrm_target", ["kl", "ce"])
def test_terms_are_additive_across_batch_halves(mrm_target):
  cfg = config(mrm_target)
  outputs, batch = random_batch(0)
  terms = jax.jit(lambda o, b: objectives.pretraining_terms(o, b, cfg))
  whole = terms(outputs, batch)
  halves = [jax.tree.map(lambda x, s=s: x[s], (outputs, batch))
            for s in (slice(0, 3), slice(3, 6))]
  parts = [terms(o, b) for o, b in halves]
  summed = jax.tree.map(jnp.add, *parts)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), summed, whole)
  total, metrics = objectives.combine(whole, cfg.loss)
  total_acc, metrics_acc = objectives.combine(summed, cfg.loss)
  np.testing.assert_allclose(total_acc, total, rtol=1e-6)
  assert set(metrics) == {"loss", *(f"{t}_{k}" for t in objectives.TASKS for k in ("loss", "acc"))}
  np.testing.assert_allclose(
      total, metrics["msm_loss"] + metrics["mrm_loss"] + metrics["itm_loss"], rtol=1e-6)
  assert all(np.isfinite(float(v)) for v in metrics.values())


def test_combine_weights_and_empty_terms():
  zero = jnp.zeros((), jnp.float32)
  terms = {"msm": (jnp.float32(6.0), jnp.float32(3.0)), "mrm": (zero, zero),
           "itm": (jnp.float32(1.0), jnp.float32(4.0)), "msm_acc": (jnp.float32(1.0),
           jnp.float32(3.0)), "mrm_acc": (zero, zero), "itm_acc": (zero, jnp.float32(4.0))}
  lc = ml_collections.ConfigDict(dict(msm_weight=0.5, mrm_weight=1.0, itm_weight=2.0))
  total, metrics = objectives.combine(terms, lc)
  assert float(metrics["mrm_loss"]) == 0.0  # no masked region: 0, not NaN.
  np.testing.assert_allclose(total, 0.5 * 2.0 + 2.0 * 0.25)
  np.testing.assert_allclose(metrics["msm_acc"], 1 / 3, rtol=1e-6)


def test_loss_gradient_is_finite_with_zero_target_mass():
  cfg = config("kl")
  outputs, batch = random_batch(3)

  def loss(o):
    return objectives.combine(objectives.pretraining_terms(o, batch, cfg), cfg.loss)[0]

  grads = jax.jit(jax.grad(loss))(outputs)
  assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
  # MRM gradient of KL wrt logits = weight * (softmax - p) / den; mismatched pairs get 0.
  mism = np.asarray(batch["itm_labels"]) == 1
  assert float(jnp.abs(grads["mrm_logits"][mism]).max()) == 0.0


def test_msm_logits_must_be_gathered():
  cfg = config()
  outputs, batch = random_batch(1)
  outputs["msm_logits"] = jnp.zeros((6, 9, 11))
  with pytest.raises(ValueError, match="msm_positions"):
    objectives.pretraining_terms(outputs, batch, cfg)
