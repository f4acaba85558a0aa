"""The update step: a pure function of (state, batch, rng) (evaluation: interbert_jax/evaluation).

State is a plain dict {"params", "opt", "step"} (+ "ema_params" when config.ema_decay > 0).
Model, optimizer and the task's functions (apply, loss terms, combine) are explicit keyword
arguments, bound with functools.partial before jax.jit (scenic style).
"""
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from interbert_jax.objectives import losses
from interbert_jax.parallel import partitioning
from interbert_jax.training import packed_msm

TermsFn = Callable[[dict, dict, Any], dict]   # (outputs, batch, config) -> {task: (num, den)}
CombineFn = Callable[[dict, Any], tuple]      # (terms, config.loss) -> (total, metrics)
ApplyFn = Callable[..., dict]                 # (model, params, batch, *, deterministic, rng)
StatsFn = Callable[[dict, dict], dict]        # (outputs, batch) -> {name: array} per microbatch
DiagnosticsFn = Callable[[dict], dict]        # stats with a leading [M] axis -> scalars


def apply_model(model, params, batch: dict, *, deterministic: bool, rng=None,
                msm_packing: float = 0.0) -> dict:
  """Runs the model on a batch dict (docs/design.md batch contract).

  `msm_positions` is passed so the MSM head (a [*, V] matmul) runs only at target
  positions, never over the whole text. `msm_packing` > 0 (config.loss.msm_packing) goes
  further: the head runs only at the slots that hold a target, packed per batch shard
  (training/packed_msm.py), and the outputs carry "msm_numerators" (read by
  `losses.pretraining_terms`) instead of `msm_logits` [B, P, V], and
  "msm_packing_fallback" (1.0 when this batch ran the head at every slot; a diagnostic).
  """
  rngs = None if deterministic else {"dropout": rng}
  positions = batch["msm_positions"]
  outputs = model.apply(
      {"params": params}, batch["text_ids"], batch["text_mask"], batch["region_features"],
      batch["region_locations"], batch["region_mask"], segment_ids=batch["segment_ids"],
      deterministic=deterministic, msm_positions=positions[:, :0] if msm_packing else positions,
      rngs=rngs)
  if msm_packing:
    del outputs["msm_logits"]
    head = lambda hidden: model.apply({"params": params}, hidden, method="msm_logits")
    ce, correct, fell_back = packed_msm.msm_numerators(head, outputs["text_hidden"], batch,
                                                       msm_packing)
    outputs["msm_numerators"] = (ce, correct)
    outputs["msm_packing_fallback"] = fell_back
  return outputs


def split_microbatches(batch: dict, num: int) -> dict:
  """[B, ...] -> [num, B/num, ...] with microbatch j = rows j, j+num, j+2*num, ...

  The batch is block-sharded over devices (device d owns rows d*B/D...). A strided split
  keeps each microbatch's rows on the device that already holds them: reshaping to
  [B/num, num] leaves axis 0 block-sharded, so no example crosses the network.
  """
  def split(x):
    x = x.reshape((x.shape[0] // num, num) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return jax.tree.map(split, batch)


def _global_denominators(model, params, batch, config, terms_fn, apply_fn) -> dict:
  """The whole batch's loss denominators (target counts), without running the model.

  Denominators depend only on the batch (weights, labels); evaluating the loss terms on
  zero outputs of the right shapes yields them, and XLA removes the unused numerators.
  """
  shapes = jax.eval_shape(lambda p, b: apply_fn(model, p, b, deterministic=True),
                          params, batch)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  return jax.tree.map(lambda t: jax.lax.stop_gradient(t[1]),
                      terms_fn(zeros, batch, config), is_leaf=lambda t: isinstance(t, tuple))


def _with_denominators(terms: dict, dens: dict) -> dict:
  return {k: (num, dens[k]) for k, (num, _) in terms.items()}


def ema_decay_at(decay: float, step):
  """The EMA decay after `step` updates: min(decay, (1 + step) / (10 + step)).

  The ramp (tf.train.ExponentialMovingAverage's num_updates) lets the average follow the
  weights early on, so a short fine-tuning run's EMA is not stuck at the initialisation.
  """
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(jnp.float32(decay), (1.0 + step) / (10.0 + step))


def update_ema(ema_params, params, decay):
  """ema <- decay * ema + (1 - decay) * params, leaf by leaf (float32)."""
  return jax.tree.map(lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype),
                      ema_params, params)


def train_step(state: dict, batch: dict, rng: jax.Array, *, model, tx: optax.GradientTransformation,
               schedule: optax.Schedule, config, terms_fn: TermsFn, combine_fn: CombineFn,
               apply_fn: ApplyFn = apply_model, stats_fn: StatsFn | None = None,
               diagnostics_fn: DiagnosticsFn | None = None):
  """One optimizer update on a global batch.

  Args:
    state: {"params", "opt", "step"} (step: int32 scalar, updates done so far), and
      "ema_params" (updated with `update_ema` after the step) when config.ema_decay > 0.
    batch: batch-contract dict, leading axis = global batch B.
    rng: base key, typed or raw uint32 key data (what the trainer passes, replicated);
      this step uses fold_in(rng, step) (and fold_in(., micro) per microbatch).
    stats_fn, diagnostics_fn: optional diagnostics (docs/plateau.md) from the forward pass
      the loss already runs: stats_fn(outputs, microbatch) -> arrays, stacked over the M
      microbatches ([M, ...], M = 1 without accumulation), diagnostics_fn(stacked) ->
      scalars added to the metrics. Auxiliary outputs only: loss, gradients and the new
      state do not depend on them. None (or stats_fn returning {}) = none.
  Returns:
    (new_state, metrics): metrics are float32 scalars: loss, per-task losses/accuracies,
    learning_rate, grad_norm, and the diagnostics' scalars.
  """
  params = state["params"]
  if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.wrap_key_data(rng)
  step_rng = jax.random.fold_in(rng, state["step"])
  num_micro = int(config.microbatches)

  def loss_fn(p, b, r, dens):
    outputs = apply_fn(model, p, b, deterministic=False, rng=r)
    terms = terms_fn(outputs, b, config)
    scaled = terms if dens is None else _with_denominators(terms, dens)
    total, _ = combine_fn(scaled, config.loss)
    stats = stats_fn(outputs, b) if stats_fn is not None else {}
    return total, (terms, jax.lax.stop_gradient(stats))

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if num_micro == 1:
    (_, (terms, stats)), grads = grad_fn(params, batch, step_rng, None)
    stats = jax.tree.map(lambda x: x[None], stats)
  else:
    # Each microbatch's loss divides by the GLOBAL batch's counts, so the summed
    # gradients equal the big batch's gradient exactly (up to float summation order).
    dens = _global_denominators(model, params, batch, config, terms_fn, apply_fn)
    micro = split_microbatches(batch, num_micro)

    def body(carry, xs):
      grad_acc, terms_acc = carry
      i, mb = xs
      (_, (terms, stats)), g = grad_fn(params, mb, jax.random.fold_in(step_rng, i), dens)
      grad_acc = jax.tree.map(jnp.add, grad_acc, g)
      terms_acc = jax.tree.map(jnp.add, terms_acc, terms)
      return (grad_acc, terms_acc), stats

    zero_grads = jax.tree.map(jnp.zeros_like, params)
    terms_shape = jax.eval_shape(
        lambda: grad_fn(params, jax.tree.map(lambda x: x[0], micro), step_rng, dens)[0][1][0])
    zero_terms = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), terms_shape)
    (grads, terms), stats = jax.lax.scan(body, (zero_grads, zero_terms),
                                         (jnp.arange(num_micro), micro))

  _, metrics = combine_fn(terms, config.loss)
  if stats and diagnostics_fn is not None:
    metrics = dict(metrics, **diagnostics_fn(stats))
  grad_norm = optax.tree.norm(grads)
  updates, new_opt = tx.update(grads, state["opt"], params)
  new_params = optax.apply_updates(params, updates)
  metrics = dict(metrics, learning_rate=schedule(state["step"]), grad_norm=grad_norm)
  metrics = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), metrics)
  new_state = dict(state, params=new_params, opt=new_opt, step=state["step"] + 1)
  if "ema_params" in state:
    new_state["ema_params"] = update_ema(
        state["ema_params"], new_params, ema_decay_at(config.ema_decay, new_state["step"]))
  return new_state, metrics


def compile_train_step(config, model, opt, abstract_state, state_shardings, batch_shapes, rng,
                       mesh, compiler_options=None, task=None):
  """`train_step` jitted with the state's and the batch's shardings, donating the state, and
  compiled once (`.lower().compile()`) for `batch_shapes` (global ShapeDtypeStructs).

  Call inside `jax.set_mesh(mesh)` and the logical-axis rules. Returns the compiled step:
  (state, batch, rng) -> (state, metrics). `task` (interbert_jax.tasks) supplies apply,
  loss terms, combine and the diagnostics; None = pretraining's.
  """
  if task is None:
    fns = dict(terms_fn=losses.pretraining_terms, combine_fn=losses.combine,
               apply_fn=apply_model,
               stats_fn=lambda outputs, batch: losses.itm_diagnostic_stats(outputs),
               diagnostics_fn=losses.itm_diagnostics)
  else:
    fns = dict(terms_fn=task.terms, combine_fn=task.combine, apply_fn=task.apply,
               stats_fn=task.diagnostic_stats, diagnostics_fn=task.diagnostics)
  if float(config.loss.msm_packing) > 0:     # pretraining only (config_validation)
    fns["apply_fn"] = functools.partial(fns["apply_fn"],
                                        msm_packing=float(config.loss.msm_packing))
  step_fn = functools.partial(train_step, model=model, tx=opt.tx, schedule=opt.schedule,
                              config=config, **fns)
  batch_sh = {k: partitioning.batch_sharding(mesh) for k in batch_shapes}
  repl = partitioning.replicated(mesh)
  return jax.jit(
      step_fn, in_shardings=(state_shardings, batch_sh, repl),
      out_shardings=(state_shardings, repl), donate_argnums=(0,)).lower(
          abstract_state, batch_shapes, rng).compile(compiler_options=compiler_options)
