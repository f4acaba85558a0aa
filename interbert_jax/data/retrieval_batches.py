"""Retrieval fine-tuning batches: four image-text pairs per caption, as the reference.

For caption c of image i (an "anchor"), rows 4q .. 4q+3 of the batch hold
  0: (i, c)                                   itm_labels 0 (matched)
  1: (i, a random caption of another image)   1
  2: (a random other image, c)                1
  3: (i, a hard negative: a caption of one of i's K nearest images)   1
with K = config.finetune.num_neighbours (data/neighbours.py, cached beside the dataset).
No MSM/MRM masking. Anchor position g (0, 1, ... over the run) is caption
permutation_epoch[g % m] with epoch = g // m, and its draws come from a generator keyed by
(data.seed, stream, epoch, g), as in data/pipeline.py: global batch k holds anchors
[k B/4, (k+1) B/4), host h its contiguous share, so a batch is a pure function of
(config, k, h) and resuming at step k is exact.

Keys (docs/design.md batch contract, the model inputs only): text_ids, text_mask,
segment_ids [B,T]; region_features [B,R,F]; region_locations [B,R,5]; region_mask [B,R];
itm_labels [B].
"""
import functools

import numpy as np

from interbert_jax.data import neighbours as neighbours_lib
from interbert_jax.data import pipeline

PAIRS_PER_CAPTION = 4
KEYS = ("text_ids", "text_mask", "segment_ids", "region_features", "region_locations",
        "region_mask", "itm_labels")
_TRAIN_STREAM, _EVAL_STREAM = 3, 4


def data_dir(config) -> str:
  """config.data.dir, or the synthetic downstream retrieval set (its own train images)."""
  if config.data.dir:
    return config.data.dir
  from interbert_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  return synthetic.ensure_retrieval(config)


class RetrievalBatches:
  """index -> host batch: training step `index` or eval batch `index` of a split."""

  def __init__(self, config, kind: str, split: str, process_index: int, process_count: int):
    if config.batch_size % (PAIRS_PER_CAPTION * process_count):
      raise pipeline.PipelineConfigError(
          f"config.batch_size={config.batch_size}: retrieval batches hold {PAIRS_PER_CAPTION} "
          f"pairs per caption, so it must be divisible by {PAIRS_PER_CAPTION} x "
          f"{process_count} processes")
    self.split = pipeline._Split(config, split, data_dir(config))  # pylint: disable=protected-access
    pipeline.validate(config, self.split.meta)
    self.kind, self.seed = kind, int(config.data.seed)
    self.groups = config.batch_size // PAIRS_PER_CAPTION // process_count   # per host
    self.global_groups = config.batch_size // PAIRS_PER_CAPTION
    self.process_index = process_index
    caps = self.split.captions
    num_images = len(self.split.images)
    k = min(int(config.finetune.num_neighbours), num_images - 1)
    self.neighbours = neighbours_lib.cached_neighbours(self.split.dir, split, num_images,
                                                       self.split.record, k)
    # Captions of image i: by_image[starts[i]:starts[i+1]] (stored order).
    self.by_image = np.argsort(caps.image_index, kind="stable")
    self.starts = np.searchsorted(caps.image_index[self.by_image], np.arange(num_images + 1))
    self.captioned = np.flatnonzero(np.diff(self.starts) > 0)   # images with captions

  def spec(self) -> dict:
    full = self.split.batch_spec(self.groups * PAIRS_PER_CAPTION)
    return {key: full[key] for key in KEYS}

  def _caption_of(self, rng, image: int) -> int:
    lo, hi = self.starts[image], self.starts[image + 1]
    return int(self.by_image[lo + rng.integers(hi - lo)])

  def _other_image(self, rng, image: int) -> int:
    while True:                   # >= 2 captioned images (checked by _Split)
      other = int(self.captioned[rng.integers(len(self.captioned))])
      if other != image:
        return other

  def _hard_negative(self, rng, image: int) -> int:
    pool = [n for n in self.neighbours[image] if self.starts[n + 1] > self.starts[n]]
    if not pool:                  # no neighbour has captions: a random negative instead
      return self.split._negative(rng, image)  # pylint: disable=protected-access
    return self._caption_of(rng, int(pool[rng.integers(len(pool))]))

  def fill_group(self, out: dict, q: int, caption: int, rng) -> None:
    """Writes the 4 pairs of anchor `caption` into rows 4q .. 4q+3 of `out`."""
    split = self.split
    image = int(split.captions.image_index[caption])
    pairs = ((image, caption, 0),
             (image, split._negative(rng, image), 1),  # pylint: disable=protected-access
             (self._other_image(rng, image), caption, 1),
             (image, self._hard_negative(rng, image), 1))
    for offset, (img, cap, label) in enumerate(pairs):
      row = PAIRS_PER_CAPTION * q + offset
      split.fill_text(out, row, cap)
      split.fill_regions(out, row, img)
      out["itm_labels"][row] = label

  def __call__(self, index: int, out=None) -> dict:
    if out is None:
      out = {k: np.zeros(shape, dtype) for k, (shape, dtype) in self.spec().items()}
    m = self.split.num_captions
    first = index * self.global_groups + self.process_index * self.groups
    for q in range(self.groups):
      g = first + q
      caption = pipeline.example_at(self.kind, self.seed, g, m)
      if self.kind == "train":
        rng = pipeline.example_rng(self.seed, _TRAIN_STREAM, g // m, g)
      else:
        rng = pipeline.example_rng(self.seed, _EVAL_STREAM, 0, g)
      self.fill_group(out, q, caption, rng)
    return out

  def num_eval_batches(self) -> int:
    """Default eval length: the full batches of one pass over the captions."""
    return max(1, self.split.num_captions // self.global_groups)


train_iterator = functools.partial(pipeline.maker_iterator, RetrievalBatches, kind="train")
eval_iterator = functools.partial(pipeline.maker_iterator, RetrievalBatches, kind="eval")


def steps_per_epoch(config) -> float:
  """Training steps per pass over the training captions (4 pairs each)."""
  return PAIRS_PER_CAPTION * pipeline.steps_per_epoch(config, data_dir(config))
