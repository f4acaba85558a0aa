"""The prepared-dataset layout shared by `prepare`, `synthetic` and the input pipeline.

A prepared dataset is a directory DIR:

  DIR/metadata.json          schema_version, feature_dim F, num_classes C, class_target
                             ("distribution" | "object_ids"), vocab_size, lower_case,
                             source_format, splits: {name: {images, captions, skipped}}.
  DIR/vocab.txt              the WordPiece vocabulary the captions were tokenised with.
  DIR/<split>/               ArrayRecord shards images-NNNNN-of-NNNNN.array_record holding
                             the split's images IN INPUT ORDER, so record i is image_index
                             i (random access, see `open_images`); each record is
                             records.py's format (a msgpack header + raw array bytes);
                             metadata.json lists the shards and their record counts.
  DIR/<split>/feature_stats.npz  per-channel mean / std [F] of every region's features,
                             raw and over each region's RMS (FeatureStatsAccumulator);
                             what model.feature_norm standardises with.
  DIR/<split>_captions.npz   image_index int32 [m], offsets int64 [m+1], token_ids int32
                             [sum]; caption k = token_ids[offsets[k]:offsets[k+1]], WordPiece
                             ids WITHOUT [CLS]/[SEP].

One image record (numpy, as returned by `open_images`):
  image_id str; width, height, num_boxes int32 (N); boxes float32 [N,4] pixel x1,y1,x2,y2;
  features float16 [N,F]; cls_prob float16 [N,C] (only when class_target ==
  "distribution"); object_ids int32 [N]; object_conf float32 [N] (from a distribution: the
  largest non-background probability, masking.detector_confidence; class 0 = background).

Images are written with a streaming ArrayRecord writer: memory stays at one record and
order is the input's. Schema version 1 (until 2026-12-08) stored TFDS Example protos
with TFDS metadata; read_metadata names the command that re-prepares such a dataset.
"""
import bisect
import json
import logging
import os
import shutil
import time
from typing import Callable, Dict, Iterable, Mapping, NamedTuple, Optional, Sequence

import numpy as np

from interbert_jax import errors
from interbert_jax.data import masking
from interbert_jax.data import records

SCHEMA_VERSION = 2
CLASS_TARGETS = ("distribution", "object_ids")
METADATA_FILE = "metadata.json"
VOCAB_FILE = "vocab.txt"
DEFAULT_SHARD_BYTES = 256 << 20
# The caption length (tokens, [CLS] and [SEP] included) prepare and validate count against
# when the user gives none: the base config's data.text_len.
DEFAULT_TEXT_LEN = 36
# ArrayRecord chunk compression. "uncompressed" by default: the input pipeline is CPU-bound
# (docs/data_pipeline.md) and zstd costs a decompression per random read.
COMPRESSIONS = ("uncompressed", "zstd", "snappy")
# Features stored as float16 (contract); larger magnitudes would become inf.
FLOAT16_MAX = float(np.finfo(np.float16).max)

# Dataset-level metadata keys that every split of DIR must agree on.
DATASET_KEYS = ("feature_dim", "num_classes", "class_target", "vocab_size", "lower_case",
                "source_format")


class DatasetError(errors.UserError, ValueError):
  """A prepared dataset (or the data being written into it) breaks the layout."""


# ---------------------------------------------------------------------------- metadata


def write_metadata(out_dir, metadata: dict) -> None:
  """Writes DIR/metadata.json atomically (write to a temp file, then rename)."""
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, METADATA_FILE)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(metadata, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def read_metadata(data_dir) -> dict:
  """Reads and checks DIR/metadata.json; raises DatasetError naming the problem."""
  path = os.path.join(data_dir, METADATA_FILE)
  if not os.path.exists(path):
    raise DatasetError(f"{path}: missing (not a prepared dataset: run "
                       "python -m interbert_jax.data.prepare)")
  try:
    with open(path) as f:
      meta = json.load(f)
  except json.JSONDecodeError as e:
    raise DatasetError(f"{path}: not valid JSON ({e})") from None
  if meta.get("schema_version") == 1:
    raise DatasetError(
        f"{data_dir} was prepared with storage schema 1 (TFDS Example records), which this "
        f"version no longer reads: prepare it again from its source, e.g. python -m "
        f"interbert_jax.data.prepare --format={meta.get('source_format', '...')} "
        f"--output_dir={data_dir} --overwrite ... (one run per split)")
  if meta.get("schema_version") != SCHEMA_VERSION:
    raise DatasetError(f"{path}: schema_version {meta.get('schema_version')!r}, "
                       f"this code reads {SCHEMA_VERSION}")
  for key in DATASET_KEYS + ("splits",):
    if key not in meta:
      raise DatasetError(f"{path}: key {key!r} is missing")
  if meta["class_target"] not in CLASS_TARGETS:
    raise DatasetError(f"{path}: class_target {meta['class_target']!r} is not one of "
                       f"{CLASS_TARGETS}")
  return meta


def check_compatible(out_dir, split: str, **dataset_fields) -> None:
  """Raises DatasetError if DIR already holds splits whose dataset-level fields differ.

  Several splits are written by several invocations into the same DIR; they must share
  feature_dim, num_classes, class_target, vocab_size and lower_case (else a model could
  not consume them together). source_format may differ (splits from different files).
  """
  path = os.path.join(out_dir, METADATA_FILE)
  if not os.path.exists(path):
    return
  meta = read_metadata(out_dir)
  for key in DATASET_KEYS:
    if key != "source_format" and key in dataset_fields and meta[key] != dataset_fields[key]:
      raise DatasetError(
          f"{path}: split {split!r} has {key}={dataset_fields[key]!r} but the splits "
          f"already in this directory have {key}={meta[key]!r}; write it to another "
          "directory")


def merge_split_metadata(out_dir, split: str, split_info: dict, **dataset_fields) -> dict:
  """Adds/replaces one split in DIR/metadata.json (see check_compatible)."""
  check_compatible(out_dir, split, **dataset_fields)
  if os.path.exists(os.path.join(out_dir, METADATA_FILE)):
    meta = read_metadata(out_dir)
  else:
    meta = {"schema_version": SCHEMA_VERSION, "splits": {}}
  meta.update(dataset_fields)
  meta["splits"][split] = split_info
  write_metadata(out_dir, meta)
  return meta


def write_vocab(out_dir, vocab_tokens: Sequence[str]) -> None:
  """Writes DIR/vocab.txt, one token per line (id = line number)."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, VOCAB_FILE), "w", encoding="utf-8") as f:
    for token in vocab_tokens:
      f.write(token + "\n")


# ---------------------------------------------------------------------------- features


def to_example(record: Mapping, feature_dim: int, num_classes: int,
               has_distribution: bool) -> dict:
  """Casts an importer record to the stored dtypes; fills object_ids/conf from cls_prob.

  Raises ValueError (message without location: the caller adds file and line) when the
  record's shapes disagree with the dataset, or features overflow float16.
  """
  n = int(record["num_boxes"])
  boxes = np.asarray(record["boxes"], np.float32).reshape(-1, 4)
  features = np.asarray(record["features"])
  if features.ndim != 2 or features.shape != (n, feature_dim):
    raise ValueError(f"features have shape {features.shape}, expected ({n}, {feature_dim})")
  if boxes.shape[0] != n:
    raise ValueError(f"{boxes.shape[0]} boxes for num_boxes={n}")
  features16 = features.astype(np.float16)
  if not np.all(np.isfinite(features16)):
    raise ValueError(f"features are NaN/inf or exceed the float16 range (|x| > {FLOAT16_MAX:g})")
  example = {
      "image_id": str(record["image_id"]),
      "width": np.int32(record["width"]), "height": np.int32(record["height"]),
      "num_boxes": np.int32(n), "boxes": boxes, "features": features16,
  }
  if has_distribution:
    cls_prob = np.asarray(record["cls_prob"], np.float32)
    if cls_prob.shape != (n, num_classes):
      raise ValueError(f"cls_prob has shape {cls_prob.shape}, expected ({n}, {num_classes})")
    example["cls_prob"] = cls_prob.astype(np.float16)
  if record.get("object_ids") is not None:
    example["object_ids"] = np.asarray(record["object_ids"], np.int32).reshape(n)
    example["object_conf"] = np.asarray(record["object_conf"], np.float32).reshape(n)
  elif has_distribution:
    example["object_ids"] = cls_prob.argmax(-1).astype(np.int32)
    example["object_conf"] = masking.detector_confidence(cls_prob)
  else:
    raise ValueError("record has neither cls_prob nor object_ids")
  return example


# ---------------------------------------------------------------------------- writing


class Captions(NamedTuple):
  """All captions of a split. Caption k: token_ids[offsets[k]:offsets[k+1]]."""
  image_index: np.ndarray   # int32 [m]
  offsets: np.ndarray       # int64 [m+1]
  token_ids: np.ndarray     # int32 [sum of lengths]

  def __len__(self):
    return len(self.image_index)

  def caption(self, k: int) -> np.ndarray:
    return self.token_ids[self.offsets[k]:self.offsets[k + 1]]

  def lengths(self) -> np.ndarray:
    return np.diff(self.offsets)


def box_problem(boxes: np.ndarray, width: float, height: float, tolerance: float):
  """None if the [N, 4] pixel boxes (x1, y1, x2, y2) fit the image, else what is wrong.

  `tolerance` is in pixels; an image of size 1x1 holds normalised boxes (importers set
  width = height = 1 when the source has no pixel size), for which it is tolerance / 100.
  The one rule shared by `prepare` (before writing) and `validate` (after).
  """
  w, h = float(width), float(height)
  if w <= 0 or h <= 0:
    return f"image size {w:g}x{h:g} is not positive"
  if w <= 1 and h <= 1:
    tolerance = tolerance / 100.0
  x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
  bad = ((x1 < -tolerance) | (y1 < -tolerance) | (x2 > w + tolerance)
         | (y2 > h + tolerance) | (x2 < x1) | (y2 < y1) | ~np.isfinite(boxes).all(1))
  if bad.any():
    i = int(np.argmax(bad))
    return (f"box {i} = {boxes[i].tolist()} is outside the {w:g}x{h:g} image "
            f"(tolerance {tolerance:g}) or inverted; {int(bad.sum())} bad boxes")
  return None


def captions_path(data_dir, split):
  """DIR/<split>_captions.npz (`split` a plain name: errors.check_name)."""
  return os.path.join(data_dir, f"{check_split_name(split)}_captions.npz")


def split_exists(data_dir, split) -> bool:
  """Whether DIR already holds `split`'s files (its directory or its captions); a
  metadata.json entry whose files are gone is a leftover that writing replaces."""
  return (os.path.exists(split_dir(data_dir, split))
          or os.path.exists(captions_path(data_dir, split)))


def check_new_split(data_dir, split, overwrite: bool) -> None:
  """Raises DatasetError when DIR already holds `split` and `overwrite` is off: a split
  is replaced only when asked. Called before any work."""
  if not overwrite and split_exists(data_dir, split):
    raise DatasetError(f"{split_dir(data_dir, split)}: split {split!r} exists in "
                       f"{data_dir}; pass --overwrite to replace it (other splits are "
                       "kept), or choose another --split / --output_dir")


def _shard_name(index, total):
  return f"images-{index:05d}-of-{total:05d}.array_record"


def write_split(out_dir, split: str, images: Iterable[Mapping],
                captions: Mapping[str, Sequence[Sequence[int]]], *,
                feature_dim: int, num_classes: int, class_target: str,
                vocab_size: int, lower_case: bool, source_format: str,
                skipped: Optional[Dict[str, int]] = None,
                extra_split_info: Optional[dict] = None,
                shard_bytes: int = DEFAULT_SHARD_BYTES,
                compression: str = "uncompressed",
                log_every: int = 1000,
                overwrite: bool = False,
                on_image: Optional[Callable[[int, Mapping], None]] = None) -> dict:
  """Streams `images` into DIR/<split>/, writes the captions and merges metadata.json.

  Args:
    images: iterable of image records (see the module docstring; features may be any
      float dtype, cls_prob is needed when class_target == "distribution"). Consumed one
      record at a time; image_index = position in this iterable.
    captions: image_id -> list of token-id sequences (without [CLS]/[SEP]); looked up
      as each image is written; images without an entry get no caption.
    skipped: {reason: count} recorded in metadata (the caller's bad-record counts).
    extra_split_info: more per-split fields for metadata.json.
    compression: ArrayRecord chunk compression: "uncompressed" (the default: the input
      pipeline is CPU-bound), "zstd" (smaller files, a decompression per read), "snappy".
    on_image: called as on_image(image_index, record) after each record is written.
    overwrite: replace the split if DIR already holds it (else DatasetError before any
      work). `split` must be a plain name (errors.check_name): nothing outside DIR is
      ever written or removed.

  Returns the split's metadata entry: {"images", "captions", "images_without_captions",
  "skipped", ...}. The split appears only when complete (written to a temp dir, renamed).
  """
  if class_target not in CLASS_TARGETS:
    raise ValueError(f"class_target {class_target!r} is not one of {CLASS_TARGETS}")
  if compression not in COMPRESSIONS:
    raise ValueError(f"compression {compression!r} is not one of {COMPRESSIONS}")
  # Fail before streaming anything, not after hours of writing.
  check_split_name(split)
  check_new_split(out_dir, split, overwrite)
  check_compatible(out_dir, split, feature_dim=int(feature_dim), num_classes=int(num_classes),
                   class_target=class_target, vocab_size=int(vocab_size),
                   lower_case=bool(lower_case))
  os.makedirs(out_dir, exist_ok=True)
  final_dir = split_dir(out_dir, split)
  tmp_dir = os.path.join(out_dir, f".{split}.tmp")
  shutil.rmtree(tmp_dir, ignore_errors=True)
  os.makedirs(tmp_dir)

  try:
    return _write_split(out_dir, split, images, captions, tmp_dir, final_dir,
                        feature_dim=feature_dim, num_classes=num_classes,
                        class_target=class_target, vocab_size=vocab_size,
                        lower_case=lower_case, source_format=source_format,
                        skipped=skipped, extra_split_info=extra_split_info,
                        shard_bytes=shard_bytes, compression=compression,
                        log_every=log_every, on_image=on_image)
  finally:  # A failed run leaves no half-written split behind.
    shutil.rmtree(tmp_dir, ignore_errors=True)


FEATURE_STATS_FILE = "feature_stats.npz"


def region_rms_normalised(features, eps: float = 1e-6):
  """Each region's features divided by their root mean square: [..., F] -> [..., F]
  (all-zero regions stay 0). What `model.feature_norm=rms_standardize` standardises."""
  f = np.asarray(features, np.float64)
  rms = np.sqrt(np.mean(np.square(f), axis=-1, keepdims=True))
  return f / np.maximum(rms, eps)


class FeatureStatsAccumulator:
  """Per-channel mean and standard deviation of the stored (float16) region features over
  every region of a split, raw and after region_rms_normalised, accumulated in float64 as
  the records stream past; written to DIR/<split>/feature_stats.npz (mean, std, rms_mean,
  rms_std float32 [F]; regions). The trainer standardises the model's input with the
  training split's (model.feature_norm, docs/plateau.md)."""

  def __init__(self, feature_dim: int):
    self.count = 0
    self._sums = {k: np.zeros(feature_dim, np.float64)
                  for k in ("raw", "raw_sq", "rms", "rms_sq")}

  def add(self, features) -> None:
    """features: [N, F] one image's regions."""
    f = np.asarray(features, np.float64)
    g = region_rms_normalised(f)
    self.count += f.shape[0]
    for name, x in (("raw", f), ("rms", g)):
      self._sums[name] += x.sum(0)
      self._sums[name + "_sq"] += np.square(x).sum(0)

  def result(self, kind: str = "raw"):
    """-> (mean [F], std [F]) float32 of the raw ("raw") or RMS-normalised ("rms")
    features (zeros when no region was added)."""
    n = max(self.count, 1)
    mean = self._sums[kind] / n
    var = np.maximum(self._sums[kind + "_sq"] / n - np.square(mean), 0.0)
    return mean.astype(np.float32), np.sqrt(var).astype(np.float32)

  def arrays(self) -> dict:
    (mean, std), (rms_mean, rms_std) = self.result("raw"), self.result("rms")
    return dict(mean=mean, std=std, rms_mean=rms_mean, rms_std=rms_std,
                regions=np.int64(self.count))

  def write(self, directory) -> None:
    np.savez(os.path.join(directory, FEATURE_STATS_FILE), **self.arrays())


def read_feature_stats(data_dir, split):
  """-> {mean, std, rms_mean, rms_std: [F] float32, regions: int} of
  DIR/<split>/feature_stats.npz, or None for a split prepared before the file existed."""
  path = os.path.join(split_dir(data_dir, split), FEATURE_STATS_FILE)
  if not os.path.exists(path):
    return None
  try:
    with np.load(path) as z:
      stats = {k: (int(z[k]) if k == "regions" else z[k]) for k in z.files}
  except (OSError, ValueError) as e:
    raise DatasetError(f"{path} cannot be read ({errors.one_line(str(e))}); delete it "
                       "to have training compute the statistics, or prepare the split "
                       "again") from None
  if not {"mean", "std", "rms_mean", "rms_std", "regions"} <= set(stats):
    return None     # an older layout of the file: treated as absent
  return stats


def _writer_io(fn, *args, path):
  """Calls an ArrayRecord writer method; its C++ I/O failures (disk full, a file-size
  limit, no permission) arrive as RuntimeError: the user's disk, not our bug."""
  try:
    return fn(*args)
  except RuntimeError as e:
    raise DatasetError(f"cannot write {path}: {errors.one_line(e)}") from None


def _write_split(out_dir, split, images, captions, tmp_dir, final_dir, *,
                 feature_dim, num_classes, class_target, vocab_size, lower_case,
                 source_format, skipped, extra_split_info, shard_bytes, compression,
                 log_every, on_image):
  from array_record.python import array_record_module

  has_distribution = class_target == "distribution"
  shard_lengths, shard_sizes = [], []
  writer, shard_count, shard_size = None, 0, 0
  cap_index, cap_lengths, cap_tokens = [], [], []
  stats = FeatureStatsAccumulator(feature_dim)
  without_captions = 0
  start = last_log = time.time()
  n = 0
  for record in images:
    example = to_example(record, feature_dim, num_classes, has_distribution)
    data = records.encode(example)
    stats.add(example["features"])
    if writer is None:
      # group_size:1 makes every record individually addressable (random access).
      shard_path = os.path.join(tmp_dir, f"shard{len(shard_lengths):05d}")
      writer = _writer_io(array_record_module.ArrayRecordWriter, shard_path,
                          f"group_size:1,{compression}", path=shard_path)
      shard_count, shard_size = 0, 0
    _writer_io(writer.write, data, path=shard_path)
    shard_count += 1
    shard_size += len(data)
    if shard_size >= shard_bytes:
      _writer_io(writer.close, path=shard_path)
      writer = None
      shard_lengths.append(shard_count)
      shard_sizes.append(shard_size)
    image_captions = captions.get(example["image_id"], ())
    if not len(image_captions):
      without_captions += 1
    for tokens in image_captions:
      tokens = np.asarray(tokens, np.int32)
      cap_index.append(n)
      cap_lengths.append(len(tokens))
      cap_tokens.append(tokens)
    if on_image is not None:
      on_image(n, record)
    n += 1
    if log_every and n % log_every == 0:
      now = time.time()
      logging.info("%s: %d images written (%.1f images/s, %.1f s)", split, n,
                   log_every / max(now - last_log, 1e-9), now - start)
      last_log = now
  if writer is not None:
    _writer_io(writer.close, path=shard_path)
    shard_lengths.append(shard_count)
    shard_sizes.append(shard_size)
  if n == 0:
    raise DatasetError(f"split {split!r}: no images to write")

  total = len(shard_lengths)
  shards = []
  for i in range(total):
    os.rename(os.path.join(tmp_dir, f"shard{i:05d}"),
              os.path.join(tmp_dir, _shard_name(i, total)))
    shards.append([_shard_name(i, total), int(shard_lengths[i])])
  stats.write(tmp_dir)

  offsets = np.zeros(len(cap_lengths) + 1, np.int64)
  np.cumsum(cap_lengths, out=offsets[1:])
  token_ids = (np.concatenate(cap_tokens) if cap_tokens else np.zeros(0, np.int32))
  cap_tmp = os.path.join(out_dir, f".{split}_captions.tmp.npz")
  np.savez(cap_tmp, image_index=np.asarray(cap_index, np.int32), offsets=offsets,
           token_ids=token_ids.astype(np.int32))

  shutil.rmtree(final_dir, ignore_errors=True)
  os.rename(tmp_dir, final_dir)
  os.replace(cap_tmp, captions_path(out_dir, split))
  info = {"images": n, "captions": len(cap_lengths),
          "images_without_captions": without_captions, "skipped": dict(skipped or {}),
          "num_shards": total, "shards": shards, "record_format": records.FORMAT,
          "compression": compression, "bytes": int(sum(shard_sizes)), "feature_stats": {"file": FEATURE_STATS_FILE,
                                                  "regions": stats.count}}
  info.update(extra_split_info or {})
  merge_split_metadata(out_dir, split, info, feature_dim=int(feature_dim),
                       num_classes=int(num_classes), class_target=class_target,
                       vocab_size=int(vocab_size), lower_case=bool(lower_case),
                       source_format=source_format)
  logging.info("%s: %d images, %d captions in %.1f s", split, n, len(cap_lengths),
               time.time() - start)
  return info


# ---------------------------------------------------------------------------- reading


class ImageSource(Sequence):
  """Random-access view of a split's images: `source[i]` is image_index i's record.

  A Grain random-access data source (len, getitem) over the split's ArrayRecord shards,
  in order. `source[i]` decodes with records.decode (read-only numpy views; image_id str,
  scalars np.int32), `raw(i)` is the stored bytes, `read(indices)` a list of records.
  Each shard's reader opens on first use in each process (the source pickles to Grain's
  workers without them). Readers are made for random access (no read-ahead) with a 64 KB
  file buffer: Grain's own ArrayRecordDataSource uses 32 KB, and read 256 base-shape
  records in 37 ms against 25 ms here (2-core AMD EPYC, docs/data_pipeline.md).
  """

  READER_OPTIONS = "readahead_buffer_size:0,max_parallelism:0"
  FILE_BUFFER_BYTES = 64 << 10

  def __init__(self, shards):
    self.shards = [(os.fspath(p), int(n)) for p, n in shards]
    missing = [p for p, _ in self.shards if not os.path.exists(p)]
    if missing:
      raise DatasetError(f"{missing[0]}: missing ({len(missing)} of the split's "
                         f"{len(self.shards)} shard files are)")
    self._ends = np.cumsum([n for _, n in self.shards]).tolist()
    self._readers = [None] * len(self.shards)

  def __getstate__(self):
    return {"shards": self.shards, "_ends": self._ends, "_readers": [None] * len(self.shards)}

  def __len__(self):
    return self._ends[-1] if self._ends else 0

  def raw(self, index: int) -> bytes:
    index = int(index)
    if index < 0:
      index += len(self)
    if not 0 <= index < len(self):
      raise IndexError(f"image index {index} out of range [0, {len(self)})")
    shard = bisect.bisect_right(self._ends, index)
    reader = self._readers[shard]
    if reader is None:
      from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
      path = self.shards[shard][0]
      if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: missing")
      reader = array_record_module.ArrayRecordReader(
          path, self.READER_OPTIONS, file_reader_buffer_size=self.FILE_BUFFER_BYTES)
      self._readers[shard] = reader
    local = index - (self._ends[shard - 1] if shard else 0)
    return reader.read([local])[0]

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    return records.decode(self.raw(index))

  def read(self, indices) -> list:
    """[record of image_index i for i in indices], read one after another (Grain's
    parallel `__getitems__` was slower here: input parallelism comes from its workers)."""
    return [self[i] for i in indices]


def check_split_name(split: str) -> str:
  """`split` if it is a plain name (errors.check_name) that no file of the layout uses."""
  errors.check_name(split, "split")
  if split in (METADATA_FILE, VOCAB_FILE) or split.endswith(("_captions.npz", ".tmp",
                                                             "_choices.jsonl")):
    raise errors.UserError(f"split={split!r} is the name of a dataset file; choose another")
  return split


def split_dir(data_dir, split):
  """DIR/<split>; `split` must be a plain name (check_split_name), never a path."""
  return os.path.join(data_dir, check_split_name(split))


def open_images(data_dir, split) -> ImageSource:
  """Random-access sequence of the split's image records; len = number of images."""
  return ImageSource(shard_files(data_dir, split))


def shard_files(data_dir, split) -> list:
  """[(path, number of records)] of the split's ArrayRecord shards, in record order
  (metadata.json): record i of the split is in the first shard whose cumulative length
  exceeds i."""
  meta = read_metadata(data_dir)
  if split not in meta["splits"]:
    raise DatasetError(f"{data_dir}: no split {split!r} (it has {sorted(meta['splits'])})")
  info = meta["splits"][split]
  if info.get("record_format") != records.FORMAT or "shards" not in info:
    raise DatasetError(f"{data_dir}/{METADATA_FILE}: split {split!r} has record format "
                       f"{info.get('record_format')!r}, this code reads {records.FORMAT!r}; "
                       "prepare the split again")
  where = split_dir(data_dir, split)
  return [(os.path.join(where, name), int(n)) for name, n in info["shards"]]


def locate_record(shards, index: int):
  """Record `index` of a split -> (its shard's path, its index within that shard)."""
  start = 0
  for path, n in shards:
    if index < start + n:
      return path, index - start
    start += n
  raise IndexError(f"record {index} is past the {start} records of the shards")


def error_line(error: BaseException, limit: int = 300) -> str:
  """'Type: first line of the message', at most `limit` characters (reader errors can run
  to many lines)."""
  text = str(error).strip().splitlines()
  line = f"{type(error).__name__}: {text[0] if text else ''}"
  return line if len(line) <= limit else line[:limit - 3] + "..."


def record_problem(data_dir, split, index: int, why) -> str:
  """One line naming the shard file and record of image_index `index` that cannot be read.

  Shared by the input pipeline (its error) and `validate` (its report).
  """
  if isinstance(why, BaseException):
    why = error_line(why)
  try:
    path, local = locate_record(shard_files(data_dir, split), index)
  except Exception:  # pylint: disable=broad-except
    return (f"{split_dir(data_dir, split)}: image_index {index} of split {split!r} cannot "
            f"be read ({why})")
  return (f"{path}: record {local} (image_index {index} of split {split!r}) cannot be read "
          f"({why})")


def check_shards(data_dir, split) -> Dict[str, str]:
  """Opens every shard of the split -> {path: problem line} for each shard that is missing,
  cannot be opened (truncated or garbled file) or holds another number of records than
  metadata.json says."""
  from array_record.python import array_record_module
  problems, start = {}, 0
  unreadable = "truncated, or not an ArrayRecord file"
  for path, n in shard_files(data_dir, split):
    where = f"{path} (image_index {start}..{start + n - 1} of split {split!r})"
    start += n
    if not os.path.exists(path):
      problems[path] = f"{where}: missing"
      continue
    try:
      reader = array_record_module.ArrayRecordReader(path)
      count = reader.num_records() if reader.ok() else None
      reader.close()
    except Exception as e:  # pylint: disable=broad-except
      problems[path] = f"{where}: cannot be read ({error_line(e) if str(e) else unreadable})"
      continue
    if count is None:
      problems[path] = f"{where}: cannot be read ({unreadable})"
    elif count != n:
      problems[path] = f"{where}: {count} records, metadata.json says {n}"
  return problems


def load_captions(data_dir, split) -> Captions:
  """Loads DIR/<split>_captions.npz into memory, checking its internal consistency."""
  path = captions_path(data_dir, split)
  if not os.path.exists(path):
    raise DatasetError(f"{path}: missing (captions of split {split!r})")
  with np.load(path) as z:
    missing = {"image_index", "offsets", "token_ids"} - set(z.files)
    if missing:
      raise DatasetError(f"{path}: arrays {sorted(missing)} are missing")
    caps = Captions(z["image_index"].astype(np.int32), z["offsets"].astype(np.int64),
                    z["token_ids"].astype(np.int32))
  m = len(caps.image_index)
  if (caps.offsets.shape != (m + 1,) or caps.offsets[0] != 0
      or caps.offsets[-1] != len(caps.token_ids) or np.any(np.diff(caps.offsets) < 0)):
    raise DatasetError(f"{path}: offsets do not delimit token_ids "
                       f"({m} captions, {len(caps.token_ids)} tokens)")
  return caps
