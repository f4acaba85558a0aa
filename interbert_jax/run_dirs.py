"""A sweep's directory, its runs' directories, and the state a run is in.

The sweep writes these and the report reads them. DIR/sweep.json names every run of the
sweep in order. DIR/<name>/ is the trainer's workdir plus three files the sweep writes:
  overrides.json     {"config": "configs/pretrain.py:tiny", "overrides": {run's own keys},
                      "set": {--set keys, common to the sweep}, "total_steps": N}
  train.log          the trainer's stdout and stderr (appended on every attempt)
  sweep_status.json  {"attempts": [{"launcher", "command", "started", "wall_s",
                      "returncode"}, ...]}; returncode null while running (or if the sweep
                      itself was killed)

A run is
  finished    when checkpoints/ holds an integer-named step directory >= total_steps (the
              trainer's own "nothing to do" test; orbax writes a step under a temporary name
              and renames it when complete), or, with no checkpoints at all, metrics.jsonl
              has a train record at step total_steps;
  failed      when not finished and the last recorded attempt exited non-zero, or train.log
              ends in an error (one of its last 40 lines, after the last `[sweep] attempt`
              line, starts with `Traceback (most recent call last)`, `error:` or
              `Fatal Python error`: what an uncaught exception, the trainer's
              sys.exit("error: ...") and a crash print);
  unfinished  otherwise (not started, interrupted, preempted or still running).
"""
import json
import os

MANIFEST_FILE = "sweep.json"          # in DIR: {"config", "sweep", "runs": [names in order]}
OVERRIDES_FILE = "overrides.json"
LOG_FILE = "train.log"
STATUS_FILE = "sweep_status.json"
FINISHED, UNFINISHED, FAILED = "finished", "unfinished", "failed"

_ERROR_START = ("Traceback (most recent call last)", "error:", "Fatal Python error")


def checkpoint_steps(workdir: str) -> list[int]:
  """Sorted steps of the complete checkpoints in workdir/checkpoints (integer names)."""
  d = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def read_json(path: str, default=None):
  if not os.path.exists(path):
    return default
  with open(path) as f:
    return json.load(f)


def write_json(path: str, obj) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def read_metrics(workdir: str) -> list[dict]:
  """Records of workdir/metrics.jsonl; a torn last line (a run killed mid-write) is skipped."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return out


def attempts(workdir: str) -> list[dict]:
  return read_json(os.path.join(workdir, STATUS_FILE), {}).get("attempts", [])


def log_error(workdir: str, tail_lines: int = 40) -> str | None:
  """The error line train.log ends with, or None (no log, or it ends normally)."""
  path = os.path.join(workdir, LOG_FILE)
  if not os.path.exists(path):
    return None
  with open(path, "rb") as f:
    f.seek(max(0, os.path.getsize(path) - 64_000))
    lines = f.read().decode("utf-8", "replace").splitlines()[-tail_lines:]
  # An attempt that started after the error (a resume) clears it.
  starts = [i for i, l in enumerate(lines) if l.startswith("[sweep] attempt")]
  if starts:
    lines = lines[starts[-1]:]
  first = next((i for i, l in enumerate(lines) if l.startswith(_ERROR_START)), None)
  if first is None:
    return None
  # The message: an `error:` line itself, or the exception line ending a traceback.
  tail = [l.strip() for l in lines[first:] if l.strip() and not l.startswith(" ")]
  said = [l for l in tail if not l.startswith("Traceback")]
  return (said or tail)[-1]


def is_finished(workdir: str, total_steps: int) -> bool:
  steps = checkpoint_steps(workdir)
  if steps:
    return steps[-1] >= total_steps
  return any(r.get("step") == total_steps and "loss" in r for r in read_metrics(workdir))


def run_status(workdir: str, total_steps: int) -> tuple[str, str]:
  """(finished | failed | unfinished, a short reason)."""
  if is_finished(workdir, total_steps):
    return FINISHED, ""
  tries = attempts(workdir)
  if tries and tries[-1].get("returncode") not in (None, 0):
    return FAILED, f"exit code {tries[-1]['returncode']}"
  error = log_error(workdir)
  if error:
    return FAILED, error
  return UNFINISHED, ("not started" if not os.path.isdir(workdir) or not tries
                      and not read_metrics(workdir) else "")
