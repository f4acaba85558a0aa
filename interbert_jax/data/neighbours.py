"""Nearest-neighbour images by region-feature similarity, computed once per split and cached.

Retrieval fine-tuning draws hard-negative captions from the captions of an image's K
nearest images. An image's vector is the mean of its region features (the global image
token, `masking.global_feature`); similarity is cosine.

  neighbours = nearest_neighbours(vectors, k)       # pure: [N, F] -> int32 [N, k]
  neighbours = cached_neighbours(data_dir, split, num_images, record, k)   # cached in
                                                    # <data_dir>/neighbours/<split>_k<k>.npy
"""
import logging
import os
import time

import numpy as np

from interbert_jax.data import masking

CACHE_DIR = "neighbours"


def nearest_neighbours(vectors: np.ndarray, k: int, block: int = 1024) -> np.ndarray:
  """The k most cosine-similar other rows of each row.

  Args:
    vectors: float [N, F]; k: 1 <= k <= N - 1.
  Returns:
    int32 [N, k]: row i's neighbours, most similar first (ties: lower index first); never i.
  """
  n = vectors.shape[0]
  if not 1 <= k < n:
    raise ValueError(f"need 1 <= k < number of images ({n}); got k={k}")
  v = np.asarray(vectors, np.float64)
  v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
  out = np.empty((n, k), np.int32)
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


def cache_path(data_dir: str, split: str, k: int) -> str:
  return os.path.join(data_dir, CACHE_DIR, f"{split}_k{k}.npy")


def cached_neighbours(data_dir: str, split: str, num_images: int, record, k: int) -> np.ndarray:
  """`nearest_neighbours` of the split's image vectors, read from / written to the cache
  beside the dataset (written atomically, so concurrent or killed writers are harmless)."""
  path = cache_path(data_dir, split, k)
  if os.path.exists(path):
    cached = np.load(path)
    if cached.shape == (num_images, k):
      return cached
    logging.warning("%s has shape %s, expected %s: recomputing", path, cached.shape,
                    (num_images, k))
  t0 = time.time()
  neighbours = nearest_neighbours(image_vectors(num_images, record), k)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    np.save(f, neighbours)
  os.replace(tmp, path)
  logging.info("neighbours of %d images (k=%d) computed in %.1fs, cached in %s",
               num_images, k, time.time() - t0, path)
  return neighbours
