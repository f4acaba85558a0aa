"""Multiple choice (VCR-style Q->A and QA->R): `Dense(1)` over the fused pooled vector of
each (text, image) choice, 4-way softmax cross-entropy (../shared/SPEC.md section 4).

Batches: data/choice_batches.py. Metrics: `mc_acc` (all examples), and in the eval
`qa_acc` (Q->A), `qar_acc` (QA->R) and `q_ar_acc` (Q->AR: both right for a question).
"""
import jax.numpy as jnp

from interbert_jax.data import choice_batches
from interbert_jax.model import common
from interbert_jax.model import interbert
from interbert_jax.objectives import losses
from interbert_jax.tasks import base


class MultipleChoiceModel(interbert.InterBert):
  """InterBert plus `choice_head` (Dense pooler_dim -> 1); InterBERT's tree is unchanged."""

  def setup(self):
    super().setup()
    self.choice_head = common.dense(self.config, 1, ("mlp", None), (None,), None)
    self.choice_dropout = common.Dropout(self.config.itm_dropout)

  def __call__(self, text_ids, text_mask, segment_ids, region_features, region_locations,
               region_mask, deterministic=True):
    """text_* int [B, C, T]; regions [B, R, ...] (one image per question).

    Returns {"choice_logits": float32 [B, C]}.
    """
    b, c, t = text_ids.shape
    tile = lambda x: jnp.repeat(x, c, axis=0)          # [B, ...] -> [B*C, ...]
    out = super().__call__(
        text_ids.reshape(b * c, t), text_mask.reshape(b * c, t), tile(region_features),
        tile(region_locations), tile(region_mask), segment_ids=segment_ids.reshape(b * c, t),
        deterministic=deterministic, msm_positions=jnp.zeros((b * c, 1), jnp.int32))
    fused = interbert.fuse(out["text_pooled"], out["image_pooled"], self.config.fusion)
    logits = self.choice_head(self.choice_dropout(fused, deterministic=deterministic))
    return {"choice_logits": logits.reshape(b, c).astype(jnp.float32)}


class MultipleChoiceTask(base.Task):
  name = "multiple_choice"
  data = choice_batches
  log_keys = ("mc_acc",)
  plateau_diagnostics = False

  def build_model(self, config):
    return interbert.build_model(config.model, MultipleChoiceModel)

  def init_inputs(self, model_config):
    d = interbert.dummy_inputs(model_config)
    text = lambda x: jnp.repeat(x[:, None], choice_batches.NUM_CHOICES, axis=1)
    return dict(text_ids=text(d["text_ids"]), text_mask=text(d["text_mask"]),
                segment_ids=text(d["text_ids"]), region_features=d["region_features"],
                region_locations=d["region_locations"], region_mask=d["region_mask"])

  def apply(self, model, params, batch, *, deterministic, rng=None):
    return model.apply({"params": params}, batch["text_ids"], batch["text_mask"],
                       batch["segment_ids"], batch["region_features"],
                       batch["region_locations"], batch["region_mask"],
                       deterministic=deterministic,
                       rngs=None if deterministic else {"dropout": rng})

  def terms(self, outputs, batch, config):
    return losses.classification_terms(outputs["choice_logits"], batch["labels"], "mc")

  def eval_terms(self, outputs, batch, config):
    """+ Q->A, QA->R and Q->AR accuracy (eval batches keep a question's modes adjacent)."""
    terms = self.terms(outputs, batch, config)
    correct = (jnp.argmax(outputs["choice_logits"], -1) == batch["labels"]).astype(jnp.float32)
    for name, mode in (("qa_acc", 0), ("qar_acc", 1)):
      w = (batch["mode"] == mode).astype(jnp.float32)
      terms[name] = ((correct * w).sum(), w.sum())
    pairs = correct.reshape(-1, 2)
    first_is_qa = (batch["mode"].reshape(-1, 2) == jnp.array([0, 1])).all(-1)
    w = first_is_qa.astype(jnp.float32)
    terms["q_ar_acc"] = ((pairs.prod(-1) * w).sum(), w.sum())
    return terms

  def combine(self, terms, loss_config):
    names = {"mc_loss": "mc", "mc_acc": "mc_acc", "qa_acc": "qa_acc", "qar_acc": "qar_acc",
             "q_ar_acc": "q_ar_acc"}
    metrics = base.safe_mean(terms, {k: v for k, v in names.items() if v in terms})
    metrics["loss"] = metrics["mc_loss"]
    return metrics["loss"], metrics

  def flops_per_example(self, config):
    return choice_batches.NUM_CHOICES * super().flops_per_example(config)


TASK = MultipleChoiceTask()
