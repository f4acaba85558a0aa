r"""InterBERT pretraining: one trainer, read top to bottom.

  python -m interbert_jax.main --config=configs/pretrain.py:tiny --workdir=/tmp/interbert_tiny
  python -m interbert_jax.main --config=configs/pretrain.py:base --workdir=gs://bucket/run \
      --config.data.dir=/data/cc_prepared --config.init_from=/ckpt/bert_base_converted \
      --config.mesh.fsdp=8

Outputs in --workdir: config.json (resolved config), metrics.jsonl (one JSON object per
log step, eval_* keys at eval steps), tb/ (TensorBoard), checkpoints/<step>/ (orbax;
`params` readable by interbert_jax.load_checkpoint). Re-running the same command resumes
from the latest checkpoint and reaches bitwise the same parameters as an uninterrupted run.
SIGTERM saves a checkpoint and exits 0. A non-finite loss stops the run (exit 1) without
touching the last good checkpoint.
"""
import functools
import logging as pylogging
import math
import sys
import time

from absl import app
from absl import flags
from absl import logging
from etils import epath
import flax.linen as nn
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

import interbert_jax
from interbert_jax.data import pipeline
from interbert_jax.objectives import losses
from interbert_jax.parallel import distributed
from interbert_jax.parallel import mesh as mesh_lib
from interbert_jax.parallel import partitioning
from interbert_jax.training import checkpointing
from interbert_jax.training import config_validation
from interbert_jax.training import flops as flops_lib
from interbert_jax.training import init_from as init_from_lib
from interbert_jax.training import metrics as metrics_lib
from interbert_jax.training import optimizer as optimizer_lib
from interbert_jax.training import state as state_lib
from interbert_jax.training import train_step as train_step_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file and variant, e.g. configs/pretrain.py:tiny. Override any "
    "key with --config.KEY=VALUE (e.g. --config.total_steps=1000 --config.mesh.fsdp=8).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory (local or gs://): checkpoints, metrics.jsonl, tb/, "
    "config.json. An existing run there is resumed.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "true", "false"],
    "Call jax.distributed.initialize(): auto = when launched multi-process (SLURM, MPI, "
    "TPU pod, JAX_COORDINATOR_ADDRESS).")


class NonFiniteLossError(RuntimeError):
  pass


def _mean_metrics(window: list[dict]) -> dict:
  """Mean of per-step device metrics over a log window (learning_rate: last step's)."""
  host = jax.device_get(window)
  out = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
  out["learning_rate"] = float(host[-1]["learning_rate"])
  return out


def _write_config(workdir: str, config) -> None:
  (epath.Path(workdir) / "config.json").write_text(
      config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


def train(config, workdir: str) -> dict:
  """Runs (or resumes) pretraining; returns the final train state (None if already done)."""
  # ------------------------------------------------------------------ logging & checks
  process, num_processes = jax.process_index(), jax.process_count()
  config_validation.validate_config(config, num_devices=jax.device_count(),
                                    process_count=num_processes)
  is_main = process == 0
  if is_main:
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)   # local or gs://
    _write_config(workdir, config)
  writer = metrics_lib.MetricsWriter(workdir, enabled=is_main)
  logging.info("process %d/%d, devices: %d global, %d local (%s)", process, num_processes,
               jax.device_count(), jax.local_device_count(), jax.devices()[0].platform)

  # ------------------------------------------------------------------ mesh
  mesh = mesh_lib.create_mesh(config.mesh)
  rules = partitioning.logical_axis_rules()
  logging.info("mesh %s", dict(mesh.shape))

  # ------------------------------------------------------------------ checkpoint (position)
  ckpt = checkpointing.Checkpointer(workdir, config.keep_checkpoints)
  start_step = ckpt.latest_step() or 0
  if start_step >= config.total_steps:
    logging.info("checkpoint at step %d >= total_steps=%d: nothing to do.", start_step,
                 config.total_steps)
    ckpt.close()
    writer.close()
    return None

  # ------------------------------------------------------------------ input
  # Batch k is a pure function of (config, k, process): resuming is start_step=k.
  train_iter = pipeline.train_iterator(config, start_step=start_step, process_index=process,
                                       process_count=num_processes)
  first_host_batch = next(train_iter)
  batch_shapes = {k: jax.ShapeDtypeStruct((v.shape[0] * num_processes,) + v.shape[1:], v.dtype)
                  for k, v in first_host_batch.items()}
  logging.info("batch: %s", {k: (s.shape, str(s.dtype)) for k, s in batch_shapes.items()})

  # ------------------------------------------------------------------ model & optimizer
  model = interbert_jax.build_model(config.model)
  opt = optimizer_lib.build_optimizer(config)
  rng = jax.random.key(config.seed)
  init_rng, train_rng = jax.random.split(rng)
  # Keys travel as raw key data in global replicated arrays (valid jit inputs multi-host).
  init_rng = partitioning.replicate(jax.random.key_data(init_rng), mesh)
  train_rng = partitioning.replicate(jax.random.key_data(train_rng), mesh)

  # ------------------------------------------------------------------ sharding
  batch_sh = partitioning.batch_sharding(mesh)
  repl = partitioning.replicated(mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract, state_sh = state_lib.abstract_state(model, opt.tx, batch_shapes, mesh, init_rng)
  num_params = state_lib.count_params(abstract["params"])
  logging.info("parameters: %s", f"{num_params:,}")
  logging.info("param shardings: %s",
               {jax.tree_util.keystr(p): str(s.spec) for p, s in
                jax.tree_util.tree_flatten_with_path(state_sh["params"])[0][:12]})

  # ------------------------------------------------------------------ checkpoint (state)
  if start_step > 0:
    state, train_rng, data_state = ckpt.restore(start_step, abstract, repl)
    logging.info("resumed from %s/%d (data position %s)", ckpt.directory, start_step, data_state)
  else:
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      state = state_lib.create_state(model, opt.tx, batch_shapes, state_sh, init_rng)
    if config.init_from:
      state["params"] = init_from_lib.load_init_params(config.init_from, state["params"])
      # Adam moments stay zero; only parameters come from the checkpoint.

  # ------------------------------------------------------------------ update step
  step_fn = functools.partial(
      train_step_lib.train_step, model=model, tx=opt.tx, schedule=opt.schedule, config=config,
      terms_fn=losses.pretraining_terms, combine_fn=losses.combine)
  batch_sh_tree = {k: batch_sh for k in batch_shapes}
  t0 = time.perf_counter()
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    compiled_step = jax.jit(
        step_fn, in_shardings=(state_sh, batch_sh_tree, repl), out_shardings=(state_sh, repl),
        donate_argnums=(0,)).lower(abstract, batch_shapes, train_rng).compile()
  logging.info("train step compiled in %.1fs", time.perf_counter() - t0)
  logging.info("memory_analysis (per device): %s", compiled_step.memory_analysis())
  flops_per_example = flops_lib.train_flops_per_example(config)
  cost = compiled_step.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  compiled_flops = float((cost or {}).get("flops", float("nan")))
  logging.info("FLOPs/example: %.3e analytic (3x forward matmuls); compiled cost_analysis "
               "%.3e per device per step", flops_per_example, compiled_flops)
  peak = float(config.get("peak_flops_per_device", 0.0)) or flops_lib.measure_peak_flops(
      config.model.dtype)
  logging.info("peak FLOP/s per device for MFU: %.3e (%s)", peak,
               "config" if config.get("peak_flops_per_device", 0.0) else "measured matmul")

  # ------------------------------------------------------------------ evals
  eval_fn = jax.jit(
      functools.partial(train_step_lib.eval_terms, model=model, config=config,
                        terms_fn=losses.pretraining_terms),
      in_shardings=(state_sh["params"], batch_sh_tree), out_shardings=repl)

  def run_eval(params) -> dict:
    totals = None
    for host_batch in pipeline.eval_iterator(config, num_batches=config.eval_batches or None,
                                             process_index=process, process_count=num_processes):
      with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        terms = jax.device_get(eval_fn(params, partitioning.global_batch(host_batch, mesh)))
      terms = jax.tree.map(lambda x: np.asarray(x, np.float64), terms)
      totals = terms if totals is None else jax.tree.map(np.add, totals, terms)
    if totals is None:
      return {}
    totals = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), totals)
    _, m = losses.combine(totals, config.loss)
    return {f"eval_{k}": float(v) for k, v in m.items()}

  # ------------------------------------------------------------------ loop
  preemption = checkpointing.PreemptionSignal()
  progress = metrics_lib.Progress(config.total_steps, start_step, config.batch_size)
  window: list[dict] = []
  host_batch = first_host_batch

  def check_finite(step):
    losses_ = [float(x) for x in jax.device_get([m["loss"] for m in window])]
    bad = [i for i, v in enumerate(losses_) if not math.isfinite(v)]
    if bad:
      first_bad = step - len(window) + bad[0] + 1
      writer.write(first_bad, {"loss": losses_[bad[0]]})
      raise NonFiniteLossError(
          f"non-finite loss ({losses_[bad[0]]}) at step {first_bad}: stopping. The last good "
          f"checkpoint (step {ckpt.latest_step()}) is kept in {ckpt.directory}. Lower "
          "config.optimizer.learning_rate or check the data.")

  def save(step, reason):
    check_finite(step)
    if ckpt.save(step, state, train_rng, data_state={"step": step}):
      logging.info("checkpoint %d started (%s)", step, reason)

  step = start_step
  try:
    while step < config.total_steps:
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, step_metrics = compiled_step(state, partitioning.global_batch(host_batch, mesh),
                                            train_rng)
      step += 1
      window.append(step_metrics)
      if step < config.total_steps:
        host_batch = next(train_iter)   # Overlaps with the async device step.

      if step % config.log_every_steps == 0 or step == config.total_steps:
        check_finite(step)
        scalars = _mean_metrics(window)
        rates = progress.update(step)
        scalars["examples_per_sec"] = rates["examples_per_sec"]
        scalars["mfu"] = (flops_per_example * rates["examples_per_sec"]
                          / (peak * jax.device_count()))
        writer.write(step, scalars)
        logging.info("%s | itm_acc %.3f msm_acc %.3f mrm_acc %.3f | mfu %.2f%%",
                     progress.line(step, scalars["loss"], rates), scalars["itm_acc"],
                     scalars["msm_acc"], scalars["mrm_acc"], 100 * scalars["mfu"])
        window = []

      if config.eval_every_steps and (step % config.eval_every_steps == 0
                                      or step == config.total_steps):
        eval_scalars = run_eval(state["params"])
        if eval_scalars:
          writer.write(step, eval_scalars)
          logging.info("eval at step %d: %s", step,
                       " ".join(f"{k}={v:.4f}" for k, v in eval_scalars.items()))
        progress.update(step)   # Keep eval time out of the training throughput.

      if preemption.requested(step):
        save(step, "SIGTERM")
        logging.warning("preempted at step %d: checkpoint saved, exiting.", step)
        break
      if (config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0) \
          or step == config.total_steps:
        save(step, "periodic" if step < config.total_steps else "final")
  finally:
    ckpt.close()
    writer.close()
    preemption.restore_handler()
  return state


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  distributed.maybe_initialize(_DISTRIBUTED.value)
  pylogging.getLogger("absl").setLevel(pylogging.INFO)
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/pretrain.py:tiny")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required")
  try:
    train(config, _WORKDIR.value)
  except (config_validation.ConfigError, pipeline.PipelineConfigError) as e:
    sys.exit(f"error: {e}")
  except NonFiniteLossError as e:
    logging.error("%s", e)
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
