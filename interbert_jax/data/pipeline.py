"""Deterministic pretraining input pipeline with InterBERT's masking and exact resume.

Examples are captions (each with its image). Everything random about global example
position g (0, 1, 2, ... over the whole run) derives from (data.seed, epoch, g):
  epoch = g // num_captions; caption = permutation_epoch[g % num_captions], the permutation
  drawn from (data.seed, epoch); the ITM negative (random or hard, itm_negatives.py), the
  MSM and MRM masks from a generator keyed by (data.seed, split, epoch, g).
Global batch k holds positions [k B, (k+1) B); host h of H reads the contiguous slice
[k B + h B/H, k B + (h+1) B/H). Hence:
  - two iterators built from the same config yield identical batches (bit for bit);
  - `train_iterator(config, start_step=k)` yields exactly the batches a straight run yields
    from step k on: the pipeline position a trainer checkpoints is just the step;
  - concatenating the H hosts' batches of step k (in host order) gives the 1-host batch k.
Grain (grain_loader.py) builds whole batches ahead, on read threads or worker processes; as
every batch is a pure function of its index, the result does not depend on scheduling.
Batches are dicts of numpy arrays with the keys/dtypes/shapes of docs/design.md.
"""
from __future__ import annotations

import functools
import logging
import os
import types
from typing import Iterator, Optional

import numpy as np

from interbert_jax import errors
from interbert_jax.data import itm_negatives
from interbert_jax.data import neighbours
from interbert_jax.data import grain_loader
from interbert_jax.data import masking
from interbert_jax.data import schema
from interbert_jax.data import tokenizer as tokenizer_lib

_TRAIN_STREAM, _EVAL_STREAM = 1, 2


class PipelineConfigError(errors.UserError, ValueError):
  """The config and the dataset do not fit together (the message names the key)."""


class DataReadError(errors.RunError, RuntimeError):
  """An image record cannot be read (corrupt shard): the message names the shard file and
  the record index (schema.record_problem); `validate` reports the same line."""


# ----------------------------------------------------------------------------- dataset

def data_dir(config) -> str:
  """The prepared dataset directory: config.data.dir or the (generated) synthetic data."""
  if config.data.dir:
    return config.data.dir
  from interbert_jax.data import synthetic
  return synthetic.ensure_synthetic(config)


def dataset_info(config, directory: str = "") -> dict:
  """Facts of the dataset at `directory`, by default the one the config points at
  (generating synthetic data if needed)."""
  d = directory or data_dir(config)
  meta = schema.read_metadata(d)
  split = config.data.train_split
  if split not in meta["splits"]:
    raise PipelineConfigError(f"config.data.train_split={split!r}: {d} has splits "
                              f"{sorted(meta['splits'])}")
  return dict(vocab_size=int(meta["vocab_size"]), feature_dim=int(meta["feature_dim"]),
              num_classes=int(meta["num_classes"]),
              num_captions=int(meta["splits"][split]["captions"]),
              vocab_path=os.path.join(d, schema.VOCAB_FILE), data_dir=d,
              class_target=meta["class_target"])


STATS_SAMPLE_IMAGES = 1000   # images read for the statistics of a split prepared without them


def feature_stats(config, directory: str = "") -> dict:
  """{mean, std, rms_mean, rms_std: [F] float32, regions} of the training split's region
  features: the split's feature_stats.npz (written by prepare and the synthetic
  generator), or, for a split prepared before that file existed, computed from its first
  STATS_SAMPLE_IMAGES images."""
  d = directory or data_dir(config)
  split = config.data.train_split
  stored = schema.read_feature_stats(d, split)
  if stored is not None:
    logging.info("feature statistics of %s/%s: %d regions, mean |mean| %.3g, mean std %.3g",
                 d, split, stored["regions"], float(np.abs(stored["mean"]).mean()),
                 float(stored["std"].mean()))
    return stored
  images = _Split(config, split, d)
  acc = schema.FeatureStatsAccumulator(images.F)
  n = min(len(images.images), STATS_SAMPLE_IMAGES)
  for i in range(n):
    acc.add(images.record(i)["features"])
  logging.info("%s/%s has no %s (prepared before it existed): feature statistics from its "
               "first %d images (%d regions); prepare it again to record them over every "
               "region", d, split, schema.FEATURE_STATS_FILE, n, acc.count)
  return acc.arrays()


def validate(config, meta: dict) -> None:
  """Checks that config and dataset fit; raises PipelineConfigError naming the key.

  Checks of the config alone are in training/config_validation.py (run first)."""
  m = config.model
  errors = []
  if meta["vocab_size"] > m.vocab_size:
    errors.append(f"dataset vocab_size {meta['vocab_size']} > config.model.vocab_size "
                  f"{m.vocab_size}")
  if meta["feature_dim"] != m.feature_dim:
    errors.append(f"dataset feature_dim {meta['feature_dim']} != config.model.feature_dim "
                  f"{m.feature_dim}")
  if meta["num_classes"] != m.num_region_classes:
    errors.append(f"dataset num_classes {meta['num_classes']} != "
                  f"config.model.num_region_classes {m.num_region_classes}")
  if errors:
    raise PipelineConfigError("config does not fit the dataset:\n  " + "\n  ".join(errors))


def batch_dims(data_config) -> tuple[int, int, int]:
  """(T, R, P) of the batch contract: text_len, max_regions + 1 (the global image token),
  and the MSM positions max_msm_targets (0 = text_len)."""
  d = data_config
  return int(d.text_len), int(d.max_regions) + 1, int(d.max_msm_targets or d.text_len)


def batch_spec(config, b: int, *, feature_dim: int, num_classes: int) -> dict:
  """key -> (shape, dtype) of a batch of b examples: the batch contract (docs/design.md).

  feature_dim, num_classes: the dataset's (its metadata.json; the model's for shapes only).
  """
  (T, R, P), F, C = batch_dims(config.data), feature_dim, num_classes
  regress = config.model.mrm_target == "regress"
  spec = dict(
      text_ids=((b, T), np.int32), text_mask=((b, T), np.int32),
      segment_ids=((b, T), np.int32), region_features=((b, R, F), np.float16),
      region_locations=((b, R, 5), np.float32), region_mask=((b, R), np.int32),
      msm_positions=((b, P), np.int32), msm_targets=((b, P), np.int32),
      msm_weights=((b, P), np.float32), mrm_weights=((b, R), np.float32),
      mrm_target_probs=((b, R, C), np.float16), mrm_target_classes=((b, R), np.int32),
      itm_labels=((b,), np.int32))
  if regress:
    spec["mrm_target_features"] = ((b, R, F), np.float16)
  return spec


class _Split:
  """One split's images (random access) and captions (in memory) plus masking constants."""

  def __init__(self, config, split: str, directory: str = ""):
    self.dir = directory or data_dir(config)
    meta = schema.read_metadata(self.dir)
    if split not in meta["splits"]:
      raise PipelineConfigError(f"split {split!r} (config.data.train_split / eval_split) is "
                                f"not in {self.dir}: it has {sorted(meta['splits'])}")
    self.meta = meta
    self.name = split
    self.images = schema.open_images(self.dir, split)
    if len(self.images) > 0:
      self.record(0)                              # DataReadError now, not at step k.
    self.captions = schema.load_captions(self.dir, split)
    self.num_captions = len(self.captions)
    if self.num_captions == 0:
      raise PipelineConfigError(f"split {split!r} of {self.dir} has no captions")
    if len(np.unique(self.captions.image_index)) < 2 and config.data.itm_negative_prob > 0:
      raise PipelineConfigError(f"split {split!r} of {self.dir}: ITM negatives need "
                                "captions of at least 2 images (config.data.itm_negative_prob)")
    vocab = tokenizer_lib.load_vocab(os.path.join(self.dir, schema.VOCAB_FILE))
    for tok in ("[CLS]", "[SEP]", "[MASK]"):
      if tok not in vocab:
        raise PipelineConfigError(f"{self.dir}/vocab.txt has no {tok} token")
    self.cls_id, self.sep_id, self.mask_id = vocab["[CLS]"], vocab["[SEP]"], vocab["[MASK]"]
    self.vocab_size = int(meta["vocab_size"])
    self.has_distribution = meta["class_target"] == "distribution"
    self.config = config
    d = config.data
    # Plain copies of the config sections read per example (ConfigDict access is slow).
    self.msm_cfg = types.SimpleNamespace(**d.msm.to_dict())
    self.mrm_cfg = types.SimpleNamespace(**d.mrm.to_dict())
    self.itm_negative_prob = float(d.itm_negative_prob)
    self.hard_prob = float(d.hard_negative_prob)
    self.hard = None
    if d.itm_negatives == "hard" and self.itm_negative_prob > 0:
      table = neighbours.cached_neighbours(
          self.dir, split, len(self.images), self.record, int(d.hard_negative_k),
          cache_dir=d.hard_negative_cache_dir)
      self.hard = itm_negatives.HardNegatives(table, self.captions.image_index, self._caption)
    self.max_regions = int(d.max_regions)
    self.adaptive = bool(d.adaptive_regions)
    self.min_regions = int(d.min_regions)
    self.conf_threshold = float(d.region_conf_threshold)
    self.global_from_masked = bool(d.global_from_masked)
    self.T, self.R, self.P = batch_dims(d)
    self.F = int(meta["feature_dim"])
    self.C = int(meta["num_classes"])
    self.regress = config.model.mrm_target == "regress"

  # ------------------------------------------------------------------- per example

  def _caption(self, k: int) -> np.ndarray:
    c = self.captions
    start = int(c.offsets[k])
    end = min(int(c.offsets[k + 1]), start + self.T - 2)   # Truncate before masking.
    return c.token_ids[start:end]

  def _negative(self, rng, image_index: int) -> int:
    """A caption index uniform over the captions of other images (rejection sampling)."""
    for _ in range(1000):
      k = int(rng.integers(self.num_captions))
      if self.captions.image_index[k] != image_index:
        return k
    # Almost every caption belongs to this image: draw from the others explicitly.
    others = np.flatnonzero(self.captions.image_index != image_index)
    return int(others[rng.integers(len(others))])

  def record(self, image_index: int) -> dict:
    """The image record; DataReadError naming the shard file when it cannot be read.
    (ArrayRecord returns no bytes for a shard it cannot open: records.decode says so.)"""
    try:
      return self.images[image_index]
    except Exception as e:  # pylint: disable=broad-except
      raise self._read_error(image_index, e) from None

  def records(self, image_indices) -> list:
    """[record of i for i in image_indices], read in parallel; DataReadError as record()."""
    try:
      return self.images.read(image_indices)
    except Exception:  # pylint: disable=broad-except
      return [self.record(i) for i in image_indices]   # Names the first bad one.

  def _read_error(self, image_index: int, why) -> DataReadError:
    return DataReadError(schema.record_problem(self.dir, self.name, image_index, why) +
                         f"; check the dataset: python -m interbert_jax.data.validate "
                         f"{self.dir} --sample=0")

  def pair(self, rng, caption_index: int) -> tuple[int, int, int]:
    """(image index, caption index, ITM label) of the example of `caption_index`.

    With p = itm_negative_prob the caption is replaced by another image's (label 1): with
    itm_negatives="hard" and p = hard_negative_prob one of the nearest images', else any.
    """
    image_index = int(self.captions.image_index[caption_index])
    if rng.random() >= self.itm_negative_prob:
      return image_index, caption_index, 0
    negative = None
    if self.hard is not None and rng.random() < self.hard_prob:
      negative = self.hard.draw(rng, image_index)
    if negative is None:
      negative = self._negative(rng, image_index)
    return image_index, negative, 1

  def fill(self, out: dict, caption_indices, rngs) -> None:
    """Writes example (caption_indices[r], rngs[r]) into row r of the batch arrays `out`;
    the rows' images are read together (in parallel)."""
    pairs = [self.pair(rng, c) for c, rng in zip(caption_indices, rngs)]
    recs = self.records([image for image, _, _ in pairs])
    for row, ((image, caption, label), rng, rec) in enumerate(zip(pairs, rngs, recs)):
      out["itm_labels"][row] = label
      self.fill_text(out, row, caption, rng)
      self.fill_regions(out, row, image, rng, rec=rec)

  def fill_text(self, out: dict, row: int, caption_index: int, rng=None) -> None:
    """Text: [CLS] w_1..w_n [SEP] pad; MSM on the n caption tokens (rng None: no masking)."""
    tokens = self._caption(caption_index)
    n = tokens.shape[0]
    ids = out["text_ids"][row]
    ids[0] = self.cls_id
    ids[n + 1] = self.sep_id
    out["text_mask"][row, :n + 2] = 1
    if rng is None:
      ids[1:n + 1] = tokens
      return
    targets = masking.msm_target_mask(rng, n, self.msm_cfg)
    pos = np.flatnonzero(targets)[:self.P]
    if len(pos) < targets.sum():      # Over the fixed target budget: unmask the rest.
      targets = np.zeros_like(targets)
      targets[pos] = True
    corrupted = masking.corrupt_targets(rng, tokens, targets, mask_id=self.mask_id,
                                        vocab_size=self.vocab_size,
                                        mask_prob=self.msm_cfg.mask_prob,
                                        random_prob=self.msm_cfg.random_prob)
    ids[1:n + 1] = corrupted
    k = len(pos)
    out["msm_positions"][row, :k] = pos + 1
    out["msm_targets"][row, :k] = tokens[pos]
    out["msm_weights"][row, :k] = 1.0

  def fill_regions(self, out: dict, row: int, image_index: int, rng=None,
                   rec: Optional[dict] = None) -> None:
    """Regions: [global, r_1..r_K, pad]; MRM on the K real regions (rng None: no masking,
    and only the model-input keys are written). rec: image_index's record, if read."""
    rec = self.record(image_index) if rec is None else rec
    keep = masking.select_regions(self._confidence(rec), max_regions=self.max_regions,
                                  adaptive=self.adaptive, min_regions=self.min_regions,
                                  threshold=self.conf_threshold)
    nk = len(keep)
    identity = nk == rec["features"].shape[0] and (nk == 0 or keep[-1] == nk - 1)
    feats = rec["features"] if identity else rec["features"][keep]
    boxes = rec["boxes"] if identity else rec["boxes"][keep]
    f = out["region_features"][row]
    f[1:nk + 1] = feats
    loc = out["region_locations"][row]
    loc[0] = masking.GLOBAL_LOCATION
    loc[1:nk + 1] = masking.region_locations(boxes, rec["width"], rec["height"])
    out["region_mask"][row, :nk + 1] = 1
    if rng is None:
      if nk:
        f[0] = masking.global_feature(feats)
      return
    mrm_targets, zeroed = masking.mrm_masks(rng, boxes, self.mrm_cfg)
    f[1:nk + 1][zeroed] = 0
    if nk:
      f[0] = masking.global_feature(f[1:nk + 1] if self.global_from_masked else feats)
    out["mrm_weights"][row, 1:nk + 1] = mrm_targets
    classes = rec["object_ids"] if identity else rec["object_ids"][keep]
    out["mrm_target_classes"][row, 1:nk + 1] = classes
    if self.has_distribution:
      out["mrm_target_probs"][row, 1:nk + 1] = (rec["cls_prob"] if identity
                                               else rec["cls_prob"][keep])
    else:
      out["mrm_target_probs"][row, np.arange(1, nk + 1), classes] = 1.0
    if self.regress:
      out["mrm_target_features"][row, 1:nk + 1] = feats

  def _confidence(self, rec: dict) -> np.ndarray:
    """Each region's detector confidence [N] for adaptive selection: with a class
    distribution, recomputed from it (masking.detector_confidence: background excluded;
    datasets prepared before 2026-12-08 stored the max over all classes), else the stored
    object confidence."""
    if self.adaptive and self.has_distribution:
      return masking.detector_confidence(rec["cls_prob"])
    return rec["object_conf"]

  def batch_spec(self, b: int) -> dict:
    """key -> (shape, dtype) of a host batch of b examples (the batch contract)."""
    return batch_spec(self.config, b, feature_dim=self.F, num_classes=self.C)

  def empty_batch(self, b: int) -> dict:
    return {k: np.zeros(shape, dtype) for k, (shape, dtype) in self.batch_spec(b).items()}


# ----------------------------------------------------------------------------- order

@functools.lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The caption order of one training epoch, int64 [n], a function of (seed, epoch)."""
  return np.random.default_rng([seed, 0, epoch]).permutation(n)


def example_rng(seed: int, stream: int, epoch: int, position: int) -> np.random.Generator:
  """The generator of one example's ITM/MSM/MRM draws."""
  return np.random.default_rng([seed, stream, epoch, position])


def example_at(kind: str, seed: int, position: int, n: int) -> int:
  """The example at global position g of n: training: permutation_epoch[g % n] of epoch
  g // n; eval: g % n (stored order, wrapping around)."""
  if kind == "train":
    epoch, j = divmod(position, n)
    return int(epoch_permutation(seed, epoch, n)[j])
  return position % n


def _train_batch(split: _Split, step: int, host_batch: int, process_index: int,
                 out: Optional[dict] = None) -> dict:
  d = split.config.data
  m = split.num_captions
  out = split.empty_batch(host_batch) if out is None else out
  first = step * split.config.batch_size + process_index * host_batch
  captions, rngs = [], []
  for g in range(first, first + host_batch):
    epoch, j = divmod(g, m)
    captions.append(int(epoch_permutation(int(d.seed), epoch, m)[j]))
    rngs.append(example_rng(int(d.seed), _TRAIN_STREAM, epoch, g))
  split.fill(out, captions, rngs)
  return out


def _eval_batch(split: _Split, index: int, host_batch: int, global_batch: int,
                process_index: int, out: Optional[dict] = None) -> dict:
  d = split.config.data
  out = split.empty_batch(host_batch) if out is None else out
  first = index * global_batch + process_index * host_batch
  positions = range(first, first + host_batch)
  split.fill(out, [g % split.num_captions for g in positions],   # In order; wraps around.
             [example_rng(int(d.seed), _EVAL_STREAM, 0, g) for g in positions])
  return out


class _BatchMaker:
  """index -> host batch: training step `index` or eval batch `index` of a split."""

  def __init__(self, config, kind: str, split: str, process_index: int, process_count: int):
    if not 0 <= process_index < process_count:
      raise PipelineConfigError(f"process_index {process_index} not in [0, {process_count})")
    self.split = _Split(config, split)
    validate(config, self.split.meta)
    self.kind = kind
    self.global_batch = config.batch_size
    self.host_batch = config.batch_size // process_count
    self.process_index = process_index

  def spec(self) -> dict:
    """key -> (shape, dtype) of the host batches this maker builds."""
    return self.split.batch_spec(self.host_batch)

  def __call__(self, index: int, out: Optional[dict] = None) -> dict:
    if self.kind == "train":
      return _train_batch(self.split, index, self.host_batch, self.process_index, out)
    return _eval_batch(self.split, index, self.host_batch, self.global_batch,
                       self.process_index, out)


def _loader_options(config) -> dict:
  d = config.data
  return dict(workers=int(d.num_workers),
              threads=int(d.num_threads) or (os.cpu_count() or 1),
              prefetch=int(d.prefetch))


# ----------------------------------------------------------------------------- API

def maker_iterator(maker_cls, config, kind: str, *, start_step: int = 0, num_batches=None,
                   process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
  """Prefetched batches of a fine-tuning batch maker `maker_cls(config, kind, split,
  process_index, process_count)` (a grain_loader maker with `num_eval_batches()`):
  training from `start_step` on (infinite), or eval batches 0..num_batches-1 (default
  the maker's `num_eval_batches()`)."""
  split = config.data.train_split if kind == "train" else config.data.eval_split
  args = (config, kind, split, process_index, process_count)
  maker = maker_cls(*args)
  start, stop = (start_step, None) if kind == "train" else (
      0, num_batches or maker.num_eval_batches())
  return grain_loader.batches(maker, (maker_cls, args), start, stop,
                              **_loader_options(config))


def steps_per_epoch(config, directory: str = "") -> float:
  """Training steps per pass over the training captions (of `directory`'s dataset)."""
  return dataset_info(config, directory)["num_captions"] / config.batch_size


def train_iterator(config, *, start_step: int = 0, process_index: int = 0,
                   process_count: int = 1) -> Iterator[dict]:
  """Infinite iterator of this host's training batches from `start_step` on.

  Host batch = config.batch_size // process_count. Batch k of a run started at step s is
  the batch k of a run started at 0 (exact resume: checkpoint the step).
  """
  args = (config, "train", config.data.train_split, process_index, process_count)
  return grain_loader.batches(_BatchMaker(*args), (_BatchMaker, args),
                              start_step, None, **_loader_options(config))


def eval_iterator(config, *, split: Optional[str] = None, num_batches: Optional[int] = None,
                  process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
  """Finite, deterministic iterator over a split (same captions and masks every call).

  Batch k holds captions [k B, (k+1) B) of the split in stored order (wrapping around when
  the split is smaller); num_batches defaults to max(1, num_captions // B).
  """
  args = (config, "eval", split or config.data.eval_split, process_index, process_count)
  maker = _BatchMaker(*args)
  if num_batches is None:
    num_batches = max(1, maker.split.num_captions // config.batch_size)
  return grain_loader.batches(maker, (_BatchMaker, args), 0, num_batches,
                              **_loader_options(config))
