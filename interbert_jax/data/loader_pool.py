"""Builds batches ahead of the trainer with threads or worker processes, in order.

A "maker" is a callable `maker(index, out=None) -> dict of numpy arrays` whose result is a
pure function of `index`, with `maker.spec() -> {key: (shape, dtype)}`. Because of that,
the pool kind and its scheduling never change what is yielded.

Threads are cheap to start but share the GIL (TFDS/ArrayRecord reads hold it), so they
use about one core. Worker processes (spawned, each building its own maker) scale with
cores; they hand batches back through shared memory: the worker fills arrays laid out in
a fresh block, the parent copies them out once and unlinks the block. Pickling ~66 MB base
batches through a pipe instead costs about as much CPU as building them.
"""
from __future__ import annotations

import collections
import concurrent.futures
import concurrent.futures.process   # BrokenProcessPool: the submodule is not imported by the package
import itertools
import multiprocessing
import os
import signal
import time
from multiprocessing import shared_memory
from typing import Callable, Iterable, Iterator, Tuple

import numpy as np

from interbert_jax import errors

_ALIGN = 64
_WORKER_MAKER = None      # The maker of this process when it is a loader worker.


class WorkerDiedError(errors.RunError, RuntimeError):
  """A loader worker process died (killed, out of memory, crashed): the pool cannot go on."""


def _died(processes: dict) -> WorkerDiedError:
  """The error naming the dead worker(s) of a broken process pool and their exit codes.

  `processes`: pid -> multiprocessing.Process of every worker the pool started.
  """
  dead = []
  deadline = time.monotonic() + 2.0        # a killed worker may not be reaped yet
  for pid, proc in list(processes.items()):
    if proc.exitcode is None:
      proc.join(max(0.0, deadline - time.monotonic()))
    code = proc.exitcode
    if code is not None and code != 0:
      dead.append(f"pid {pid} " + (f"killed by {signal.Signals(-code).name}" if code < 0
                                   else f"exited with code {code}"))
  who = f" ({', '.join(dead)})" if dead else ""
  return WorkerDiedError(
      f"a data loader worker process died{who}: stopping; the last checkpoint is kept, "
      "re-run the same command to resume. If the kernel killed it (out of memory), lower "
      "config.data.num_workers or config.data.prefetch.")


def _init_worker(factory: Tuple[Callable, tuple]):
  global _WORKER_MAKER
  os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")    # a worker only reads files: no GPU runtime.
  make, args = factory
  _WORKER_MAKER = make(*args)


def _layout(spec: dict):
  layout, offset = [], 0
  for key, (shape, dtype) in spec.items():
    dtype = np.dtype(dtype)
    layout.append((key, tuple(int(s) for s in shape), dtype.str, offset))
    nbytes = int(np.prod(shape)) * dtype.itemsize
    offset += -(-nbytes // _ALIGN) * _ALIGN
  return layout, max(offset, 1)


def _worker_batch(index: int):
  """Builds batch `index` in a new shared-memory block -> (block name, layout)."""
  layout, size = _layout(_WORKER_MAKER.spec())
  block = shared_memory.SharedMemory(create=True, size=size)
  try:
    out = {key: np.ndarray(shape, dtype, buffer=block.buf, offset=off)
           for key, shape, dtype, off in layout}      # A new block is zero-filled.
    _WORKER_MAKER(index, out)
    del out                                          # No views may outlive close().
  except BaseException:
    block.close()
    block.unlink()
    raise
  block.close()
  return block.name, layout


def _from_shared(result) -> dict:
  name, layout = result
  block = shared_memory.SharedMemory(name=name)
  try:
    return {key: np.ndarray(shape, dtype, buffer=block.buf, offset=off).copy()
            for key, shape, dtype, off in layout}
  finally:
    block.close()
    block.unlink()


def prefetched(maker, factory: Tuple[Callable, tuple], indices: Iterable[int], *,
               workers: int = 0, threads: int = 1, prefetch: int = 2) -> Iterator[dict]:
  """Yields maker(i) for i in indices, in order, computed ahead.

  Args:
    maker: builds batches in this process (threads mode).
    factory: (callable, args) that builds an equivalent maker in a worker process.
    workers: > 0: that many spawned worker processes; else `threads` threads.
    prefetch: batches kept ready beyond those being built.
  """
  workers_seen = {}   # pid -> Process of each worker; a broken pool forgets its dead ones.
  if workers > 0:
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker, initargs=(factory,))

    def submit(i):
      future = pool.submit(_worker_batch, i)
      workers_seen.update(getattr(pool, "_processes", None) or {})   # CPython detail.
      return future
    receive = _from_shared
  else:
    workers = max(1, threads)
    pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="interbert_data")
    submit = lambda i: pool.submit(maker, i)
    receive = lambda batch: batch
  queue = collections.deque()
  try:
    it = iter(indices)
    for i in itertools.islice(it, max(1, prefetch) + workers - 1):
      queue.append(submit(i))
    while queue:
      try:
        batch = receive(queue.popleft().result())
        for i in itertools.islice(it, 1):
          queue.append(submit(i))
      except concurrent.futures.process.BrokenProcessPool:
        raise _died(workers_seen) from None
      yield batch
  finally:
    try:
      for future in queue:
        future.cancel()
      if receive is _from_shared:
        # Batches already being built sit in shared memory: collect and free them.
        for future in queue:
          if not future.cancelled():
            try:
              receive(future.result())
            except Exception:  # pylint: disable=broad-except
              pass
      pool.shutdown(wait=False, cancel_futures=True)
    except Exception:  # pylint: disable=broad-except
      pass  # At interpreter exit the threading module may already be torn down.
