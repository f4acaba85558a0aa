"""AdamW with InterBERT's schedule, per-group learning rates and the reference's quirks.

Default (docs/reference_notes.md, Model facts 3): AdamW, linear warmup over
`warmup_fraction` of the steps then linear decay to 0, BERT-initialised weights at `learning_rate * bert_lr_multiplier`, no decay on
biases/LayerNorm, global-norm clipping. The reference's BertAdam differs in three ways,
each behind a flag: `bias_correction=False`, `per_tensor_clipping=True`,
`reference_decay_mask=True` (ViLBERT's inverted no-decay check decays ONLY bias/LayerNorm).
"""
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from interbert_jax.errors import BadValueError
from interbert_jax.model.params import FROZEN

OPTIMIZERS = ("adamw",)                          # allowed config.optimizer.name
# allowed config.optimizer.schedule: "linear_decay" (pretraining) | "step_decay" (fine-tuning:
# warm-up, then constant with x decay_factor at each of decay_epochs).
SCHEDULES = ("linear_decay", "step_decay")
# Top-level parameter subtrees initialised from bert-base-uncased (docs/reference_notes.md).
BERT_INITIALISED = ("embeddings", "single_stream", "text_stream", "msm_head")
# Leaf names that hold matrices/embeddings; everything else is a bias or a LayerNorm
# scale/bias (`*_norm`, `LayerNorm`, heads' `bias`).
_DECAYED_LEAVES = ("kernel", "embedding")


def warmup_steps(config) -> int:
  """Steps of the linear warm-up: round(optimizer.warmup_fraction * total_steps)."""
  return int(round(float(config.optimizer.warmup_fraction) * int(config.total_steps)))


def learning_rate_schedule(config, steps_per_epoch: float | None = None) -> optax.Schedule:
  """Base (new-weight) learning rate: 0 -> lr over warmup (warmup_fraction of total_steps),
  then `linear_decay`: linear to 0 at total_steps; `step_decay`: constant, times
  decay_factor at each of decay_epochs (epoch e = step round(e * steps_per_epoch))."""
  opt = config.optimizer
  total = int(config.total_steps)
  warmup = warmup_steps(config)
  lr = float(opt.learning_rate)
  if opt.schedule == "step_decay":
    if not steps_per_epoch:
      raise BadValueError("config.optimizer.schedule='step_decay' needs steps_per_epoch")
    scales = {}
    for epoch in opt.decay_epochs:
      boundary = max(int(round(float(epoch) * steps_per_epoch)) - warmup, 0)
      scales[boundary] = scales.get(boundary, 1.0) * float(opt.decay_factor)
    decay = optax.piecewise_constant_schedule(lr, scales)
  else:
    decay = optax.linear_schedule(lr, 0.0, max(total - warmup, 1))
  if warmup == 0:
    return decay
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), decay], boundaries=[warmup])


def _map_with_names(fn, params):
  """Applies fn(path_names) to every leaf; boxed (logically partitioned) leaves count as one."""
  def leaf_fn(path, _):
    return fn(tuple(getattr(k, "key", getattr(k, "name", str(k))) for k in path))
  return jax.tree_util.tree_map_with_path(
      leaf_fn, params, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def param_labels(params) -> Any:
  """'bert' for BERT-initialised parameters, 'new' for the rest (same tree as params)."""
  return _map_with_names(lambda names: "bert" if names[0] in BERT_INITIALISED else "new", params)


def decay_mask(params, reference_decay_mask: bool = False) -> Any:
  """True where weight decay applies: kernels/embeddings (or, with the quirk, the rest)."""
  def decayed(names):
    if names[-1] in FROZEN:          # frozen statistics: never decayed (no gradient either)
      return False
    is_matrix = names[-1] in _DECAYED_LEAVES
    return (not is_matrix) if reference_decay_mask else is_matrix
  return _map_with_names(decayed, params)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """Global-norm clipping as one scalar factor: g * min(1, max_norm / ||g||)
  (`optimizer.fused_clipping=True`).

  The same rule as `optax.clip_by_global_norm`, which computes `select(||g|| < max_norm,
  g, (g / ||g||) * max_norm)` per element. XLA counts that per-element division as
  expensive, so it materialises the clipped gradient once and the Adam moment updates
  read it back; a scalar factor fuses into them instead: 4 passes over the parameters'
  size become 3 (clip+mu, clip+nu, update+apply), and the `base` step on CPU is ~8%
  faster (docs/performance.md). Unclipped steps are bitwise those of optax; clipped ones
  differ by rounding, which is why it is not the default.
  """
  def update_fn(updates, state, params=None):
    del params
    norm = optax.tree.norm(updates)
    factor = jnp.where(norm < max_norm, 1.0, max_norm / norm)
    return jax.tree.map(lambda g: g * factor.astype(g.dtype), updates), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def clip_each_tensor(max_norm: float) -> optax.GradientTransformation:
  """BertAdam's clipping: each tensor's L2 norm separately capped at `max_norm`."""
  def update_fn(updates, state, params=None):
    del params
    def clip(g):
      norm = jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32))))
      return (g * jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-30))).astype(g.dtype)
    return jax.tree.map(clip, updates), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def scale_by_adam_no_bias_correction(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
  """Adam moments without the 1/(1-b^t) corrections, as the reference's BertAdam."""
  def init_fn(params):
    zeros = lambda p: jnp.zeros_like(p, dtype=jnp.float32)
    return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32),
                                  mu=jax.tree.map(zeros, params), nu=jax.tree.map(zeros, params))

  def update_fn(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), state.nu, updates)
    out = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
    return out, optax.ScaleByAdamState(count=optax.safe_increment(state.count), mu=mu, nu=nu)
  return optax.GradientTransformation(init_fn, update_fn)


class Optimizer(NamedTuple):
  tx: optax.GradientTransformation
  schedule: optax.Schedule        # step -> base learning rate (reported as a metric).


def build_optimizer(config, steps_per_epoch: float | None = None) -> Optimizer:
  """The optax chain for `config.optimizer` (schedule length from `config.total_steps`;
  `steps_per_epoch` places the `step_decay` boundaries)."""
  opt = config.optimizer                     # opt.name is one of OPTIMIZERS (checked at start-up)
  schedule = learning_rate_schedule(config, steps_per_epoch)
  parts = []
  if float(opt.grad_clip_norm) > 0:
    max_norm = float(opt.grad_clip_norm)
    if opt.per_tensor_clipping:
      parts.append(clip_each_tensor(max_norm))
    elif opt.get("fused_clipping", False):          # absent in configs made before it
      parts.append(clip_by_global_norm(max_norm))
    else:
      parts.append(optax.clip_by_global_norm(max_norm))
  if opt.bias_correction:
    parts.append(optax.scale_by_adam(b1=float(opt.b1), b2=float(opt.b2), eps=float(opt.eps)))
  else:
    parts.append(scale_by_adam_no_bias_correction(float(opt.b1), float(opt.b2), float(opt.eps)))
  if float(opt.weight_decay) > 0:
    parts.append(optax.add_decayed_weights(
        float(opt.weight_decay),
        mask=lambda p: decay_mask(p, bool(opt.reference_decay_mask))))
  multiplier = float(opt.bert_lr_multiplier)
  parts.append(optax.multi_transform(
      {"new": optax.scale_by_schedule(lambda s: -schedule(s)),
       "bert": optax.scale_by_schedule(lambda s: -multiplier * schedule(s))},
      param_labels))
  return Optimizer(optax.chain(*parts), schedule)
