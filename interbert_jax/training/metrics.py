"""Metrics sinks (process 0 only): DIR/metrics.jsonl, TensorBoard DIR/tb, progress lines."""
import json
import math
import os
import time

from etils import epath
import numpy as np


class _EpathEventFile:
  """An event file on an object store (gs://, through etils.epath): object stores cannot
  append, so every flush rewrites the whole (small: scalars only) file."""

  def __init__(self, path: str):
    self.path = epath.Path(path)
    self.buffer = bytearray()

  def write(self, data: bytes):
    self.buffer += data

  def flush(self):
    self.path.write_bytes(bytes(self.buffer))

  def close(self):
    self.flush()


class _EpathEventFileFactory:
  """tensorboardX's writer factory for URL schemes, on the project's one file layer."""

  def open(self, path):
    return _EpathEventFile(path)

  def directory_check(self, path):
    del path   # object stores need no directories


def _tensorboard_writer(logdir: str):
  """A tensorboardX SummaryWriter (events without TensorFlow) for a local dir or a URL."""
  from tensorboardX import SummaryWriter   # pylint: disable=g-import-not-at-top
  from tensorboardX import record_writer   # pylint: disable=g-import-not-at-top
  if "://" in logdir:
    record_writer.register_writer_factory(logdir.split("://", 1)[0],
                                          _EpathEventFileFactory())
  return SummaryWriter(logdir=logdir, flush_secs=60)


class MetricsWriter:
  """Appends one JSON object per call to metrics.jsonl and mirrors scalars to TensorBoard
  (DIR/tb, written by tensorboardX: no TensorFlow)."""

  def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True):
    self.enabled = enabled
    self.path = epath.Path(workdir) / "metrics.jsonl"
    # Object stores (gs://) cannot append: keep the lines and rewrite the file instead.
    self._remote = "://" in str(workdir)
    self._lines = []
    if enabled and self._remote and self.path.exists():
      self._lines = [l + "\n" for l in self.path.read_text().splitlines() if l.strip()]
    self._tb = None
    if enabled and tensorboard:
      self._tb = _tensorboard_writer(os.path.join(str(workdir), "tb"))

  def write(self, step: int, scalars: dict):
    if not self.enabled:
      return
    record = {"step": int(step)}
    record.update({k: _to_float(v) for k, v in sorted(scalars.items())})
    line = json.dumps(record) + "\n"
    if self._remote:
      self._lines.append(line)
      self.path.write_text("".join(self._lines))
    else:
      with open(self.path, "a") as f:
        f.write(line)
    if self._tb is not None:
      for k, v in record.items():
        if k != "step" and v is not None and math.isfinite(v):
          self._tb.add_scalar(k, v, global_step=int(step))
      self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()


def _to_float(v):
  """Plain float; NaN/inf become null so the file stays strict JSON."""
  v = float(np.asarray(v))
  return v if math.isfinite(v) else None


class Progress:
  """Throughput and ETA between log steps."""

  def __init__(self, total_steps: int, start_step: int, global_batch: int):
    self.total_steps = total_steps
    self.global_batch = global_batch
    self._last_step = start_step
    self._last_time = time.perf_counter()

  def update(self, step: int) -> dict:
    """Returns {examples_per_sec, steps_per_sec, eta_seconds} since the previous call."""
    now = time.perf_counter()
    steps = max(step - self._last_step, 1)
    seconds = max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    steps_per_sec = steps / seconds
    return {"examples_per_sec": steps_per_sec * self.global_batch,
            "steps_per_sec": steps_per_sec,
            "eta_seconds": (self.total_steps - step) / steps_per_sec}

  def line(self, step: int, loss: float, rates: dict) -> str:
    eta = int(rates["eta_seconds"])
    return (f"step {step}/{self.total_steps} ({100.0 * step / self.total_steps:.1f}%) "
            f"loss {loss:.4f} | {rates['steps_per_sec']:.2f} steps/s "
            f"{rates['examples_per_sec']:.1f} ex/s | ETA {eta // 3600}h{eta % 3600 // 60:02d}m{eta % 60:02d}s")
