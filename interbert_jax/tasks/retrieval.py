"""Retrieval fine-tuning: binary ITM cross-entropy on the pretrained head over four pairs
per caption (positive, random caption, random image, hard-negative caption;
data/retrieval_batches.py). The model is InterBert itself, so its checkpoints are plain
InterBERT checkpoints (export, zero-shot and fine-tuned retrieval read them alike).
"""
import jax.numpy as jnp

from interbert_jax.data import retrieval_batches
from interbert_jax.objectives import losses
from interbert_jax.tasks import base


class RetrievalTask(base.Task):
  name = "retrieval"
  data = retrieval_batches
  log_keys = ("itm_acc",)
  plateau_diagnostics = False

  def data_dir(self, config) -> str:
    return retrieval_batches.data_dir(config)

  def apply(self, model, params, batch, *, deterministic, rng=None):
    """InterBert on the model inputs; the MSM head runs at one position only (unused)."""
    b = batch["text_ids"].shape[0]
    return model.apply(
        {"params": params}, batch["text_ids"], batch["text_mask"], batch["region_features"],
        batch["region_locations"], batch["region_mask"], segment_ids=batch["segment_ids"],
        deterministic=deterministic, msm_positions=jnp.zeros((b, 1), jnp.int32),
        rngs=None if deterministic else {"dropout": rng})

  def terms(self, outputs, batch, config):
    return losses.itm_terms(outputs["itm_logits"], batch["itm_labels"])

  def eval_terms(self, outputs, batch, config):
    """ITM terms, and `group_acc`: the positive scores highest of its caption's 4 pairs
    (P(match) = softmax(itm_logits)[0], as retrieval ranks; chance 0.25). Eval only: a
    microbatch split of a training batch does not keep the 4 rows of a caption together."""
    terms = self.terms(outputs, batch, config)
    logits = outputs["itm_logits"].reshape(-1, retrieval_batches.PAIRS_PER_CAPTION, 2)
    margin = logits[..., 0] - logits[..., 1]          # monotone in P(match)
    correct = (jnp.argmax(margin, axis=-1) == 0).astype(jnp.float32)
    terms["group_acc"] = (correct.sum(), jnp.asarray(correct.shape[0], jnp.float32))
    return terms

  def combine(self, terms, loss_config):
    names = {"itm_loss": "itm", "itm_acc": "itm_acc", "group_acc": "group_acc"}
    metrics = base.safe_mean(terms, {k: v for k, v in names.items() if v in terms})
    metrics["loss"] = metrics["itm_loss"]
    return metrics["loss"], metrics


TASK = RetrievalTask()
