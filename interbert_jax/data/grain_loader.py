"""Batches ahead of the trainer with Grain, in order.

A "maker" is a callable `maker(index, out=None) -> dict of numpy arrays` whose result is a
pure function of `index`, with `maker.spec() -> {key: (shape, dtype)}`. The input is the
Grain pipeline

  MapDataset.range(start, stop) -> .map(build batch i) -> .to_iter_dataset (Grain's read
  threads) -> .mp_prefetch (Grain's worker processes, when workers > 0)

Each element is a whole host batch (its examples' masking and assembly done together in
the maker). Because a batch is a pure function of its index, the number of threads or
workers never changes what is yielded (Grain keeps the order).

How a worker hands a ~66 MB base-shape batch over: Grain's own way, a fresh shared-memory
block per array per batch, costs about as much as building the batch where page
faults are slow (fresh pages: 70-80 ms per 66 MB batch on the 2-core VM of
docs/data_pipeline.md, against 7.5 ms to copy into reused memory). So each worker fills a
ring of shared-memory slots it allocates once, and Grain carries only the slot's name
and sequence number; the trainer's process copies the batch out into its own memory. A
slot is reused only `slots` batches later; a sequence number written before and after
each fill turns a slot overwritten before it was read into an error, never a wrong batch.
"""
from __future__ import annotations

import ctypes
import os
import re
import signal
import uuid
from multiprocessing import shared_memory
from typing import Callable, Iterator, Optional, Tuple

import numpy as np

from interbert_jax import errors

_ALIGN = 64
_HEADER = _ALIGN          # int64 sequence number, then padding.
_BUSY = -1


class WorkerDiedError(errors.RunError, RuntimeError):
  """A loader worker process died (killed, out of memory, crashed): the input cannot go on."""


def _layout(spec: dict):
  """key -> (offset, shape, dtype) of a batch packed into one slot; and the slot's size."""
  layout, pos = {}, _HEADER
  for key, (shape, dtype) in spec.items():
    dtype = np.dtype(dtype)
    layout[key] = (pos, tuple(shape), dtype.str)
    pos += -(-int(np.prod(shape)) * dtype.itemsize // _ALIGN) * _ALIGN
  return layout, pos


def _views(buf, layout: dict) -> dict:
  return {k: np.ndarray(shape, np.dtype(dtype), buffer=buf, offset=off)
          for k, (off, shape, dtype) in layout.items()}


def _sequence(buf) -> np.ndarray:
  return np.ndarray((1,), np.int64, buffer=buf, offset=0)


class _Build:
  """index -> host batch, as a Grain map; the maker is built once per process.

  Pickled to Grain's workers as its factory `(maker_cls, args)`, not as the built maker
  (which holds open shard readers and in-memory captions). With `slots` > 0 (in a worker)
  batch i is written into a ring of that many shared-memory slots and the element is
  the handle {"slot": name, "sequence": n, "layout": ...} that `_Receive` copies out of.
  """

  def __init__(self, factory: Tuple[Callable, tuple], maker=None, slots: int = 0):
    self.factory, self.maker, self.slots = factory, maker, slots
    self._ring, self._count = [], 0

  def __getstate__(self):
    return {"factory": self.factory, "maker": None, "slots": self.slots, "_ring": [],
            "_count": 0}

  def __call__(self, index: int) -> dict:
    if self.maker is None:
      cls, args = self.factory
      self.maker = cls(*args)
    if not self.slots:
      return self.maker(int(index))
    layout, size = _layout(self.maker.spec())
    if not self._ring:
      self._ring = [shared_memory.SharedMemory(
          name=f"interbert_{os.getpid()}_{uuid.uuid4().hex[:8]}_{i}", create=True, size=size)
                    for i in range(self.slots)]
      for shm in self._ring:
        _untrack(shm)      # The trainer's side unlinks the ring (`_Receive.close`).
    shm = self._ring[self._count % self.slots]
    seq = _sequence(shm.buf)
    seq[0] = _BUSY
    out = _views(shm.buf, layout)
    for v in out.values():
      v.fill(0)                       # The maker fills zero-initialised arrays.
    self.maker(int(index), out)
    del out
    seq[0] = self._count
    handle = {"slot": shm.name, "sequence": self._count, "layout": layout,
              "ring": [r.name for r in self._ring], "pid": os.getpid()}
    self._count += 1
    return handle


class _Receive:
  """The trainer's side: a slot handle -> the batch, copied into this process's memory."""

  def __init__(self):
    self._open, self._rings, self.pids = {}, set(), set()

  def __call__(self, handle: dict) -> dict:
    self._rings.update(handle["ring"])
    self.pids.add(handle["pid"])
    shm = self._open.get(handle["slot"])
    if shm is None:
      shm = shared_memory.SharedMemory(name=handle["slot"])
      _untrack(shm)
      self._open[handle["slot"]] = shm
    seq = _sequence(shm.buf)
    if seq[0] != handle["sequence"]:
      raise RuntimeError(self._overwritten(handle, seq[0]))
    batch = {k: v.copy() for k, v in _views(shm.buf, handle["layout"]).items()}
    if seq[0] != handle["sequence"]:
      raise RuntimeError(self._overwritten(handle, seq[0]))
    return batch

  @staticmethod
  def _overwritten(handle, found) -> str:
    return (f"input slot {handle['slot']} holds batch sequence {int(found)} where "
            f"{handle['sequence']} was expected: the worker's ring of slots is too small "
            "for Grain's read-ahead (a bug: please report it)")

  def close(self):
    """Closes and unlinks every slot of the workers' rings (a worker still writing keeps
    its mapping; the names go)."""
    for shm in self._open.values():
      try:
        shm.close()
      except BufferError:
        pass
    for name in self._rings:
      try:
        shm = shared_memory.SharedMemory(name=name)   # (registers; unlink unregisters)
        shm.close()
        shm.unlink()
      except (FileNotFoundError, OSError):
        pass
    self._open, self._rings = {}, set()


def _untrack(shm) -> None:
  """Slots are unlinked by `_Receive.close`, not by Python's resource tracker (which would
  warn of leaks and unlink them twice)."""
  try:
    from multiprocessing import resource_tracker  # pylint: disable=g-import-not-at-top
    resource_tracker.unregister(shm._name, "shared_memory")  # pylint: disable=protected-access
  except Exception:  # pylint: disable=broad-except
    pass


def ring_slots(prefetch: int) -> int:
  """Shared-memory slots per worker. A slot is reused `slots` batches of its worker later.
  Grain holds up to `prefetch` of each worker's batches in the worker's queue and
  `prefetch` more in the trainer's read-ahead thread (mp_prefetch's interleave), plus one
  being built and one being copied out; the rest is margin (the sequence numbers check)."""
  return 2 * max(1, prefetch) + 4


def keep_freed_memory() -> None:
  """Tells glibc's malloc to keep freed blocks of up to 64 MB for reuse instead of handing
  them back to the kernel: each ~260 KB record read and each batch array otherwise comes in
  fresh pages, whose faults cost 30-40% of a base-shape batch (docs/data_pipeline.md).
  Called in every input process; a no-op where there is no glibc."""
  try:
    libc = ctypes.CDLL("libc.so.6")
  except OSError:
    return
  m_trim_threshold, m_mmap_threshold = -1, -3
  libc.mallopt(m_mmap_threshold, 64 << 20)
  libc.mallopt(m_trim_threshold, 512 << 20)


def _worker_init(worker_index: int, worker_count: int) -> None:
  del worker_index, worker_count
  keep_freed_memory()


def batches(maker, factory: Tuple[Callable, tuple], start: int, stop: Optional[int], *,
            workers: int = 0, threads: int = 0, prefetch: int = 2) -> Iterator[dict]:
  """Yields maker(i) for i = start, start + 1, ... < stop (None: endless), built ahead.

  workers > 0: that many Grain worker processes, each building every workers-th batch from
  `factory` = (maker_cls, args); else `threads` Grain read threads (0 = CPU count) build
  them in this process with `maker`. prefetch: batches built ahead per worker (threads:
  in all).
  """
  import grain  # pylint: disable=g-import-not-at-top
  keep_freed_memory()
  ds = grain.MapDataset.range(start, start + 2**40 if stop is None else stop)
  if workers <= 0:
    ds = ds.map(_Build(factory, maker=maker))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads or (os.cpu_count() or 1),
                                              prefetch_buffer_size=max(1, prefetch)))
    return _plain(iter(it), workers, None)
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():   # Library use (no absl.app): Grain reads its flags.
    flags.FLAGS.mark_as_parsed()
  prefetch = max(1, prefetch)
  ds = ds.map(_Build(factory, slots=ring_slots(prefetch)))
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=1))
  it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                   per_worker_buffer_size=prefetch),
                      worker_init_fn=_worker_init)
  return _plain(iter(it), workers, _Receive())


def _plain(it, workers: int, receive) -> Iterator[dict]:
  """The batches as numpy arrays of this process; a dead worker becomes WorkerDiedError."""
  try:
    while True:
      try:
        element = next(it)
      except StopIteration:
        return
      except Exception as e:  # pylint: disable=broad-except
        how = _worker_death(e) if workers else None
        if how is not None:
          dead = [p for p in sorted(receive.pids) if not _alive(p)]
          if len(dead) == 1:
            how = f"pid {dead[0]}, {how}"
          raise WorkerDiedError(
              f"a data loader worker process died ({how}): stopping; the last "
              "checkpoint is kept, re-run the same command to resume. If the kernel killed "
              "it (out of memory), lower config.data.num_workers or config.data.prefetch."
          ) from None
        raise
      yield receive(element) if receive is not None else element
  finally:
    if receive is not None:
      receive.close()


def _alive(pid: int) -> bool:
  """Whether process `pid` runs (a zombie, killed but not yet reaped, does not)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except (OSError, IndexError):
    try:
      os.kill(pid, 0)
    except OSError:
      return False
    return True


def _worker_death(e: BaseException) -> Optional[str]:
  """How a Grain worker died, from Grain's error ('... terminated unexpectedly with exit
  code -9 ...'), or None when the error is something else (then it is raised as it is)."""
  text = str(e)
  if "terminated unexpectedly" not in text:
    return None
  code = re.search(r"exit code (-?\d+)", text)
  if not code:
    return "terminated unexpectedly"
  code = int(code.group(1))
  if code == -signal.SIGBUS:
    return ("killed by SIGBUS: /dev/shm is probably too small for the workers' slot rings, "
            "(2 * config.data.prefetch + 4) batches per worker, docs/data_pipeline.md")
  if code < 0:
    try:
      return f"killed by {signal.Signals(-code).name}"
    except ValueError:
      pass
  return f"exit code {code}"
