"""Finished blocks of a score matrix on disk, so that an evaluation resumes after kill -9.

Layout: DIR/manifest.json (what is being computed: checkpoint fingerprint, data, split,
shapes, dtype, block sizes, devices) and DIR/<a>_<b>.npy per finished block. Every file is
written to a temporary name and renamed, so a killed run leaves only whole blocks. Only
process 0 writes; `done` is process 0's view, broadcast so every process skips the same
blocks. A manifest that differs from this run's is an error (nothing is overwritten).
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from interbert_jax import errors

MANIFEST = "manifest.json"


class StoreMismatchError(errors.UserError, ValueError):
  """The directory holds blocks of another evaluation."""


def _atomic_write(path: str, write) -> None:
  tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    write(f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


class BlockStore:
  """Blocks (a, b) -> float32 arrays under `directory`, for the run `manifest` describes."""

  def __init__(self, directory: str, manifest: dict):
    self.directory = directory
    self.writer = jax.process_index() == 0
    path = os.path.join(directory, MANIFEST)
    if os.path.exists(path):
      with open(path) as f:
        old = json.load(f)
      if old != manifest:
        diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
        raise StoreMismatchError(
            f"{directory} holds blocks of another evaluation (differs in {diff}); remove "
            "it or choose another --output")
    elif self.writer:
      os.makedirs(directory, exist_ok=True)
      _atomic_write(path, lambda f: f.write(json.dumps(manifest, indent=2,
                                                       sort_keys=True).encode()))

  def _path(self, block) -> str:
    return os.path.join(self.directory, f"{block[0]:05d}_{block[1]:05d}.npy")

  def done(self, blocks: list) -> np.ndarray:
    """bool [len(blocks)]: the blocks already on disk (process 0's view, on every process)."""
    mask = np.array([os.path.exists(self._path(b)) for b in blocks], bool)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      mask = np.asarray(multihost_utils.broadcast_one_to_all(mask))
    return mask

  def put(self, block, values: np.ndarray) -> None:
    if self.writer:
      _atomic_write(self._path(block), lambda f: np.save(f, np.asarray(values, np.float32)))

  def get(self, block) -> np.ndarray:
    return np.load(self._path(block))
