"""Multi-host training on one machine: 2 processes x 2 CPU devices (jax.distributed on
127.0.0.1, gloo collectives) give the same losses as 1 process x 4 devices.

This is the path a TPU pod or GPU cluster takes: `jax.distributed.initialize`, each host
reading its rows of the global batch, `make_array_from_process_local_data`, process 0
writing metrics, every process writing its checkpoint shards.
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 10
ARGS = [
    "-m", "interbert_jax.main", "--config=configs/pretrain.py:tiny",
    f"--config.total_steps={STEPS}", "--config.log_every_steps=5",
    f"--config.eval_every_steps={STEPS}", "--config.eval_batches=2",
    f"--config.checkpoint_every_steps={STEPS}",
]


def _env(devices, **extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
                       "--xla_backend_optimization_level=0")
  env.update(extra)
  return env


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_two_processes_match_one(tmp_path):
  one = str(tmp_path / "one")
  two = str(tmp_path / "two")
  coordinator = f"127.0.0.1:{_free_port()}"
  procs = [
      subprocess.Popen(
          [sys.executable, *ARGS, f"--workdir={two}"], cwd=REPO,
          env=_env(2, JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
                   JAX_COORDINATOR_ADDRESS=coordinator, JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(i)),
          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  single = subprocess.run([sys.executable, *ARGS, f"--workdir={one}"], cwd=REPO, env=_env(4),
                          capture_output=True, text=True, timeout=600)
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  assert single.returncode == 0, single.stderr[-3000:]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  assert "process 1 of 2, 2 local / 4 global devices" in outputs[1]

  a, b = _metrics(one), _metrics(two)          # only process 0 writes metrics
  assert [r["step"] for r in a] == [r["step"] for r in b]
  for ra, rb in zip(a, b):
    for key in ("loss", "msm_loss", "mrm_loss", "itm_loss", "eval_loss"):
      if key in ra:
        np.testing.assert_allclose(rb[key], ra[key], rtol=1e-5, err_msg=key)
  assert os.listdir(os.path.join(two, "checkpoints")) == [str(STEPS)]
