"""Multi-process start-up: `jax.distributed.initialize()` with cluster auto-detection."""
import logging
import os

from interbert_jax.errors import BadValueError


def _launched_multiprocess() -> bool:
  """True when the environment shows a multi-process launch (SLURM, MPI, TPU pod, explicit)."""
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return True
  for key in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
    if int(env.get(key, "1") or 1) > 1:
      return True
  hosts = env.get("TPU_WORKER_HOSTNAMES", "")
  return len([h for h in hosts.split(",") if h]) > 1


def maybe_initialize(mode: str = "auto") -> bool:
  """Calls jax.distributed.initialize() for mode 'true', or 'auto' on a detected launch.

  With no arguments JAX detects the coordinator, process count and id on Cloud TPU pods,
  SLURM and Open MPI; JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID override.
  Must run before anything touches the devices.
  """
  if mode not in ("auto", "true", "false"):
    raise BadValueError(f"--distributed={mode!r}: expected auto | true | false")
  if mode == "false" or (mode == "auto" and not _launched_multiprocess()):
    return False
  import jax  # pylint: disable=g-import-not-at-top
  kwargs = {}
  if os.environ.get("JAX_NUM_PROCESSES"):
    kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
  if os.environ.get("JAX_PROCESS_ID"):
    kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())
  return True
