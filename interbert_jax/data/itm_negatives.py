"""Hard ITM negatives: captions of the images nearest to an example's image.

`config.data.itm_negatives`:
  "random"  the reference: a mismatched pair takes a caption of another image, uniformly;
  "hard"    a negative is, with probability `data.hard_negative_prob`, a caption of one of
            the `data.hard_negative_k` images nearest to the pair's image, else random.
Nearest = largest cosine similarity of the images' mean-pooled region features (all of an
image's regions, before masking), self excluded, ties broken by the lower image index.
The neighbour table, int32 [num_images, K], is computed once per (dataset split, K) and
cached beside the dataset (DIR/hard_negatives_v1_<split>_k<K>.npy), or under
`data.hard_negative_cache_dir` / ~/.cache/interbert_jax/hard_negatives/ when the dataset
directory is not writable (or not local). The computation is O(num_images^2 x features)
in blocks: minutes for 10^5 images, not meant for 10^6+ (use a subset there).

A hard draw never takes a caption whose tokens equal one of the pair's own image's captions
(a duplicate caption would be a positive labelled "mismatched"); with no such candidate the
negative is random. Every draw uses the example's generator, so negatives are a pure
function of (data.seed, epoch, position) like the rest of the example.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from typing import Callable

import numpy as np

ITM_NEGATIVES = ("random", "hard")
_VERSION = 1


def image_embeddings(record: Callable[[int], dict], num_images: int) -> np.ndarray:
  """L2-normalised mean region feature of every image, float32 [num_images, F]."""
  rows = []
  for i in range(num_images):
    f = np.asarray(record(i)["features"], np.float32)
    rows.append(f.mean(axis=0) if f.shape[0] else None)
  dim = next((r.shape[0] for r in rows if r is not None), 1)
  emb = np.stack([r if r is not None else np.zeros((dim,), np.float32) for r in rows])
  norm = np.linalg.norm(emb, axis=1, keepdims=True)
  return emb / np.maximum(norm, 1e-12)


def nearest_images(emb: np.ndarray, k: int, block: int = 2048) -> np.ndarray:
  """The k most cosine-similar other images of each row of emb [N, F] -> int32 [N, min(k, N-1)].

  Most similar first; equal similarities keep the lower index first.
  """
  n = emb.shape[0]
  k = min(k, n - 1)
  out = np.empty((n, max(k, 0)), np.int32)
  if k <= 0:
    return out
  for start in range(0, n, block):
    sim = emb[start:start + block] @ emb.T                       # [b, N]
    rows = np.arange(sim.shape[0])
    sim[rows, start + rows] = -np.inf                            # never yourself
    # A stable sort of -similarity: most similar first, ties by the lower index.
    out[start:start + block] = np.argsort(-sim, axis=1, kind="stable")[:, :k]
  return out


def _writable(directory: str) -> bool:
  return "://" not in directory and os.path.isdir(directory) and os.access(directory, os.W_OK)


def cache_file(dataset_dir: str, split: str, k: int, cache_dir: str = "") -> str:
  """Where the neighbour table of (dataset_dir, split, k) lives (see the module doc)."""
  name = f"hard_negatives_v{_VERSION}_{split}_k{k}.npy"
  if not cache_dir and _writable(dataset_dir):
    return os.path.join(dataset_dir, name)
  base = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "interbert_jax",
                                   "hard_negatives")
  key = hashlib.sha256(os.path.abspath(dataset_dir).encode()
                       if "://" not in dataset_dir else dataset_dir.encode()).hexdigest()[:16]
  return os.path.join(base, key, name)


def neighbor_table(dataset_dir: str, split: str, k: int, record: Callable[[int], dict],
                   num_images: int, cache_dir: str = "") -> np.ndarray:
  """int32 [num_images, min(k, num_images - 1)], loaded from the cache or computed and cached."""
  path = cache_file(dataset_dir, split, k, cache_dir)
  if os.path.exists(path):
    table = np.load(path)
    if table.shape[0] == num_images:
      return table
    logging.warning("%s: %d rows for %d images, recomputing", path, table.shape[0], num_images)
  t0 = time.perf_counter()
  logging.info("hard negatives: nearest %d of %d %s images by region features...", k,
               num_images, split)
  table = nearest_images(image_embeddings(record, num_images), k)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}.npy"
  np.save(tmp, table)
  os.replace(tmp, path)          # atomic: concurrent loaders see a whole file or none
  logging.info("hard negatives: %s in %.1fs", path, time.perf_counter() - t0)
  return table


class HardNegatives:
  """Draws hard negative captions for one split."""

  def __init__(self, neighbors: np.ndarray, caption_image: np.ndarray,
               caption_tokens: Callable[[int], np.ndarray]):
    """neighbors int [num_images, K]; caption_image int [num_captions] (image of caption)."""
    self.neighbors = neighbors
    self.tokens = caption_tokens
    self._order = np.argsort(caption_image, kind="stable")
    self._start = np.searchsorted(caption_image[self._order],
                                  np.arange(neighbors.shape[0] + 1))

  def captions_of(self, image: int) -> np.ndarray:
    return self._order[self._start[image]:self._start[image + 1]]

  def candidates(self, image: int) -> np.ndarray:
    """Captions of the image's neighbours, minus any equal to one of its own captions."""
    own = {self.tokens(c).tobytes() for c in self.captions_of(image)}
    cands = [c for j in self.neighbors[image] for c in self.captions_of(int(j))
             if self.tokens(c).tobytes() not in own]
    return np.asarray(cands, np.int64)

  def draw(self, rng: np.random.Generator, image: int) -> int | None:
    """A caption index uniform over candidates(image), or None if there is none."""
    cands = self.candidates(image)
    if not len(cands):
      return None
    return int(cands[rng.integers(len(cands))])
