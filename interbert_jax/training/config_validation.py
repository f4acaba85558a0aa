"""Start-up checks of a config: one pass, every problem at once, each naming its key.

Runs before any data, model or compile is built, so a typo costs seconds, not a TPU slot.
Allowed values live with the code that implements them (`ENUMERATED` lists where); the
model's own checks are `model.interbert.model_config_errors`, shared with `build_model`.
"""
import os

import numpy as np

from interbert_jax import errors as errors_lib
from interbert_jax import tasks
from interbert_jax.data import itm_negatives
from interbert_jax.data import masking
from interbert_jax.data import synthetic
from interbert_jax.data import synthetic_world
from interbert_jax.model import common as model_common
from interbert_jax.model import interbert
from interbert_jax.parallel import mesh as mesh_lib
from interbert_jax.training import optimizer

# Every config key with a fixed set of values -> those values (owned by the modules named).
ENUMERATED = {
    "model.fusion": interbert.FUSIONS,
    "model.mrm_target": interbert.MRM_TARGETS,
    "model.dtype": model_common.DTYPES,
    "model.param_dtype": model_common.DTYPES,
    "model.remat_policy": model_common.REMAT_POLICIES,
    "data.msm.strategy": masking.MSM_STRATEGIES,
    "data.mrm.strategy": masking.MRM_STRATEGIES,
    "optimizer.name": optimizer.OPTIMIZERS,
    "optimizer.schedule": optimizer.SCHEDULES,
    "data.itm_negatives": itm_negatives.ITM_NEGATIVES,
    "task": tasks.TASKS,
    "data.synthetic.language": synthetic_world.LANGUAGES,
    "data.synthetic.caption_style": synthetic_world.CAPTION_STYLES,
}


class ConfigError(errors_lib.UserError, ValueError):
  """A config value that cannot work; str() lists every problem found."""


def _get(config, dotted):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def _is_int(v):
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def config_errors(config, *, num_devices: int, process_count: int = 1) -> list[str]:
  """Every problem of a full config, each as `config.<key>=<value>: why` (empty = valid)."""
  errors = []

  def check(ok, key, why):
    if not ok:
      try:
        value = repr(_get(config, key))
      except (KeyError, AttributeError):
        value = "<missing>"
      errors.append(f"config.{key}={value}: {why}")

  def positive_int(key, allow_zero=False):
    v = _get(config, key)
    ok = _is_int(v) and (v >= 0 if allow_zero else v > 0)
    check(ok, key, "must be an integer " + (">= 0" if allow_zero else "> 0"))
    return ok

  for key, allowed in ENUMERATED.items():
    if not key.startswith("model."):                  # model.* below, with the model's checks
      check(_get(config, key) in allowed, key, f"must be one of {allowed}")
  errors += interbert.model_config_errors(config.model, prefix="config.model.")

  for key in ("total_steps", "batch_size", "microbatches", "log_every_steps"):
    positive_int(key)
  for key in ("eval_every_steps", "eval_batches", "checkpoint_every_steps", "keep_checkpoints",
              "eval_retrieval_every_steps"):
    positive_int(key, allow_zero=True)
  if positive_int("eval_retrieval_images", allow_zero=True):
    check(not config.eval_retrieval_every_steps or config.eval_retrieval_images >= 2,
          "eval_retrieval_images", "needs >= 2 images to rank when "
          "eval_retrieval_every_steps > 0 (0 = every image of data.eval_split)")

  # Mesh and how the global batch divides over it.
  try:
    shape = mesh_lib.resolve_mesh_shape(config.mesh, num_devices)
  except ValueError as e:
    errors.append(str(e))
    shape = None
  bs, micro = config.batch_size, config.microbatches
  if shape and _is_int(bs) and _is_int(micro) and bs > 0 and micro > 0:
    data_parallel = shape[0] * shape[1]
    check(bs % process_count == 0, "batch_size",
          f"must be divisible by the process count {process_count} (each host loads its share)")
    check(bs % micro == 0, "microbatches", f"must divide batch_size={bs}")
    if bs % micro == 0:
      check((bs // micro) % data_parallel == 0, "batch_size",
            f"each microbatch ({bs}/{micro} examples) must split evenly over mesh.data*mesh.fsdp"
            f"={data_parallel} devices")

  # Data (the config alone; data/pipeline.py checks it against the dataset).
  m, d = config.model, config.data
  if positive_int("data.text_len"):
    check(d.text_len >= 3, "data.text_len", "needs room for [CLS] w [SEP]")
    check(d.text_len <= m.max_position_embeddings, "data.text_len",
          f"exceeds model.max_position_embeddings={m.max_position_embeddings}")
    check(_is_int(d.max_msm_targets) and 0 <= d.max_msm_targets <= d.text_len,
          "data.max_msm_targets", "must be in [0, data.text_len]")
  positive_int("data.max_regions")
  check(0.0 <= d.itm_negative_prob <= 1.0, "data.itm_negative_prob", "must be in [0, 1]")
  check(0.0 <= d.hard_negative_prob <= 1.0, "data.hard_negative_prob", "must be in [0, 1]")
  positive_int("data.hard_negative_k")
  check(not d.dir or "://" in d.dir or os.path.isdir(d.dir), "data.dir", "directory does not exist")
  # The synthetic world's generator knobs (the rest: synthetic._check_params, at generation).
  errors += synthetic.knob_errors(**{k: d.synthetic[k] for k in synthetic.KNOB_DEFAULTS
                                     if k != "caption_style"})

  # Optimizer and loss.
  o = config.optimizer
  check(o.learning_rate > 0, "optimizer.learning_rate", "must be > 0")
  check(o.bert_lr_multiplier >= 0, "optimizer.bert_lr_multiplier", "must be >= 0")
  check(0.0 <= o.warmup_fraction < 1.0, "optimizer.warmup_fraction", "must be in [0, 1)")
  check(0.0 <= o.b1 < 1.0, "optimizer.b1", "must be in [0, 1)")
  check(0.0 <= o.b2 < 1.0, "optimizer.b2", "must be in [0, 1)")
  check(o.eps > 0, "optimizer.eps", "must be > 0")
  check(o.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0")
  check(o.grad_clip_norm >= 0, "optimizer.grad_clip_norm", "must be >= 0 (0 = no clipping)")
  epochs = list(o.decay_epochs)
  check(all(isinstance(e, (int, float)) and e > 0 for e in epochs)
        and epochs == sorted(epochs), "optimizer.decay_epochs",
        "must be increasing epochs > 0, e.g. (2, 4)")
  check(0.0 < o.decay_factor <= 1.0, "optimizer.decay_factor", "must be in (0, 1]")
  check(0.0 <= config.ema_decay < 1.0, "ema_decay", "must be in [0, 1) (0 = off)")
  if config.task == "retrieval" and _is_int(bs) and bs > 0:
    check(bs % (4 * process_count) == 0, "batch_size",
          f"retrieval fine-tuning builds 4 pairs per caption: must be divisible by 4 x the "
          f"process count ({process_count})")
  if config.task == "multiple_choice" and _is_int(bs) and bs > 0:
    check(bs % (2 * process_count) == 0, "batch_size",
          "multiple choice pairs a question's Q->A and QA->R examples (Q->AR accuracy): must "
          f"be divisible by 2 x the process count ({process_count})")
  check(_is_int(config.finetune.num_neighbours) and config.finetune.num_neighbours > 0,
        "finetune.num_neighbours", "must be an integer > 0")
  for w in ("msm_weight", "mrm_weight", "itm_weight"):
    check(config.loss[w] >= 0, f"loss.{w}", "must be >= 0")
  packing = config.loss.msm_packing
  packing_ok = (isinstance(packing, (int, float)) and not isinstance(packing, bool)
                and 0.0 <= packing <= 1.0)
  check(packing_ok, "loss.msm_packing", "must be in [0, 1] (0 = off)")
  check(not (packing_ok and packing) or config.task == "pretrain", "loss.msm_packing",
        f"packs the pretraining MSM head; task={config.task!r} has none (set it to 0)")
  positive_int("plateau.window_steps", allow_zero=True)
  check(0.0 < config.plateau.tolerance < 1.0, "plateau.tolerance",
        "must be in (0, 1) (relative to ln 2)")
  positive_int("plateau.collapse_steps", allow_zero=True)
  check(0.0 < config.plateau.spread_shrink < 1.0, "plateau.spread_shrink",
        "must be in (0, 1) (a fraction of the largest logged itm_logit_std)")
  check(config.plateau.spread_floor >= 0.0, "plateau.spread_floor", "must be >= 0")
  check(0.0 <= config.plateau.dead_image_floor <= 1.0, "plateau.dead_image_floor",
        "must be in [0, 1] (a fraction of the image pooler's units)")
  check(config.peak_flops_per_device >= 0, "peak_flops_per_device",
        "must be >= 0 (0 = measure at start-up)")
  for key in ("data.train_split", "data.eval_split"):   # each becomes DIR/<split>
    check(errors_lib.is_name(_get(config, key)), key,
          "must be a plain name (letters, digits, '_.+-'), not a path")
  init_from = config.init_from
  check(not init_from or "://" in init_from or os.path.exists(init_from), "init_from",
        "checkpoint path does not exist")
  return errors


def validate_config(config, *, num_devices: int, process_count: int = 1) -> None:
  """Raises ConfigError listing every problem of `config_errors`."""
  errors = config_errors(config, num_devices=num_devices, process_count=process_count)
  if errors:
    raise ConfigError("invalid config: " + "; ".join(errors))
