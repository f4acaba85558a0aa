"""Nearest-neighbour images by region-feature similarity, computed once per split and cached.

The one home of the image neighbours that hard negatives draw from: pretraining's hard ITM
negatives (`data.itm_negatives="hard"`, data/itm_negatives.py) and retrieval fine-tuning's
hard-negative captions (data/retrieval_batches.py). An image's vector is the mean of all its
region features before masking (`masking.global_feature`); similarity is cosine; ties go to
the lower image index; an image is never its own neighbour.

  neighbours = nearest_neighbours(vectors, k)       # pure: [N, F] -> int32 [N, min(k, N-1)]
  neighbours = cached_neighbours(data_dir, split, num_images, record, k)

The table is cached beside the dataset in `<data_dir>/neighbours/<split>_k<k>.npy`, or, when
the dataset directory is not writable or not local, under `cache_dir` (default
~/.cache/interbert_jax/neighbours/<hash of the dataset path>/). It is O(N^2 F) in blocks:
minutes for 10^5 images, not meant for 10^6+ (use a subset there).
"""
import hashlib
import logging
import os
import time

import numpy as np

from interbert_jax.data import masking

CACHE_DIR = "neighbours"


def nearest_neighbours(vectors: np.ndarray, k: int, block: int = 1024) -> np.ndarray:
  """The k most cosine-similar other rows of each row.

  Args:
    vectors: float [N, F]; k >= 1 (more than N - 1 gives the N - 1 others).
  Returns:
    int32 [N, min(k, N - 1)]: row i's neighbours, most similar first (ties: lower index
    first); never i.
  """
  if k < 1:
    raise ValueError(f"need k >= 1 neighbours; got k={k}")
  n = vectors.shape[0]
  k = min(k, n - 1)
  out = np.empty((n, max(k, 0)), np.int32)
  if k <= 0:
    return out
  v = np.asarray(vectors, np.float64)
  v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
  for start in range(0, n, block):         # [block, N] similarities at a time
    sim = v[start:start + block] @ v.T
    rows = np.arange(sim.shape[0])
    sim[rows, start + rows] = -np.inf
    # Stable sort of -sim: most similar first, ties broken by index.
    out[start:start + block] = np.argsort(-sim, axis=1, kind="stable")[:, :k]
  return out


def image_vectors(num_images: int, record) -> np.ndarray:
  """[N, F] float32: the mean region feature of record(i)["features"], i < num_images."""
  vectors, t0 = [], time.time()
  for i in range(num_images):
    vectors.append(masking.global_feature(np.asarray(record(i)["features"], np.float32)))
    if (i + 1) % 10_000 == 0:
      rate = (i + 1) / (time.time() - t0)
      logging.info("neighbours: %d/%d images read (%.0f/s, ETA %.0fs)", i + 1, num_images,
                   rate, (num_images - i - 1) / rate)
  return np.stack(vectors)


def _writable(directory: str) -> bool:
  return "://" not in directory and os.path.isdir(directory) and os.access(directory, os.W_OK)


def cache_path(data_dir: str, split: str, k: int, cache_dir: str = "") -> str:
  """Where the neighbour table of (data_dir, split, k) lives (see the module docstring)."""
  name = f"{split}_k{k}.npy"
  if not cache_dir and _writable(data_dir):
    return os.path.join(data_dir, CACHE_DIR, name)
  base = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "interbert_jax",
                                   CACHE_DIR)
  source = data_dir if "://" in data_dir else os.path.abspath(data_dir)
  return os.path.join(base, hashlib.sha256(source.encode()).hexdigest()[:16], name)


def cached_neighbours(data_dir: str, split: str, num_images: int, record, k: int,
                      cache_dir: str = "") -> np.ndarray:
  """`nearest_neighbours` of the split's image vectors, read from / written to the cache
  (written atomically, so concurrent or killed writers are harmless)."""
  path = cache_path(data_dir, split, k, cache_dir)
  want = (num_images, min(k, num_images - 1))
  if os.path.exists(path):
    cached = np.load(path)
    if cached.shape == want:
      return cached
    logging.warning("%s has shape %s, expected %s: recomputing", path, cached.shape, want)
  t0 = time.time()
  logging.info("neighbours: nearest %d of %d %s images by region features...", k,
               num_images, split)
  neighbours = nearest_neighbours(image_vectors(num_images, record), k)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    np.save(f, neighbours)
  os.replace(tmp, path)
  logging.info("neighbours of %d images (k=%d) computed in %.1fs, cached in %s",
               num_images, k, time.time() - t0, path)
  return neighbours
