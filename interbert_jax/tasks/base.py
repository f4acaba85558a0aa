"""The Task interface, with pretraining's behaviour as the defaults.

Every method is a pure function of its arguments (the trainer jits `apply`, `terms`,
`combine`). Subclasses override what their task changes.
"""
from interbert_jax.data import pipeline
from interbert_jax.model import build_model, dummy_inputs
from interbert_jax.objectives import losses
from interbert_jax.training import flops as flops_lib
from interbert_jax.training import train_step as train_step_lib


class Task:
  """Pretraining: MSM + MRM + ITM on the batch contract of docs/design.md."""
  name = "pretrain"
  # Metrics on the trainer's progress line (the plateau diagnostics: docs/plateau.md).
  log_keys = ("itm_acc", "msm_acc", "mrm_acc", "dead_text_pooler", "dead_image_pooler",
              "itm_logit_std")
  # The ITM plateau diagnostics and warning (docs/plateau.md); fine-tuning tasks set False.
  plateau_diagnostics = True
  # Top-level subtrees of a pretrained InterBERT checkpoint this task's model does not
  # have: `config.init_from` skips them instead of failing on unknown parameters.
  init_from_ignore: tuple = ()
  # The task's batches: a module with train_iterator, eval_iterator, steps_per_epoch.
  data = pipeline

  def build_model(self, config):
    """-> linen Module; its parameter tree holds InterBert's (docs/design.md) plus heads."""
    return build_model(config.model)

  def init_inputs(self, model_config) -> dict:
    """model.init keyword arguments (parameter shapes do not depend on B, T, R)."""
    return dummy_inputs(model_config)

  def apply(self, model, params, batch: dict, *, deterministic: bool, rng=None,
            msm_packing: float = 0.0) -> dict:
    """Runs the model on a batch -> float32 outputs dict (`msm_packing`: pretraining's
    config.loss.msm_packing, which the trainer passes when it is on)."""
    return train_step_lib.apply_model(model, params, batch, deterministic=deterministic,
                                      rng=rng, msm_packing=msm_packing)

  def terms(self, outputs: dict, batch: dict, config) -> dict:
    """{name: (numerator, denominator)} float32 sums over the (micro)batch."""
    return losses.pretraining_terms(outputs, batch, config)

  def eval_terms(self, outputs: dict, batch: dict, config) -> dict:
    """The terms the trainer's eval sums (default: the training terms)."""
    return self.terms(outputs, batch, config)

  def combine(self, terms: dict, loss_config):
    """terms (summed over microbatches / eval batches) -> (loss, metrics)."""
    return losses.combine(terms, loss_config)

  def diagnostic_stats(self, outputs: dict, batch: dict) -> dict:
    """Per-(micro)batch statistics of the training forward pass behind the logged
    diagnostics (docs/plateau.md); {} when the task has no `plateau_diagnostics`."""
    return losses.itm_diagnostic_stats(outputs) if self.plateau_diagnostics else {}

  def diagnostics(self, stats: dict) -> dict:
    """`diagnostic_stats` stacked over a step's microbatches -> float32 scalar metrics."""
    return losses.itm_diagnostics(stats)

  def train_iterator(self, config, *, start_step=0, process_index=0, process_count=1):
    """Infinite iterator of host batches; batch k a pure function of (config, k, host)."""
    return self.data.train_iterator(config, start_step=start_step,
                                    process_index=process_index, process_count=process_count)

  def eval_iterator(self, config, *, num_batches=None, process_index=0, process_count=1):
    """Finite, deterministic iterator over config.data.eval_split."""
    return self.data.eval_iterator(config, num_batches=num_batches,
                                   process_index=process_index, process_count=process_count)

  def feature_stats(self, config):
    """The training split's region-feature statistics (pipeline.feature_stats): the
    input standardisation of a fresh feature projection (model.feature_norm)."""
    return pipeline.feature_stats(config, self.data_dir(config))

  def data_dir(self, config) -> str:
    """The task's prepared dataset (generated when synthetic)."""
    return pipeline.data_dir(config)

  def steps_per_epoch(self, config):
    """Training steps per pass over the data (for `optimizer.schedule="step_decay"`)."""
    if config.optimizer.schedule == "linear_decay":
      return None
    return self.data.steps_per_epoch(config)

  def flops_per_example(self, config) -> int:
    """Analytic training FLOPs per example (the MFU numerator)."""
    return flops_lib.train_flops_per_example(config)


def safe_mean(terms: dict, names: dict) -> dict:
  """{metric: numerator / denominator (0 when the denominator is 0)} for metric -> term."""
  return {metric: losses.safe_div(*terms[term]) for metric, term in names.items()}
