"""Orbax checkpoints of a training run (run state) and auto-resume.

Layout: `<workdir>/checkpoints/<step>/{params, ema_params, train_state, data}`:
  params       orbax StandardCheckpointer tree (what `interbert_jax.load_checkpoint` reads)
  ema_params   the same tree, the weights' moving average; only when config.ema_decay > 0
  train_state  {"opt", "step", "rng"} (optimizer moments/counters, update count, base key)
  data         JSON {"step": k}: the pipeline position (batch k is a pure function of k)
Saves are async and atomic (written to a tmp dir, renamed on commit), so `kill -9`
during a save leaves the previous checkpoint as the latest; keep-N prunes old steps.
"""
import os

import jax
import orbax.checkpoint as ocp

ITEMS = ("params", "ema_params", "train_state", "data")


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

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def save(self, step: int, state: dict, rng_data: jax.Array, *,
           data_state: dict | None = None) -> bool:
    """Starts an async save of `state` (after `step` updates); False if the step exists.

    `rng_data` is the base key as raw uint32 key data (a global, replicated array).
    """
    if step in self._mngr.all_steps():
      return False
    rest = {"opt": state["opt"], "step": state["step"], "rng": rng_data}
    data = dict(data_state or {}, step=step)
    items = dict(params=ocp.args.StandardSave(state["params"]),
                 train_state=ocp.args.StandardSave(rest), data=ocp.args.JsonSave(data))
    if "ema_params" in state:
      items["ema_params"] = ocp.args.StandardSave(state["ema_params"])
    self._mngr.save(step, args=ocp.args.Composite(**items), force=True)
    return True

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

  def wait(self):
    self._mngr.wait_until_finished()

  def close(self):
    self._mngr.wait_until_finished()
    self._mngr.close()
