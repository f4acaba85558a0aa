r"""Prepares region features + captions into the layout of data/schema.py.

  python -m interbert_jax.data.prepare --format=butd_tsv \
      --features=/data/cc/train_*.tsv --captions=/data/cc/train_captions.jsonl \
      --vocab=/data/bert-base-uncased/vocab.txt --output_dir=/data/cc_prepared --split=train

Several splits = several invocations into the same --output_dir (metadata.json is merged;
all splits must share vocab, feature_dim, num_classes, class_target).

Captions (--captions) are JSON lines {"image_id": ..., "caption": "..."}, read and
tokenised first (text fits in memory); image features are then streamed one record at a
time, so memory stays flat however large the input. Bad input stops the run with the file,
line and problem, or, with --skip_bad, is skipped and counted by reason in the final report
and in metadata.json. Images without a caption are kept and counted.

Checks: column count (truncated lines), base64 byte lengths, num_boxes against the boxes,
feature/class widths agreeing across records, NaN/inf features (and values past the
float16 range they are stored in), boxes inside the image up to --box_tolerance pixels
(x1,y1 >= -tol, x2 <= W+tol, y2 <= H+tol, x1 <= x2, y1 <= y2; for normalised boxes of an
unknown image size the tolerance is --box_tolerance / 100), duplicate image ids, empty
captions, captions of images absent from the features.
"""
import array
import collections
import filecmp
import json
import os
import shutil
import time

from absl import app
from absl import logging as absl_logging
from absl import flags
import numpy as np

from interbert_jax import cli
from interbert_jax import errors
from interbert_jax.errors import BadValueError, MissingFileError
from interbert_jax.data import schema
from interbert_jax.data import tokenizer as tokenizer_lib
from interbert_jax.data.importers import RecordError, get_importer
from interbert_jax.data.importers.common import text_lines

FLAGS = flags.FLAGS


def define_flags():
  """Defined only when run as a program, so importing this module (tests, other
  CLIs) adds no global absl flags."""
  flags.DEFINE_enum("format", None, ["butd_tsv", "lxmert_tsv", "npz_dir"],
                    "Input format: butd_tsv (bottom-up-attention TSV, optional cls_prob "
                    "column), lxmert_tsv (LXMERT's TSV with object ids), npz_dir (a directory "
                    "of per-image UNITER-style .npz).")
  flags.DEFINE_string("features", None, "Feature file(s): comma-separated files or globs "
                      "for the TSV formats, a directory (or comma-separated directories) "
                      "for npz_dir.")
  flags.DEFINE_string("captions", None, 'JSON-lines captions file: {"image_id": ..., '
                      '"caption": "..."} per line; several lines per image allowed.')
  flags.DEFINE_string("output_dir", None, "Prepared dataset directory (created; other "
                      "splits already in it are kept).")
  flags.DEFINE_string("split", "train", "Split name to write (train, validation, test...).")
  flags.DEFINE_string("vocab", None, "WordPiece vocab.txt to tokenise captions with "
                      "(e.g. bert-base-uncased's). Required: nothing is downloaded.")
  flags.DEFINE_boolean("lower_case", True, "Lower-case and strip accents before WordPiece "
                       "(true for uncased vocabularies).")
  flags.DEFINE_boolean("skip_bad", False, "Skip bad records (counted by reason in the report "
                       "and metadata.json) instead of stopping at the first one.")
  flags.DEFINE_integer("num_classes", 0, "Region class count. 0 = inferred: the cls_prob / "
                       "soft_labels width, or 1600 (Visual Genome objects) for lxmert_tsv.")
  flags.DEFINE_float("box_tolerance", 1.0, "How far (pixels) a box may reach past the image.")
  flags.DEFINE_integer("shard_mb", schema.DEFAULT_SHARD_BYTES >> 20,
                       "Target ArrayRecord shard size in MiB.")
  flags.DEFINE_enum("compression", "uncompressed", list(schema.COMPRESSIONS),
                    "ArrayRecord compression. uncompressed: the fastest reads (the input "
                    "is CPU-bound); zstd: smaller files, a decompression per read (base "
                    "shapes, synthetic features: 52% of the size, read+decode 59 against "
                    "32 ms per 256 records; docs/data_pipeline.md).")
  flags.DEFINE_integer("log_every", 1000, "Print a progress line every N images.")
  flags.DEFINE_integer("text_len", schema.DEFAULT_TEXT_LEN, "The longest caption the model "
                       "reads ([CLS] and [SEP] included; config.data.text_len). Longer captions "
                       "are kept whole, counted and reported here and by validate; "
                       "training truncates them.")
  flags.DEFINE_bool("overwrite", False, "Replace the split if --output_dir already has it "
                    "(default: refuse, naming it). Other splits are never touched.")


LXMERT_NUM_CLASSES = 1600
MAX_PRINTED_SKIPS = 20


class ErrorPolicy:
  """Raises bad records, or (skip_bad) counts them by reason and prints the first few."""

  def __init__(self, skip_bad, print_fn=print):
    self.skip_bad = skip_bad
    self.counts = collections.Counter()
    self.print_fn = print_fn

  def __call__(self, error: RecordError, count: int = 1):
    if not self.skip_bad:
      raise error
    self.counts[error.reason] += count
    total = sum(self.counts.values())
    if total <= MAX_PRINTED_SKIPS:
      self.print_fn(f"skipped: {error}")
    elif total == MAX_PRINTED_SKIPS + 1:
      self.print_fn("skipped: (further skips are only counted)")


class CaptionIndex:
  """image_id -> token-id arrays of its captions, kept in flat arrays so that millions of
  captions cost ~4 bytes a token plus one dict entry per image."""

  def __init__(self):
    self._flat = array.array("i")   # all token ids, caption after caption
    self._ends = array.array("q")   # end offset of each caption in _flat
    self.lines = array.array("q")   # captions-file line of each caption
    self.by_image = {}              # image_id -> list of caption indices
    self._tokens = None             # np.int32 view of _flat once reading is done

  def add(self, image_id, token_ids, line):
    if self._tokens is not None:
      raise RuntimeError("CaptionIndex is frozen")
    self.by_image.setdefault(image_id, []).append(len(self._ends))
    self._flat.extend(token_ids)
    self._ends.append(len(self._flat))
    self.lines.append(line)

  def get(self, image_id, default=()):
    idx = self.by_image.get(image_id)
    if idx is None:
      return default
    if self._tokens is None:  # Freeze: from now on slices are views, no copies.
      self._tokens = np.frombuffer(self._flat, dtype=np.int32)
    return [self._tokens[(self._ends[k - 1] if k else 0):self._ends[k]] for k in idx]

  def __len__(self):
    return len(self._ends)

  def lengths(self) -> np.ndarray:
    """Tokens per caption (without [CLS]/[SEP]), int64 [n]."""
    return np.diff(np.asarray(self._ends, np.int64), prepend=0)


def read_captions(path, tokenizer, on_error) -> CaptionIndex:
  """Reads and tokenises the captions JSONL; errors name the file and line."""
  index = CaptionIndex()
  if not os.path.exists(path):
    raise MissingFileError(f"{path}: captions file not found")
  for line_no, line in text_lines(path):   # UTF-8; a leading BOM is dropped
    if not line.strip():
      continue
    source = f"{path}:line {line_no}"
    try:
      try:
        item = json.loads(line)
      except json.JSONDecodeError as e:
        raise RecordError(source, "bad_caption_line", f"not valid JSON ({e})") from None
      if not isinstance(item, dict) or "image_id" not in item or "caption" not in item:
        raise RecordError(source, "bad_caption_line",
                          'expected an object with "image_id" and "caption"')
      caption = item["caption"]
      if not isinstance(caption, str):
        raise RecordError(source, "bad_caption_line",
                          f"caption is {type(caption).__name__}, not a string")
      token_ids = tokenizer.encode(caption)
      if not token_ids:
        raise RecordError(source, "empty_caption",
                          f"caption {caption!r} of image {item['image_id']!r} is empty "
                          "after tokenisation")
      index.add(str(item["image_id"]), token_ids, line_no)
    except RecordError as e:
      on_error(e)
  return index


def caption_length_report(lengths: np.ndarray, text_len: int) -> dict:
  """{"text_len", "captions_over_text_len", "longest_caption_tokens"} of caption token
  counts `lengths` (without [CLS]/[SEP], which the model adds)."""
  longest = int(lengths.max()) + 2 if len(lengths) else 0
  return {"text_len": int(text_len),
          "captions_over_text_len": int(np.sum(lengths + 2 > text_len)),
          "longest_caption_tokens": longest}


def checked_images(records, *, first_record, captions, policy, box_tolerance,
                   feature_dim, num_classes, has_distribution, captions_path):
  """Validates each importer record (dims, finite, boxes, duplicates) before writing.

  After the last record, captions whose image never appeared are reported (raised, or
  counted under --skip_bad) BEFORE the split is finalised, so a failed run writes nothing.
  """
  seen = {}   # image_id -> image_index; ids are the only per-image state kept (~100 B each).
  for record in records:
    source = record.get("source", "?")
    try:
      image_id = str(record["image_id"])
      record["image_id"] = image_id
      if image_id in seen:
        raise RecordError(source, "duplicate_image_id",
                          f"image id {image_id!r} already appeared (image_index "
                          f"{seen[image_id]})")
      features = record["features"]
      if features.shape[1] != feature_dim:
        raise RecordError(source, "feature_dim_mismatch",
                          f"feature dim {features.shape[1]}, but {first_record} has "
                          f"{feature_dim}")
      if has_distribution != ("cls_prob" in record):
        raise RecordError(source, "class_target_mismatch",
                          f"cls_prob {'missing' if has_distribution else 'present'} "
                          f"unlike {first_record}")
      if has_distribution and record["cls_prob"].shape[1] != num_classes:
        raise RecordError(source, "num_classes_mismatch",
                          f"{record['cls_prob'].shape[1]} classes, but {first_record} "
                          f"has {num_classes}")
      if not np.isfinite(features).all():
        bad = int((~np.isfinite(features)).any(1).sum())
        raise RecordError(source, "non_finite_features",
                          f"features contain NaN/inf ({bad} of {len(features)} regions)")
      if np.abs(features).max() > schema.FLOAT16_MAX:
        raise RecordError(source, "float16_overflow",
                          f"features exceed the float16 range (|x| > {schema.FLOAT16_MAX:g})")
      if has_distribution and not np.isfinite(record["cls_prob"]).all():
        raise RecordError(source, "non_finite_features", "cls_prob contains NaN/inf")
      problem = schema.box_problem(record["boxes"], record["width"], record["height"],
                                   box_tolerance)
      if problem:
        raise RecordError(source, "box_outside_image", problem)
      if not has_distribution:
        ids = record["object_ids"]
        if ids.min() < 0 or ids.max() >= num_classes:
          raise RecordError(source, "bad_object_id",
                            f"object ids span [{ids.min()}, {ids.max()}], outside "
                            f"[0, {num_classes}) (set --num_classes)")
    except RecordError as e:
      policy(e)
      continue
    seen[image_id] = len(seen)
    yield record
  for image_id, idx in captions.by_image.items():
    if image_id not in seen:
      line = captions.lines[idx[0]]
      policy(RecordError(f"{captions_path}:line {line}", "caption_unknown_image",
                         f"caption of image {image_id!r}, which is not in the features "
                         f"({len(idx)} captions; skipped images count as absent)"),
             count=len(idx))


def _copy_vocab(vocab_path, output_dir):
  dest = os.path.join(output_dir, schema.VOCAB_FILE)
  if os.path.exists(dest):
    if not filecmp.cmp(vocab_path, dest, shallow=False):
      raise schema.DatasetError(
          f"{dest} differs from --vocab={vocab_path}: all splits of a prepared dataset "
          "share one vocabulary; use another --output_dir")
  else:
    os.makedirs(output_dir, exist_ok=True)
    shutil.copyfile(vocab_path, dest)


def run(*, format, features, captions, output_dir, split="train", vocab=None,
        lower_case=True, skip_bad=False, num_classes=0, box_tolerance=1.0,
        shard_bytes=schema.DEFAULT_SHARD_BYTES, compression="uncompressed", log_every=1000,
        text_len=schema.DEFAULT_TEXT_LEN, overwrite=False, print_fn=print) -> dict:
  """Runs one prepare invocation; returns the report dict (also printed).

  Refused before any work: a --split that is not a plain name, a split that exists
  (unless `overwrite`). Refused after reading the captions: none read.
  """
  errors.check_name(split, "--split")
  schema.check_new_split(output_dir, split, overwrite)
  if text_len < 3:
    raise BadValueError(f"--text_len={text_len}: must be >= 3 ([CLS], a token, [SEP])")
  if not vocab:
    raise BadValueError("--vocab is required: the WordPiece vocab.txt to tokenise captions "
                        "with (e.g. bert-base-uncased's); nothing is downloaded")
  if not os.path.exists(vocab):
    raise MissingFileError(f"--vocab={vocab}: no such file")
  start = time.time()
  tok = tokenizer_lib.Tokenizer(tokenizer_lib.load_vocab(vocab), lower_case=lower_case)
  policy = ErrorPolicy(skip_bad, print_fn)
  caps = read_captions(captions, tok, policy)
  print_fn(f"captions: {len(caps)} captions of {len(caps.by_image)} images read from "
           f"{captions} ({time.time() - start:.1f} s)")
  if not len(caps):
    raise schema.DatasetError(
        f"{captions}: no captions read (expected JSON lines {{\"image_id\": ..., "
        "\"caption\": \"...\"}}" + (f"; {sum(policy.counts.values())} skipped as bad)"
                                    if policy.counts else ")"))
  long_captions = caption_length_report(caps.lengths(), text_len)
  if long_captions["captions_over_text_len"]:
    print_fn(f"note: {long_captions['captions_over_text_len']} of {len(caps)} captions are "
             f"longer than --text_len={text_len} tokens ([CLS] and [SEP] included; the "
             f"longest has {long_captions['longest_caption_tokens']}): they are stored "
             "whole and training truncates them to config.data.text_len")

  importer = get_importer(format)
  if format == "lxmert_tsv" and not num_classes:
    num_classes = LXMERT_NUM_CLASSES
  records = importer.iter_images(features, on_error=policy,
                                 num_classes=num_classes or None)
  first = next(records, None)
  if first is None:
    raise schema.DatasetError(f"{features}: no valid image records")
  feature_dim = int(first["features"].shape[1])
  has_distribution = "cls_prob" in first
  if has_distribution:
    num_classes = int(first["cls_prob"].shape[1])
  elif first.get("object_ids") is None:
    raise schema.DatasetError(
        f"{first['source']}: the records have no class target (no cls_prob column / "
        "soft_labels array, no object ids); MRM needs one")
  elif not num_classes:
    raise BadValueError("--num_classes is required for object-id class targets")
  class_target = "distribution" if has_distribution else "object_ids"

  def all_records():
    yield first
    yield from records

  stream = checked_images(
      all_records(), first_record=first["source"], captions=caps, policy=policy,
      box_tolerance=box_tolerance, feature_dim=feature_dim, num_classes=num_classes,
      has_distribution=has_distribution, captions_path=captions)
  write_start = [time.time()]

  def progress(index, record):
    n = index + 1
    if log_every and n % log_every == 0:
      elapsed = time.time() - write_start[0]
      print_fn(f"{split}: {n} images ({n / max(elapsed, 1e-9):.1f} images/s, "
               f"{elapsed:.0f} s) last {record['source']}")

  _copy_vocab(vocab, output_dir)
  info = schema.write_split(
      output_dir, split, stream, caps, feature_dim=feature_dim, num_classes=num_classes,
      class_target=class_target, vocab_size=tok.vocab_size, lower_case=lower_case,
      source_format=format, skipped=policy.counts, shard_bytes=shard_bytes,
      compression=compression, log_every=0, extra_split_info=long_captions,
      overwrite=overwrite, on_image=progress)
  seconds = time.time() - start
  report = {"split": split, "output_dir": output_dir, "format": format,
            "images": info["images"], "captions": info["captions"],
            "images_without_captions": info["images_without_captions"],
            "skipped": dict(policy.counts), "feature_dim": feature_dim,
            "num_classes": num_classes, "class_target": class_target, **long_captions,
            "seconds": round(seconds, 2),
            "images_per_s": round(info["images"] / max(seconds, 1e-9), 1)}
  print_fn("report: " + json.dumps(report, sort_keys=True))
  return report


def main(argv):
  absl_logging.set_verbosity(absl_logging.WARNING)  # Libraries' INFO lines drown ours.
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  for name in ("format", "features", "captions", "output_dir", "vocab"):
    if not getattr(FLAGS, name):
      raise app.UsageError(f"--{name} is required"
                           + ("; it is the WordPiece vocab.txt, nothing is downloaded"
                              if name == "vocab" else ""))
  # Bad input (errors.UserError: RecordError, DatasetError, a bad --split, no permission,
  # no space) is one line and exit 2; nothing half-written stays (schema.write_split).
  run(format=FLAGS.format, features=FLAGS.features, captions=FLAGS.captions,
      output_dir=FLAGS.output_dir, split=FLAGS.split, vocab=FLAGS.vocab,
      lower_case=FLAGS.lower_case, skip_bad=FLAGS.skip_bad,
      num_classes=FLAGS.num_classes, box_tolerance=FLAGS.box_tolerance,
      shard_bytes=FLAGS.shard_mb << 20, compression=FLAGS.compression,
      log_every=FLAGS.log_every, text_len=FLAGS.text_len, overwrite=FLAGS.overwrite,
      print_fn=lambda s: print(s, flush=True))


if __name__ == "__main__":
  define_flags()
  os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # prepare only writes files: no GPU runtime.
  cli.run(main)
