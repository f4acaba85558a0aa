"""Start-up checks of a pretraining config: every message names the offending key.

Runs before anything is built or compiled, so a typo costs seconds, not a TPU slot.
"""
import os

import numpy as np

from interbert_jax.data import itm_negatives
from interbert_jax.parallel import mesh as mesh_lib

DTYPES = ("float32", "bfloat16", "float16")
REMAT = ("none", "full", "dots", "dots_no_batch")


class ConfigError(ValueError):
  """A config value that cannot work; str() lists every problem found."""


def _get(config, dotted):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def validate_config(config, *, num_devices: int, process_count: int = 1) -> None:
  """Raises ConfigError listing all problems (each as `config.<key>=<value>: why`)."""
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
    ok = isinstance(v, (int, np.integer)) and not isinstance(v, bool) and (v >= 0 if allow_zero else v > 0)
    check(ok, key, "must be an integer " + (">= 0" if allow_zero else "> 0"))
    return ok

  for key in ("total_steps", "batch_size", "microbatches", "log_every_steps"):
    positive_int(key)
  for key in ("eval_every_steps", "eval_batches", "checkpoint_every_steps", "keep_checkpoints"):
    positive_int(key, allow_zero=True)

  # Mesh and how the global batch divides over it.
  try:
    shape = mesh_lib.resolve_mesh_shape(config.mesh, num_devices)
  except ValueError as e:
    errors.append(str(e))
    shape = None
  bs, micro = config.batch_size, config.microbatches
  if shape and isinstance(bs, int) and isinstance(micro, int) and bs > 0 and micro > 0:
    data_parallel = shape[0] * shape[1]
    check(bs % process_count == 0, "batch_size",
          f"must be divisible by the process count {process_count} (each host loads its share)")
    check(bs % micro == 0, "microbatches", f"must divide batch_size={bs}")
    if bs % micro == 0:
      check((bs // micro) % data_parallel == 0, "batch_size",
            f"each microbatch ({bs}/{micro} examples) must split evenly over mesh.data*mesh.fsdp"
            f"={data_parallel} devices")

  # Model.
  m = config.model
  check(m.fusion in ("mul", "sum"), "model.fusion", "must be 'mul' or 'sum'")
  check(m.mrm_target in ("kl", "ce", "regress"), "model.mrm_target", "must be 'kl', 'ce' or 'regress'")
  check(m.dtype in DTYPES, "model.dtype", f"must be one of {DTYPES}")
  check(m.param_dtype in DTYPES, "model.param_dtype", f"must be one of {DTYPES}")
  check(m.remat_policy in REMAT, "model.remat_policy", f"must be one of {REMAT}")
  for key in ("hidden_size", "vocab_size", "feature_dim", "num_region_classes", "pooler_dim"):
    positive_int(f"model.{key}")
  for stream in ("single_stream", "text_stream", "image_stream"):
    s = m[stream]
    positive_int(f"model.{stream}.layers", allow_zero=True)
    if positive_int(f"model.{stream}.heads") and isinstance(m.hidden_size, int):
      check(m.hidden_size % s.heads == 0, f"model.{stream}.heads",
            f"must divide model.hidden_size={m.hidden_size}")
    positive_int(f"model.{stream}.mlp_dim")
    for rate in ("hidden_dropout", "attention_dropout"):
      check(0.0 <= s[rate] < 1.0, f"model.{stream}.{rate}", "must be in [0, 1)")

  # Data.
  d = config.data
  positive_int("data.text_len")
  positive_int("data.max_regions")
  if isinstance(d.text_len, int):
    check(d.text_len <= m.max_position_embeddings, "data.text_len", f"exceeds model.max_position_embeddings={m.max_position_embeddings}")
    check(0 <= d.max_msm_targets <= d.text_len, "data.max_msm_targets", "must be in [0, data.text_len]")
  check(0.0 <= d.itm_negative_prob <= 1.0, "data.itm_negative_prob", "must be in [0, 1]")
  check(d.msm.strategy in ("span", "token"), "data.msm.strategy", "must be 'span' or 'token'")
  check(d.mrm.strategy in ("iou", "independent"), "data.mrm.strategy", "must be 'iou' or 'independent'")
  check(d.itm_negatives in itm_negatives.ITM_NEGATIVES, "data.itm_negatives",
        f"must be one of {itm_negatives.ITM_NEGATIVES}")
  check(0.0 <= d.hard_negative_prob <= 1.0, "data.hard_negative_prob", "must be in [0, 1]")
  positive_int("data.hard_negative_k")
  check(not d.dir or "://" in d.dir or os.path.isdir(d.dir), "data.dir", "directory does not exist")

  # Optimizer and loss.
  o = config.optimizer
  check(o.name == "adamw", "optimizer.name", "only 'adamw' is implemented")
  check(o.learning_rate > 0, "optimizer.learning_rate", "must be > 0")
  check(o.bert_lr_multiplier >= 0, "optimizer.bert_lr_multiplier", "must be >= 0")
  check(0.0 <= o.warmup_fraction < 1.0, "optimizer.warmup_fraction", "must be in [0, 1)")
  check(0.0 <= o.b1 < 1.0, "optimizer.b1", "must be in [0, 1)")
  check(0.0 <= o.b2 < 1.0, "optimizer.b2", "must be in [0, 1)")
  check(o.eps > 0, "optimizer.eps", "must be > 0")
  check(o.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0")
  check(o.grad_clip_norm >= 0, "optimizer.grad_clip_norm", "must be >= 0 (0 = no clipping)")
  for w in ("msm_weight", "mrm_weight", "itm_weight"):
    check(config.loss[w] >= 0, f"loss.{w}", "must be >= 0")
  check(config.get("peak_flops_per_device", 0.0) >= 0, "peak_flops_per_device",
        "must be >= 0 (0 = measure at start-up)")
  init_from = config.init_from
  check(not init_from or "://" in init_from or os.path.exists(init_from), "init_from",
        "checkpoint path does not exist")

  if errors:
    raise ConfigError("invalid config:\n  " + "\n  ".join(errors))
