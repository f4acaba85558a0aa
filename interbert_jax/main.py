r"""InterBERT pretraining and fine-tuning: one trainer, read top to bottom.

  python -m interbert_jax.main --config=configs/pretrain.py:tiny --workdir=workdirs/tiny
  python -m interbert_jax.main --config=configs/finetune_retrieval.py:tiny \
      --config.init_from=workdirs/tiny/checkpoints/3000 --workdir=workdirs/tiny_retrieval
  python -m interbert_jax.main --config=configs/pretrain.py:base --workdir=gs://bucket/run \
      --config.data.dir=/data/cc_prepared --config.init_from=/ckpt/bert_base_converted \
      --config.mesh.fsdp=8

`config.task` (interbert_jax/tasks) picks what is trained: its batches, model heads, loss
terms and eval; the loop below is the same for every task.

Outputs in --workdir: config.json (resolved config), metrics.jsonl (one JSON object per
log step, eval_* keys at eval steps; pretraining adds the plateau diagnostics
dead_text_pooler, dead_image_pooler, itm_logit_std and warns once when ITM sits at ln 2:
docs/plateau.md), tb/ (TensorBoard), checkpoints/<step>/ (orbax;
`params` readable by interbert_jax.load_checkpoint). Re-running the same command resumes
from the latest checkpoint and reaches bitwise the same parameters as an uninterrupted run.
SIGTERM saves a checkpoint and exits 0. A non-finite loss stops the run (exit 1) without
touching the last good checkpoint. A bad config, or a workdir holding another run's config,
exits 2 before anything is built. Faults (README "Resuming and faults"): an unreadable
checkpoint is skipped for the newest one that reads; a failed save, an unreadable data
record or a dead loader worker stops the run with one line naming it (exit 1).
Library logs (orbax, Grain) are hidden unless -v 1.
"""
import math
import os
import time

# TensorFlow is no dependency; should a library load it where it happens to be installed,
# then without its C++ INFO lines and oneDNN start-up (nothing here runs TF math).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from etils import epath
import flax.linen as nn
import jax
from jax.experimental import multihost_utils
from ml_collections import config_flags
import numpy as np

import interbert_jax
from interbert_jax import cli
from interbert_jax import errors
from interbert_jax.checkpoints import init_from as init_from_lib
from interbert_jax.checkpoints import model_files
from interbert_jax import tasks
from interbert_jax.checkpoints import run_state
from interbert_jax.checkpoints import workdir_check
from interbert_jax.checkpoints import workdir_lock
from interbert_jax.evaluation import pretraining as pretraining_eval
from interbert_jax.evaluation import retrieval as retrieval_eval
from interbert_jax.parallel import distributed
from interbert_jax.parallel import mesh as mesh_lib
from interbert_jax.parallel import partitioning
from interbert_jax.training import config_validation
from interbert_jax.training import feature_norm
from interbert_jax.training import flops as flops_lib
from interbert_jax.training import log_filter
from interbert_jax.training import metrics as metrics_lib
from interbert_jax.training import optimizer as optimizer_lib
from interbert_jax.training import plateau as plateau_lib
from interbert_jax.training import preemption as preemption_lib
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


class NonFiniteLossError(errors.RunError, RuntimeError):
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


def init_or_restore(config, task, model, tx, ckpt, mesh):
  """-> (state, train_rng, abstract state, state shardings, start step).

  Restores the newest checkpoint that reads (start step = its step; unreadable newer ones
  are skipped with a warning, see checkpoints/run_state.py), else initialises (step 0).
  Keys travel as raw key data in global replicated arrays (valid jit inputs multi-host).
  """
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  init_rng = partitioning.replicate(jax.random.key_data(init_rng), mesh)
  train_rng = partitioning.replicate(jax.random.key_data(train_rng), mesh)
  init_args = dict(inputs=task.init_inputs(config.model), ema=config.ema_decay > 0)
  abstract, state_sh = state_lib.abstract_state(model, tx, mesh, init_rng, **init_args)
  logging.info("parameters: %s", f"{interbert_jax.model.count_params(abstract['params']):,}")
  restored = ckpt.restore_latest(abstract, partitioning.replicated(mesh))
  if restored is not None:
    start_step, state, train_rng, data_state = restored
    logging.info("resumed from %s/%d (data position %s)", ckpt.directory, start_step,
                 data_state)
    return state, train_rng, abstract, state_sh, start_step
  state = state_lib.create_state(model, tx, state_sh, init_rng, **init_args)
  fresh = (feature_norm.projection(state["params"])
           if feature_norm.applies(state["params"]) else None)
  if config.init_from:
    # Only parameters come from the checkpoint; Adam moments stay zero.
    state["params"] = init_from_lib.load_init_params(
        config.init_from, state["params"], ignore=task.init_from_ignore,
        model_config=config.model)
  if fresh is not None:
    loaded = feature_norm.projection(state["params"]) is not fresh
    if loaded and init_from_lib.hf_bert_config(config.init_from) is None:
      loaded_norm = model_files.read_model_config(config.init_from).get("feature_norm", "none")
      feature_norm.check_loaded(config.init_from, loaded_norm, config.model.feature_norm)
    if not loaded or feature_norm.is_identity(state["params"]):
      # A new feature projection (or one `convert hf_bert` wrote, never trained) reads
      # features standardised by the training data's statistics (model.feature_norm).
      state["params"] = feature_norm.with_stats(state["params"], task.feature_stats(config),
                                                config.model.feature_norm)
  if "ema_params" in state and (config.init_from or fresh is not None):
    state = state_lib.reset_ema(state, state_sh)
  return state, train_rng, abstract, state_sh, 0


def compile_train_step(config, task, model, opt, abstract, state_sh, batch_shapes, train_rng,
                       mesh):
  """The jitted, sharded, donating update step, compiled once; logs its memory."""
  t0 = time.perf_counter()
  compiled = train_step_lib.compile_train_step(config, model, opt, abstract, state_sh,
                                               batch_shapes, train_rng, mesh, task=task)
  memory = compiled.memory_analysis()
  logging.info("train step compiled in %.1fs; per device: %.1f MB arguments, %.1f MB temp",
               time.perf_counter() - t0,
               getattr(memory, "argument_size_in_bytes", float("nan")) / 2**20,
               getattr(memory, "temp_size_in_bytes", float("nan")) / 2**20)
  return compiled


def flops_per_example(config, task, compiled, peak: tuple[float, str]) -> float:
  """Analytic train FLOPs per example for the MFU metric (logged with the compiled count)."""
  flops = task.flops_per_example(config)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  compiled_flops = float((cost or {}).get("flops", float("nan")))
  logging.info("FLOPs/example %.3e (analytic; compiled %.3e per device-step); peak %.3e "
               "FLOP/s per device (%s)", flops, compiled_flops, peak[0], peak[1])
  return flops


def check_finite(window: list[dict], step: int, writer, ckpt) -> None:
  """Raises NonFiniteLossError at the first non-finite loss of the window ending at `step`."""
  values = [float(x) for x in jax.device_get([m["loss"] for m in window])]
  bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
  if bad:
    first_bad = step - len(window) + bad[0] + 1
    writer.write(first_bad, {"loss": values[bad[0]]})
    raise NonFiniteLossError(
        f"non-finite loss ({values[bad[0]]}) at step {first_bad}: stopping. The last good "
        f"checkpoint (step {ckpt.latest_step()}) is kept in {ckpt.directory}. Lower "
        "config.optimizer.learning_rate or check the data.")


def train(config, workdir: str):
  """Runs (or resumes) training of config.task; returns the final train state (None if
  already done)."""
  # ------------------------------------------------------------------ logging & checks
  process, num_processes = jax.process_index(), jax.process_count()
  config_validation.validate_config(config, num_devices=jax.device_count(),
                                    process_count=num_processes)
  is_main = process == 0
  workdir_check.check_workdir(workdir, config)   # Another run's workdir: refused, untouched.
  lock = _lock_workdir(workdir, is_main, num_processes)   # One run per workdir.
  try:
    if is_main:
      _write_config(workdir, config)
    return _train(config, workdir, process, num_processes)
  finally:
    if lock is not None:
      lock.release()


def _lock_workdir(workdir: str, is_main: bool, num_processes: int):
  """Process 0 locks the workdir (checkpoints/workdir_lock.py); every process learns
  whether it did, so that a refused multi-process run exits everywhere, not only on 0."""
  lock, failure = None, None
  if is_main:
    try:
      epath.Path(workdir).mkdir(parents=True, exist_ok=True)   # local or gs://
      lock = workdir_lock.WorkdirLock(workdir).acquire()
    except Exception as e:  # pylint: disable=broad-except
      failure = e   # busy, no permission, ...: raised below, after the others know
  if num_processes > 1:
    locked = multihost_utils.broadcast_one_to_all(np.int32(failure is None))
    if not int(locked) and not is_main:
      raise errors.UserError(f"--workdir={workdir}: process 0 could not lock it (its log "
                             "says why)")
  if failure is not None:
    raise failure
  return lock


def _train(config, workdir: str, process: int, num_processes: int):
  is_main = process == 0
  logging.info("process %d/%d, devices: %d global, %d local (%s)", process, num_processes,
               jax.device_count(), jax.local_device_count(), jax.devices()[0].platform)

  # ------------------------------------------------------------------ mesh
  mesh = mesh_lib.create_mesh(config.mesh)
  logging.info("mesh %s", dict(mesh.shape))

  # ------------------------------------------------------------------ checkpoint (position)
  ckpt = run_state.Checkpointer(workdir, config.keep_checkpoints)
  start_step = ckpt.latest_step() or 0
  if start_step >= config.total_steps:
    logging.info("checkpoint at step %d >= total_steps=%d: nothing to do.", start_step,
                 config.total_steps)
    ckpt.close()
    return None
  # The MFU denominator, outside the mesh (a matmul on one device where no datasheet says).
  peak = flops_lib.peak_flops_per_device(config.peak_flops_per_device, config.model.dtype)
  writer = metrics_lib.MetricsWriter(workdir, enabled=is_main)
  with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.logical_axis_rules()):
    try:
      return _train_loop(config, mesh, ckpt, writer, process, num_processes, peak)
    finally:
      ckpt.close()
      writer.close()


def _train_loop(config, mesh, ckpt, writer, process, num_processes, peak):
  task = tasks.get_task(config)
  # ------------------------------------------------------------------ model, optimizer, state
  model = task.build_model(config)
  opt = optimizer_lib.build_optimizer(config, steps_per_epoch=task.steps_per_epoch(config))
  state, train_rng, abstract, state_sh, start_step = init_or_restore(config, task, model,
                                                                     opt.tx, ckpt, mesh)

  # ------------------------------------------------------------------ input
  # Batch k is a pure function of (config, k, process): resuming is start_step=k.
  train_iter = task.train_iterator(config, start_step=start_step, process_index=process,
                                   process_count=num_processes)
  host_batch = next(train_iter)
  batch_shapes = {k: jax.ShapeDtypeStruct((v.shape[0] * num_processes,) + v.shape[1:], v.dtype)
                  for k, v in host_batch.items()}
  logging.info("batch: %s", " ".join(f"{k}{list(s.shape)}" for k, s in batch_shapes.items()))

  # ------------------------------------------------------------------ update step & evals
  compiled_step = compile_train_step(config, task, model, opt, abstract, state_sh,
                                     batch_shapes, train_rng, mesh)
  example_flops = flops_per_example(config, task, compiled_step, peak)
  evaluate = pretraining_eval.Evaluator(config, model, mesh, state_sh["params"], batch_shapes,
                                        process_index=process, process_count=num_processes,
                                        task=task)
  eval_params = "ema_params" if "ema_params" in state else "params"   # EMA weights when kept
  evaluate_retrieval = (retrieval_eval.RetrievalEvaluator(config, model, mesh,
                                                          state_sh["params"])
                        if config.eval_retrieval_every_steps else None)

  # ------------------------------------------------------------------ loop
  preemption = preemption_lib.PreemptionSignal()
  progress = metrics_lib.Progress(config.total_steps, start_step, config.batch_size)
  window: list[dict] = []
  plateau = (plateau_lib.PlateauDetector.from_config(
      config, optimizer_lib.warmup_steps(config), start_step)   # process 0, once
             if task.plateau_diagnostics and process == 0 else None)

  def save(step, reason):
    check_finite(window, step, writer, ckpt)
    if ckpt.save(step, state, train_rng, data_state={"step": step}):
      logging.info("checkpoint %d saving to %s (%s)", step, ckpt.directory, reason)

  step = start_step
  warned_fallback = False
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
        check_finite(window, step, writer, ckpt)
        scalars = _mean_metrics(window)
        rates = progress.update(step)
        scalars["examples_per_sec"] = rates["examples_per_sec"]
        scalars["mfu"], peak_value = flops_lib.mfu(example_flops, rates["examples_per_sec"],
                                                   peak[0], jax.device_count(), peak[1])
        peak = (peak_value, peak[1])
        writer.write(step, scalars)
        shown = task.log_keys + tuple(k for k in ("msm_packing_fallback",) if k in scalars)
        logging.info("%s | %s | mfu %.2f%%", progress.line(step, scalars["loss"], rates),
                     " ".join(f"{k} {scalars[k]:.3f}" for k in shown),
                     100 * scalars["mfu"])
        reason = plateau and plateau.update(step, scalars["itm_loss"],
                                            scalars["itm_logit_std"],
                                            scalars["dead_image_pooler"])
        if reason:
          logging.warning("%s", plateau_lib.warning_message(step, scalars, reason))
        if scalars.get("msm_packing_fallback", 0.0) >= 0.25 and not warned_fallback:
          warned_fallback = True
          logging.warning(
              "loss.msm_packing=%g: %.0f%% of the (micro)batches since the last log ran the "
              "MSM head at every slot (a batch shard held more targets than its packed "
              "slots), paying for both; raise loss.msm_packing or put more examples on each "
              "batch shard (docs/performance.md). Logged once; the rate is the metric "
              "msm_packing_fallback.", config.loss.msm_packing,
              100 * scalars["msm_packing_fallback"])
        window = []

      if config.eval_every_steps and (step % config.eval_every_steps == 0
                                      or step == config.total_steps):
        eval_scalars = evaluate(state[eval_params])   # the EMA weights when kept
        if eval_scalars:
          writer.write(step, eval_scalars)
          logging.info("eval at step %d: %s", step,
                       " ".join(f"{k}={v:.4f}" for k, v in eval_scalars.items()))
        progress.update(step)   # Keep eval time out of the training throughput.
      if evaluate_retrieval and (step % config.eval_retrieval_every_steps == 0
                                 or step == config.total_steps):
        writer.write(step, evaluate_retrieval(state[eval_params]))
        progress.update(step)

      if preemption.requested(step):
        save(step, "SIGTERM")
        logging.warning("preempted at step %d: checkpoint saved, exiting.", step)
        break
      if (config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0) \
          or step == config.total_steps:
        save(step, "periodic" if step < config.total_steps else "final")
  finally:
    preemption.restore_handler()
  return state


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  log_filter.install()
  distributed.maybe_initialize(_DISTRIBUTED.value)
  config = cli.config_value(_CONFIG)
  if config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/pretrain.py:tiny")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required")
  # A UserError (bad config, data, path, workdir) exits 2 with one line before training;
  # a RunError (non-finite loss, failed save, unreadable record, dead worker) exits 1 with
  # one line, the last good checkpoint kept (interbert_jax/errors.py).
  train(config, _WORKDIR.value)


if __name__ == "__main__":
  cli.run(main)
