"""benchmarks/input_pipeline.py as the README runs it (--workers=2), on fewer images and
smaller batches so that it takes seconds: the base shapes, Grain worker processes, one JSON
line. Speed is not checked here (docs/data_pipeline.md has the measured figures)."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_input_benchmark_prints_one_json_line(tmp_path):
  # --images/--batch/--batches shrink the run; --workers=2 is the README's command.
  proc = subprocess.run(
      [sys.executable, "benchmarks/input_pipeline.py", "--workers=2", "--images=24",
       "--batch=8", "--batches=4", f"--data_dir={tmp_path / 'data'}"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  assert len(lines) == 1, proc.stdout
  got = json.loads(lines[0])
  assert got["workers"] == 2 and got["batch"] == 8 and got["batches"] == 4
  assert got["regions"] == 36 and got["feature_dim"] == 2048 and got["num_classes"] == 1601
  assert got["examples_per_s"] > 0 and got["cpu_model"]
  assert got["warmup_batches"] == 2 * (2 * 2 + 4) + 2    # both workers' slot rings, once
  assert "leaked" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
