"""benchmarks/pod_memory.py --quick: the tiny train step compiled ahead of time for 8 fake
devices under pure FSDP holds <= 1.1 x (total state / 8) per device (one subprocess, ~30 s).
"""
import json
import os
import subprocess
import sys

from conftest import REPO


def test_pod_memory_quick_fsdp_ratio():
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "benchmarks/pod_memory.py", "--quick"], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  rows = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
  case, summary = rows[0], rows[-1]
  assert summary["summary"] == "pod_memory" and summary["failed"] == []
  for key in ("state_bytes_total", "state_bytes_per_device", "ideal_bytes_per_device",
              "argument_bytes", "output_bytes", "temp_bytes", "compile_s", "replicated_top"):
    assert key in case, key
  assert case["devices"] == 8 and case["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
  assert case["ratio"] <= 1.1, case
  assert summary["all_within_target"]
  # memory_analysis's arguments are the state + batch + rng shards of one device.
  assert case["argument_bytes"] >= case["state_bytes_per_device"]
