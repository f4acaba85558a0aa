"""SIGTERM (what TPU/GPU schedulers send before preemption) -> save and exit cleanly."""
import logging
import signal
import threading

import jax
from jax.experimental import multihost_utils


class PreemptionSignal:
  """SIGTERM (what TPU/GPU schedulers send before preemption) -> save and exit cleanly.

  Single process: a Python handler sets a flag the loop polls. Multi-process: JAX's
  preemption sync manager (started by jax.distributed.initialize) catches the signal and
  `reached_preemption_sync_point(step)` turns True at the same step on every host, without
  a per-step collective, so all hosts save the same step.
  """

  def __init__(self):
    self._event = threading.Event()
    self._previous = None
    self._multihost = jax.process_count() > 1
    if not self._multihost and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del frame
    logging.warning("Signal %d received: will checkpoint and exit after this step.", signum)
    self._event.set()

  def requested(self, step: int) -> bool:
    if self._multihost:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._event.is_set()

  def restore_handler(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
