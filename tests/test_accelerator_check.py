"""benchmarks/accelerator_check.sh on CPU, as a user runs it (its small form: tiny model,
few steps): one JSON line, every part present and measured, the kill -9 + resume part
resumed from the checkpoint with equal losses."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_accelerator_check_passes_on_cpu(tmp_path):
  env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1", TMPDIR=str(tmp_path))
  proc = subprocess.run(["bash", "benchmarks/accelerator_check.sh"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=900)
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
  report = json.loads(lines[0])
  assert proc.returncode == 0 and report["ok"], json.dumps(report, indent=1)
  assert report["mode"] == "small" and report["devices"]["platform"] == "cpu"
  assert report["train_step"]["examples_per_s"] > 0
  assert report["train_step"]["mfu_measured_matmul"] > 0
  assert report["input"]["examples_per_s"] > 0 and report["input"]["feature_dim"] == 2048
  resume = report["resume"]
  assert resume["losses_equal"] and resume["resumed_at_step"] == resume["checkpoint_step"] + 5
  assert resume["compared_steps"] and resume["killed_after_step"] > resume["checkpoint_step"]
  assert report["retrieval"]["pairs_per_s"] > 0
