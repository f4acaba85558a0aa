"""Hard ITM negatives: captions of the images nearest to an example's image.

`config.data.itm_negatives`:
  "random"  the reference: a mismatched pair takes a caption of another image, uniformly;
  "hard"    a negative is, with probability `data.hard_negative_prob`, a caption of one of
            the `data.hard_negative_k` images nearest to the pair's image, else random.
Nearest = the neighbour table of data/neighbours.py (cosine of the images' mean region
features, computed once per (split, K) and cached beside the dataset, or under
`data.hard_negative_cache_dir` when the dataset directory is not writable or not local).

A hard draw never takes a caption whose tokens equal one of the pair's own image's captions
(a duplicate caption would be a positive labelled "mismatched"); with no such candidate the
negative is random. Every draw uses the example's generator, so negatives are a pure
function of (data.seed, epoch, position) like the rest of the example.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

ITM_NEGATIVES = ("random", "hard")


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
