"""Text-only classification (GLUE-style): the text path alone (single-stream layers over the
text with no regions, then the text stream), `[CLS]` -> dropout -> Dense(num_labels),
softmax cross-entropy. Metrics: accuracy, and macro F1 in the eval.

Batches: data/text_classification.py. The model keeps InterBERT's embeddings and text
path; `config.init_from` skips the image side and the heads of a pretrained checkpoint.
"""
import functools

import jax.numpy as jnp

from interbert_jax.data import text_classification
from interbert_jax.model import common
from interbert_jax.model import interbert
from interbert_jax.objectives import losses
from interbert_jax.tasks import base
from interbert_jax.training import flops as flops_lib

# Pretrained subtrees the text path does not use.
UNUSED = ("region_embeddings", "image_stream", "text_pooler", "image_pooler", "itm_head",
          "msm_head", "mrm_head")


class TextClassifier(interbert.InterBert):
  """InterBERT's text path plus `classifier` (Dense H -> num_labels) over [CLS]."""
  num_labels: int = 2

  def setup(self):
    super().setup()
    self.classifier = common.dense(self.config, self.num_labels, ("embed", None), (None,),
                                   None)
    self.classifier_dropout = common.Dropout(self.config.itm_dropout)

  def __call__(self, text_ids, text_mask, segment_ids=None, deterministic=True):
    """int [B, T] -> {"logits": float32 [B, num_labels]}."""
    text = self.text_path(text_ids, text_mask, segment_ids, deterministic)
    cls = self.classifier_dropout(text[:, 0], deterministic=deterministic)
    return {"logits": self.classifier(cls).astype(jnp.float32)}


class ClassificationTask(base.Task):
  name = "classification"
  data = text_classification
  log_keys = ("cls_acc",)
  plateau_diagnostics = False
  init_from_ignore = UNUSED

  def build_model(self, config):
    labels = text_classification.label_set(config)
    return interbert.build_model(
        config.model, functools.partial(TextClassifier, num_labels=len(labels)))

  def init_inputs(self, model_config):
    d = interbert.dummy_inputs(model_config)
    return dict(text_ids=d["text_ids"], text_mask=d["text_mask"], segment_ids=d["text_ids"])

  def apply(self, model, params, batch, *, deterministic, rng=None):
    return model.apply({"params": params}, batch["text_ids"], batch["text_mask"],
                       batch["segment_ids"], deterministic=deterministic,
                       rngs=None if deterministic else {"dropout": rng})

  def terms(self, outputs, batch, config):
    return losses.classification_terms(outputs["logits"], batch["labels"], "cls")

  def eval_terms(self, outputs, batch, config):
    """+ per-class true positives, predictions and supports (for macro F1), each summed."""
    terms = self.terms(outputs, batch, config)
    k = outputs["logits"].shape[-1]
    pred = jnp.argmax(outputs["logits"], -1)
    onehot_pred = (pred[:, None] == jnp.arange(k)).astype(jnp.float32)
    onehot_true = (batch["labels"][:, None] == jnp.arange(k)).astype(jnp.float32)
    one = jnp.ones((k,), jnp.float32)
    terms["f1_tp"] = ((onehot_pred * onehot_true).sum(0), one)
    terms["f1_pred"] = (onehot_pred.sum(0), one)
    terms["f1_true"] = (onehot_true.sum(0), one)
    return terms

  def combine(self, terms, loss_config):
    metrics = base.safe_mean(terms, {"cls_loss": "cls", "cls_acc": "cls_acc"})
    metrics["loss"] = metrics["cls_loss"]
    if "f1_tp" in terms:
      metrics["macro_f1"] = macro_f1(terms["f1_tp"][0], terms["f1_pred"][0],
                                     terms["f1_true"][0])
    return metrics["loss"], metrics

  def flops_per_example(self, config):
    return flops_lib.text_path_flops_per_example(config)


def macro_f1(tp, pred, true):
  """Mean of per-class F1 = 2 tp / (pred + true) over the classes that are predicted or
  present (as sklearn's f1_score(average="macro") over the labels seen)."""
  seen = (pred + true > 0).astype(jnp.float32)
  return losses.safe_div((losses.safe_div(2.0 * tp, pred + true) * seen).sum(), seen.sum())


TASK = ClassificationTask()
