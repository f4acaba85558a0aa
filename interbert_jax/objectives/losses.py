"""InterBERT pretraining losses and metrics (docs/reference_notes.md), as pure functions.

Every task returns a `(numerator, denominator)` pair of float32 sums over the batch, so a
gradient-accumulation loop can add the pairs of its microbatches and divide once: the result
equals the loss of the whole batch exactly. `combine` does the division and the weighting.
"""
import jax
import jax.numpy as jnp

TASKS = ("msm", "mrm", "itm")


def _f32(x):
  return jnp.asarray(x, jnp.float32)


def _cross_entropy(logits, labels):
  """logits [..., C], int labels [...] -> float32 CE [...]."""
  logp = jax.nn.log_softmax(_f32(logits), axis=-1)
  return -jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]


def _correct(logits, labels):
  return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)


def msm_terms(msm_logits, msm_targets, msm_weights):
  """Masked segment modeling.

  Args:
    msm_logits: [B, P, V], the model run with `msm_positions=batch["msm_positions"]`.
    msm_targets: int [B, P] original token ids; msm_weights: [B, P], 1 = real target.
  Returns:
    {"msm": (sum of weighted CE, sum of weights), "msm_acc": (weighted correct, weights)}.
    Normalised by `combine` to the mean CE over all target tokens of the batch, matched
    and mismatched pairs alike (docs/reference_notes.md).
  """
  w = _f32(msm_weights)
  ce = _cross_entropy(msm_logits, msm_targets)
  den = w.sum()
  return {"msm": ((ce * w).sum(), den),
          "msm_acc": ((_correct(msm_logits, msm_targets) * w).sum(), den)}


def mrm_region_weights(mrm_weights, itm_labels, matched_only):
  """[B, R] weights of the MRM loss: masked regions, never the global token (index 0),
  and only matched pairs (itm_labels == 0) when `matched_only`."""
  w = _f32(mrm_weights).at[:, 0].set(0.0)
  if matched_only:
    w = w * (itm_labels == 0).astype(jnp.float32)[:, None]
  return w


def mrm_terms(mrm_logits, batch, weights, target):
  """Masked region modeling.

  Args:
    mrm_logits: [B, R, C] (or [B, R, F] for "regress").
    batch: needs mrm_target_probs [B,R,C] ("kl"), mrm_target_classes [B,R] ("kl", "ce"
      accuracy and loss), mrm_target_features [B,R,F] ("regress").
    weights: [B, R] from `mrm_region_weights`.
    target: "kl": KL(target || softmax(pred)) summed over classes; "ce": CE on the argmax
      class; "regress": squared error averaged over the F features.
  Returns:
    {"mrm": (weighted per-region loss sum, weight sum), "mrm_acc": (...)}: `combine` makes
    these means over the counted masked regions. Accuracy is argmax(pred) == argmax(target)
    (0/0 -> 0 for "regress", which has no classes).
  """
  den = weights.sum()
  if target == "regress":
    pred = _f32(mrm_logits)
    per_region = jnp.mean(jnp.square(pred - _f32(batch["mrm_target_features"])), axis=-1)
    return {"mrm": ((per_region * weights).sum(), den),
            "mrm_acc": (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))}
  classes = batch["mrm_target_classes"]
  if target == "kl":
    p = _f32(batch["mrm_target_probs"])
    logq = jax.nn.log_softmax(_f32(mrm_logits), axis=-1)
    # xlogy gives 0 * log 0 = 0 for classes the detector gave no mass.
    per_region = jnp.sum(jax.scipy.special.xlogy(p, p) - p * logq, axis=-1)
  else:                               # "ce" (model.MRM_TARGETS; checked at start-up)
    per_region = _cross_entropy(mrm_logits, classes)
  return {"mrm": ((per_region * weights).sum(), den),
          "mrm_acc": ((_correct(mrm_logits, classes) * weights).sum(), den)}


def classification_terms(logits, labels, name: str):
  """Softmax CE and accuracy of logits [B, C] for int labels [B], sums over the batch:
  {name: (CE sum, B), name_acc: (correct, B)}."""
  n = jnp.asarray(labels.shape[0], jnp.float32)
  return {name: (_cross_entropy(logits, labels).sum(), n),
          f"{name}_acc": (_correct(logits, labels).sum(), n)}


def itm_terms(itm_logits, itm_labels):
  """Image-text matching: CE over 2 classes (0 = matched), mean over the batch."""
  return classification_terms(itm_logits, itm_labels, "itm")


def pretraining_terms(outputs, batch, config):
  """All pretraining terms of one (micro)batch.

  Args:
    outputs: the model's output dict, computed with `msm_positions=batch["msm_positions"]`
      so `msm_logits` is [B, P, V] aligned with `msm_targets`; or with "msm_numerators"
      (CE and correct sums of the packed head, training/packed_msm.py) instead.
    batch: the batch dict of docs/design.md.
    config: the full config (uses config.loss.mrm_matched_only, config.model.mrm_target).
  Returns:
    dict with keys msm, mrm, itm, msm_acc, mrm_acc, itm_acc -> (numerator, denominator)
    float32 scalars; add them across microbatches, then call `combine`.
  """
  if "msm_numerators" in outputs:              # the head ran packed (training/packed_msm.py)
    den = _f32(batch["msm_weights"]).sum()
    ce, correct = outputs["msm_numerators"]
    terms = {"msm": (ce, den), "msm_acc": (correct, den)}
  elif outputs["msm_logits"].shape[:2] != batch["msm_targets"].shape:
    raise ValueError(
        f"msm_logits {outputs['msm_logits'].shape} do not match msm_targets "
        f"{batch['msm_targets'].shape}: run the model with msm_positions=batch['msm_positions']")
  else:
    terms = msm_terms(outputs["msm_logits"], batch["msm_targets"], batch["msm_weights"])
  weights = mrm_region_weights(batch["mrm_weights"], batch["itm_labels"],
                               config.loss.mrm_matched_only)
  terms.update(mrm_terms(outputs["mrm_logits"], batch, weights, config.model.mrm_target))
  terms.update(itm_terms(outputs["itm_logits"], batch["itm_labels"]))
  return terms


def safe_div(num, den):
  # A batch without targets for a task (e.g. no masked region) contributes 0, not NaN.
  return num / jnp.where(den > 0, den, 1.0)


def combine(terms, loss_config):
  """terms -> (total loss, metrics {loss, <task>_loss, <task>_acc}), float32 scalars.

  total = msm_weight * msm_loss + mrm_weight * mrm_loss + itm_weight * itm_loss, each
  loss the numerator / denominator of its term (0 when the denominator is 0).
  """
  metrics = {f"{t}_loss": safe_div(*terms[t]) for t in TASKS}
  metrics.update({f"{t}_acc": safe_div(*terms[f"{t}_acc"]) for t in TASKS})
  total = (loss_config.msm_weight * metrics["msm_loss"]
           + loss_config.mrm_weight * metrics["mrm_loss"]
           + loss_config.itm_weight * metrics["itm_loss"])
  metrics["loss"] = total
  return total, metrics


# Plateau diagnostics (docs/plateau.md): not loss terms, never differentiated. Two steps so
# gradient accumulation sees the whole batch: per (micro)batch statistics, then the
# metrics over the statistics of every microbatch of the step.
DIAGNOSTICS = ("dead_text_pooler", "dead_image_pooler", "itm_logit_std")


def itm_diagnostic_stats(outputs):
  """Per-(micro)batch statistics of the pooled vectors and the ITM logits.

  Args:
    outputs: the model's outputs: text_pooled, image_pooled [B, D] (ReLU outputs, the
      vectors the fusion feeds to the ITM head), itm_logits [B, 2] (class 0 = matched).
  Returns:
    {"text_pooler_alive", "image_pooler_alive": float32 [D], 1 where the unit is > 0 on at
    least one example of the batch; "itm_margin": float32 [B], itm_logits[:, 0] -
    itm_logits[:, 1] (matched minus not matched)}; and "msm_packing_fallback" (float32
    scalar) when the outputs carry it (loss.msm_packing, training/packed_msm.py).
  """
  alive = lambda x: jnp.max((_f32(x) > 0).astype(jnp.float32), axis=0)
  logits = _f32(outputs["itm_logits"])
  stats = {"text_pooler_alive": alive(outputs["text_pooled"]),
           "image_pooler_alive": alive(outputs["image_pooled"]),
           "itm_margin": logits[:, 0] - logits[:, 1]}
  if "msm_packing_fallback" in outputs:
    stats["msm_packing_fallback"] = _f32(outputs["msm_packing_fallback"])
  return stats


def itm_diagnostics(stats):
  """`itm_diagnostic_stats` of one step's microbatches -> float32 scalar metrics.

  Args:
    stats: `itm_diagnostic_stats` leaves with any leading axes (e.g. [M] microbatches):
      pooler masks [..., D], itm_margin [..., B].
  Returns:
    dead_text_pooler, dead_image_pooler: fraction of the D units that are 0 (ReLU off) on
    every example of the whole batch; itm_logit_std: population standard deviation over
    the whole batch of the margin logit[matched] - logit[not matched] (0 = constant head);
    msm_packing_fallback (when packed): the fraction of the step's microbatches whose MSM
    head ran at every slot (its mean over a logging window is the fallback rate).
  """
  def dead(alive):
    return 1.0 - jnp.mean(jnp.max(alive.reshape(-1, alive.shape[-1]), axis=0))
  out = {"dead_text_pooler": dead(stats["text_pooler_alive"]),
         "dead_image_pooler": dead(stats["image_pooler_alive"]),
         "itm_logit_std": jnp.std(stats["itm_margin"].reshape(-1))}
  if "msm_packing_fallback" in stats:
    out["msm_packing_fallback"] = jnp.mean(stats["msm_packing_fallback"])
  return out
