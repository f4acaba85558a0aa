"""A prepared split as retrieval inputs: every image and every caption, unmasked, in memory.

Images are laid out as the pipeline lays them out (data/pipeline.py, without MRM): index 0
the global image token (mean of the kept regions' features, location [0, 0, 1, 1, 1]),
then the first `max_regions` regions (0 = all) padded to the split's most. Captions are
`[CLS] w_1..w_n [SEP]` padded to the split's longest caption (not to data.text_len),
truncated only at `max_text_len` (the model's position embeddings).
"""
from __future__ import annotations

import logging
import os
from typing import NamedTuple

import numpy as np

from interbert_jax.data import masking
from interbert_jax.data import schema
from interbert_jax.data import tokenizer as tokenizer_lib


class RetrievalSplit(NamedTuple):
  images: dict          # region_features f16 [N, R, F], region_locations f32 [N, R, 5],
                        # region_mask i32 [N, R]
  captions: dict        # text_ids i32 [M, T], text_mask i32 [M, T]
  caption_image: np.ndarray   # i32 [M]: the image index each caption describes
  image_ids: list


def load_split(data_dir: str, split: str, *, max_images: int = 0, max_captions: int = 0,
               max_regions: int = 0, max_text_len: int = 512) -> RetrievalSplit:
  """The first `max_images` images (0 = all) and the first `max_captions` of their captions.

  Raises schema.DatasetError naming the file when the split is missing or has no captions.
  """
  meta = schema.read_metadata(data_dir)
  if split not in meta["splits"]:
    raise schema.DatasetError(f"{data_dir}: no split {split!r} (it has "
                              f"{sorted(meta['splits'])})")
  source = schema.open_images(data_dir, split)
  caps = schema.load_captions(data_dir, split)
  n = len(source) if not max_images else min(max_images, len(source))
  chosen = np.flatnonzero(caps.image_index < n)
  if max_captions:
    chosen = chosen[:max_captions]
  if not len(chosen):
    raise schema.DatasetError(f"{schema.captions_path(data_dir, split)}: no captions for "
                              f"the first {n} images of split {split!r}: nothing to rank")
  vocab = tokenizer_lib.load_vocab(os.path.join(data_dir, schema.VOCAB_FILE))
  cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]

  lengths = caps.offsets[chosen + 1] - caps.offsets[chosen]
  T = int(min(lengths.max() + 2, max_text_len))
  if lengths.max() + 2 > T:
    logging.warning("%d captions longer than %d tokens are truncated",
                    int((lengths + 2 > T).sum()), T)
  text_ids = np.zeros((len(chosen), T), np.int32)
  text_mask = np.zeros((len(chosen), T), np.int32)
  for row, k in enumerate(chosen):
    tokens = caps.token_ids[caps.offsets[k]:caps.offsets[k + 1]][:T - 2]
    text_ids[row, 0], text_ids[row, 1:len(tokens) + 1] = cls_id, tokens
    text_ids[row, len(tokens) + 1] = sep_id
    text_mask[row, :len(tokens) + 2] = 1

  records = [source[i] for i in range(n)]
  kept = [masking.select_regions(r["object_conf"], max_regions=max_regions or len(r["boxes"]))
          for r in records]
  R = 1 + max(len(k) for k in kept)
  F = int(meta["feature_dim"])
  feats = np.zeros((n, R, F), np.float16)
  locs = np.zeros((n, R, 5), np.float32)
  mask = np.zeros((n, R), np.int32)
  for i, (rec, keep) in enumerate(zip(records, kept)):
    k = len(keep)
    feats[i, 1:k + 1] = rec["features"][keep]
    feats[i, 0] = masking.global_feature(feats[i, 1:k + 1]) if k else 0
    locs[i, 0] = masking.GLOBAL_LOCATION
    locs[i, 1:k + 1] = masking.region_locations(rec["boxes"][keep], rec["width"],
                                                rec["height"])
    mask[i, :k + 1] = 1
  return RetrievalSplit(
      images=dict(region_features=feats, region_locations=locs, region_mask=mask),
      captions=dict(text_ids=text_ids, text_mask=text_mask),
      caption_image=caps.image_index[chosen].astype(np.int32),
      image_ids=[r["image_id"] for r in records])
