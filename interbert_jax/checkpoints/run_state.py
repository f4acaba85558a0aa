"""Orbax checkpoints of a training run (run state) and auto-resume.

Layout: `<workdir>/checkpoints/<step>/{params, ema_params, train_state, data}`:
  params       orbax StandardCheckpointer tree (what `interbert_jax.load_checkpoint` reads)
  ema_params   the same tree, the weights' moving average; only when config.ema_decay > 0
  train_state  {"opt", "step", "rng"} (optimizer moments/counters, update count, base key)
  data         JSON {"step": k}: the pipeline position (batch k is a pure function of k)
Saves are async and atomic (written to a tmp dir, renamed on commit), so `kill -9`
during a save leaves the previous checkpoint as the latest; keep-N prunes old steps.

Faults (README "Resuming and faults"):
  - a checkpoint that cannot be read is skipped with one warning, and the newest one that
    reads is restored; the unreadable ones newer than it are moved aside to
    `<step>.corrupt-<n>` (outside orbax's step names: keep-N does not count them and the
    step can be saved again), never deleted. When none reads, nothing is moved and
    CheckpointError names them all.
  - a save that fails (disk full, permission denied) raises CheckpointError naming the
    directory and the last checkpoint that was written completely. Saves are async, so the
    error of save k surfaces at save k+1 or at close(); a failed save is never committed,
    so a restart resumes from that last good checkpoint.
"""
import os

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from interbert_jax import errors


ITEMS = ("params", "ema_params", "train_state", "data")
CORRUPT_SUFFIX = ".corrupt-"


def _reason(error: BaseException, limit: int = 300) -> str:
  """The innermost cause of an orbax error on one line: TensorStore's, which says what
  (e.g. OUT_OF_RANGE reading <array> in <file>), not the wrapper's 100-line spec dump."""
  return errors.cause_line(error, limit)


class CheckpointError(errors.RunError, RuntimeError):
  """A run's checkpoints cannot be read or written (the message says which and what to do)."""


def checkpoint_dir(workdir: str) -> str:
  """`<workdir>/checkpoints`, absolute (orbax refuses relative paths; gs:// stays as is)."""
  if "://" not in workdir:
    workdir = os.path.abspath(workdir)
  return os.path.join(workdir, "checkpoints")


class Checkpointer:
  """Thin wrapper over ocp.CheckpointManager with the three items above."""

  def __init__(self, workdir: str, keep: int, async_save: bool = True):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=int(keep) if keep and int(keep) > 0 else None,
        create=True,
        cleanup_tmp_directories=True,          # leftovers of a save killed mid-way
        enable_async_checkpointing=async_save)
    self.directory = checkpoint_dir(workdir)
    self._mngr = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
    self._good = self._mngr.latest_step()  # Newest step known to be written completely.
    self._pending = None                   # Step whose async save has not been checked.

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def save(self, step: int, state: dict, rng_data: jax.Array, *,
           data_state: dict | None = None) -> bool:
    """Starts an async save of `state` (after `step` updates); False if the step exists.

    `rng_data` is the base key as raw uint32 key data (a global, replicated array).
    """
    self._check_saved()
    if step in self._mngr.all_steps():
      return False
    rest = {"opt": state["opt"], "step": state["step"], "rng": rng_data}
    data = dict(data_state or {}, step=step)
    items = dict(params=ocp.args.StandardSave(state["params"]),
                 train_state=ocp.args.StandardSave(rest), data=ocp.args.JsonSave(data))
    if "ema_params" in state:
      items["ema_params"] = ocp.args.StandardSave(state["ema_params"])
    self._pending = step
    try:
      self._mngr.save(step, args=ocp.args.Composite(**items), force=True)
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(e) from None
    return True

  def _write_error(self, error: BaseException) -> CheckpointError:
    step, self._pending = self._pending, None
    good = (f"the last good checkpoint is step {self._good}" if self._good is not None
            else "no checkpoint was written completely")
    return CheckpointError(
        f"cannot write checkpoint {step} to {self.directory} ({_reason(error, 600)}): "
        f"stopping; {good}. Free space or fix the permissions there, then re-run the same "
        "command to resume.")

  def _check_saved(self) -> None:
    """Raises CheckpointError if the previous (async) save failed; else records it good."""
    if self._pending is None:
      return
    try:
      self._mngr.wait_until_finished()
      self._mngr.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(e) from None
    if self._pending in self._mngr.all_steps():
      self._good = self._pending
      self._pending = None
    else:
      raise self._write_error(RuntimeError("the save was not committed"))

  def restore_latest(self, abstract_state: dict, rng_sharding):
    """Restores the newest checkpoint that reads -> (step, state, rng_data, data_state).

    Returns None when there is no checkpoint. Unreadable checkpoints newer than the one
    restored are logged (one warning each) and moved aside; see the module docstring.
    """
    failed = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        restored = self.restore(step, abstract_state, rng_sharding)
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("checkpoint %d in %s cannot be read (%s); trying the previous one.",
                        step, self.directory, _reason(e))
        failed.append((step, e))
        continue
      for bad, _ in failed:
        self._move_aside(bad)
      self._good = step
      return (step,) + restored
    if not failed:
      return None
    listing = "; ".join(f"step {s}: {_reason(e, 200)}" for s, e in failed)
    raise CheckpointError(
        f"no checkpoint in {self.directory} can be read ({listing}). Nothing was changed. "
        "To start fresh, run with another --workdir (or move this checkpoints directory "
        "aside).")

  def _move_aside(self, step: int) -> None:
    """Renames checkpoint `step` to `<step>.corrupt-<n>`, out of orbax's sight; logs it."""
    src = epath.Path(self.directory) / str(step)
    if jax.process_index() == 0:
      n = 1
      while (dst := src.parent / f"{step}{CORRUPT_SUFFIX}{n}").exists():
        n += 1
      try:
        src.rename(dst)
        logging.warning("moved the unreadable checkpoint %s to %s (kept for inspection)",
                        src, dst)
      except OSError as e:   # e.g. an object store without directory renames
        logging.warning("could not move the unreadable checkpoint %s aside (%s): move or "
                        "delete it, else step %d is not saved again", src,
                        errors.cause_line(e), step)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"interbert_move_aside_{step}")
    self._mngr.reload()

  def restore(self, step: int, abstract_state: dict, rng_sharding) -> tuple[dict, jax.Array, dict]:
    """Restores onto the shardings in `abstract_state` (any mesh; resharding is free here).

    Args:
      abstract_state: {"params", "opt", "step"} (+ "ema_params") of ShapeDtypeStruct with
        `.sharding` set.
      rng_sharding: sharding for the base key data (replicated).
    Returns:
      (state, rng_data, data_state): rng_data is the base key's raw uint32 data.
    """
    key_data = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
    rest_target = {
        "opt": abstract_state["opt"], "step": abstract_state["step"],
        "rng": jax.ShapeDtypeStruct(key_data.shape, key_data.dtype, sharding=rng_sharding)}
    items = dict(params=ocp.args.StandardRestore(abstract_state["params"]),
                 train_state=ocp.args.StandardRestore(rest_target), data=ocp.args.JsonRestore())
    if "ema_params" in abstract_state:
      items["ema_params"] = ocp.args.StandardRestore(abstract_state["ema_params"])
    out = self._mngr.restore(step, args=ocp.args.Composite(**items))
    rest = out["train_state"]
    state = {"params": out["params"], "opt": rest["opt"], "step": rest["step"]}
    if "ema_params" in abstract_state:
      state["ema_params"] = out["ema_params"]
    return state, rest["rng"], dict(out["data"])

  def close(self):
    """Waits for the pending save and closes; raises CheckpointError if that save failed."""
    try:
      self._check_saved()
    finally:
      self._mngr.close()
