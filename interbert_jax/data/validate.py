r"""Checks a prepared dataset and prints its statistics.

  python -m interbert_jax.data.validate /data/cc_prepared [--sample=1000] [--split=train]

Per split: image/caption counts, region-count histogram and feature checks on up to
--sample images (evenly spaced), caption-length stats (min/mean/p50/p95/max, over all
captions), class_target and feature dim. Exits 1 with one line per problem when the
dataset is broken (missing files, truncated or garbled shards named by file,
metadata/shard/record count mismatches, records that cannot be read named by shard file and
record index as the trainer names them, captions pointing
past the image count, token ids outside the vocabulary, NaN/inf or wrongly shaped features,
boxes outside the image, vocab size mismatch...), 0 when it is sound.
"""
import json
import os
import sys

from absl import app
from absl import logging as absl_logging
from absl import flags
import numpy as np

from interbert_jax import cli
from interbert_jax import errors
from interbert_jax.data import schema

FLAGS = flags.FLAGS


def define_flags():
  """Defined only when run as a program, so importing this module (tests, other
  CLIs) adds no global absl flags."""
  flags.DEFINE_integer("sample", 1000, "How many images per split to read and check "
                       "(evenly spaced; 0 = all).")
  flags.DEFINE_list("split", [], "Splits to check (default: all in metadata.json).")
  flags.DEFINE_float("box_tolerance", 1.0, "Pixels a box may reach past the image.")
  flags.DEFINE_integer("text_len", 0, "Count the captions longer than this many tokens "
                       "([CLS] and [SEP] included); 0 = the split's own (prepare "
                       f"--text_len), else {schema.DEFAULT_TEXT_LEN}.")


REGION_BINS = (0, 1, 10, 20, 36, 37, 50, 100, 101)


def _histogram(counts):
  edges = list(REGION_BINS) + [max(max(counts, default=0) + 1, REGION_BINS[-1] + 1)]
  hist = {}
  for lo, hi in zip(edges[:-1], edges[1:]):
    c = int(sum(lo <= x < hi for x in counts))
    if c:
      hist[f"{lo}" if hi == lo + 1 else f"{lo}-{hi - 1}"] = c
  return hist


def _length_stats(lengths):
  if len(lengths) == 0:
    return {}
  return {"min": int(lengths.min()), "mean": round(float(lengths.mean()), 2),
          "p50": float(np.percentile(lengths, 50)), "p95": float(np.percentile(lengths, 95)),
          "max": int(lengths.max())}


def check_split(data_dir, split, meta, sample, box_tolerance, problems, notes=None,
                text_len=0):
  """Checks one split; appends problem strings (and notes: long captions); returns its
  stats dict. text_len 0 = the split's own (metadata.json), else schema.DEFAULT_TEXT_LEN."""
  notes = [] if notes is None else notes
  info = meta["splits"][split]
  where = os.path.join(data_dir, split)
  stats = {"split": split, "class_target": meta["class_target"],
           "feature_dim": meta["feature_dim"], "num_classes": meta["num_classes"]}
  try:
    images = schema.open_images(data_dir, split)
  except Exception as e:  # Missing shards, a metadata.json without the shard list.
    problems.append(f"{where}: cannot open the images ({e})")
    return stats
  n = len(images)
  stats["images"] = n
  if n != info.get("images"):
    problems.append(f"{where}: {n} image records but metadata.json says {info.get('images')}")
  shards = [f for f in os.listdir(where) if f.endswith(".array_record")]
  if "num_shards" in info and len(shards) != info["num_shards"]:
    problems.append(f"{where}: {len(shards)} shard files but metadata.json says "
                    f"{info['num_shards']}")
  bad_shards = schema.check_shards(data_dir, split)
  problems.extend(bad_shards.values())
  try:
    feature_stats = schema.read_feature_stats(data_dir, split)
  except schema.DatasetError as e:
    problems.append(str(e))
    feature_stats = {}
  if feature_stats is None:
    notes.append(f"{where}: no {schema.FEATURE_STATS_FILE} (prepared before it existed): "
                 "training computes the feature statistics from the first images; prepare "
                 "the split again to record them over every region")
  elif feature_stats:
    rng = lambda a: [round(float(a.min()), 4), round(float(a.max()), 4)]
    stats["feature_stats"] = {"regions": feature_stats["regions"]}
    for prefix in ("", "rms_"):   # raw, and over each region's RMS (model.feature_norm)
      mean, std = feature_stats[prefix + "mean"], feature_stats[prefix + "std"]
      stats["feature_stats"].update({
          prefix + "mean": rng(mean), prefix + "std": rng(std),
          prefix + "mean_norm_over_std_norm": round(float(
              np.linalg.norm(mean) / max(np.linalg.norm(std), 1e-12)), 3)})
  try:
    caps = schema.load_captions(data_dir, split)
  except schema.DatasetError as e:
    problems.append(str(e))
    caps = None
  if caps is not None:
    cap_path = schema.captions_path(data_dir, split)
    stats["captions"] = len(caps)
    if len(caps) != info.get("captions"):
      problems.append(f"{cap_path}: {len(caps)} captions but metadata.json says "
                      f"{info.get('captions')}")
    if len(caps) and (caps.image_index.min() < 0 or caps.image_index.max() >= n):
      bad = int(np.sum((caps.image_index < 0) | (caps.image_index >= n)))
      problems.append(f"{cap_path}: {bad} captions point at image indices outside "
                      f"[0, {n}) (max {int(caps.image_index.max())})")
    if len(caps.token_ids) and (caps.token_ids.min() < 0
                                or caps.token_ids.max() >= meta["vocab_size"]):
      problems.append(f"{cap_path}: token ids span [{caps.token_ids.min()}, "
                      f"{caps.token_ids.max()}], outside the vocabulary "
                      f"[0, {meta['vocab_size']})")
    lengths = caps.lengths()
    stats["caption_length"] = _length_stats(lengths)
    if not len(lengths):
      problems.append(f"{cap_path}: no captions (every task trains on image-caption pairs; "
                      "re-prepare the split with its captions file)")
    if len(lengths) and lengths.min() == 0:
      problems.append(f"{cap_path}: {int((lengths == 0).sum())} empty captions")
    text_len = int(text_len or info.get("text_len") or schema.DEFAULT_TEXT_LEN)
    over = int(np.sum(lengths + 2 > text_len))
    stats["text_len"], stats["captions_over_text_len"] = text_len, over
    if over:
      notes.append(f"{cap_path}: {over} of {len(lengths)} captions are longer than "
                   f"text_len={text_len} tokens ([CLS] and [SEP] included; the longest has "
                   f"{int(lengths.max()) + 2}); training truncates them")
    stats["images_with_captions"] = int(len(np.unique(caps.image_index)))
  if n == 0:
    return stats
  count = n if sample <= 0 else min(sample, n)
  indices = np.unique(np.linspace(0, n - 1, count).round().astype(np.int64))
  region_counts = []
  want_dist = meta["class_target"] == "distribution"
  shards = schema.shard_files(data_dir, split)
  for i in indices:
    i = int(i)
    if schema.locate_record(shards, i)[0] in bad_shards:
      continue                                   # Reported once, as its shard.
    try:
      rec = images[i]
    except Exception as e:  # pylint: disable=broad-except
      problems.append(schema.record_problem(data_dir, split, i, e))
      continue
    label = f"{where}: record {i} (image {rec.get('image_id')!r})"
    nb = int(rec["num_boxes"])
    region_counts.append(nb)
    feats = rec["features"]
    if feats.shape != (nb, meta["feature_dim"]):
      problems.append(f"{label}: features shape {feats.shape}, expected "
                      f"({nb}, {meta['feature_dim']})")
    elif not np.isfinite(feats).all():
      problems.append(f"{label}: features contain NaN/inf")
    if rec["boxes"].shape != (nb, 4):
      problems.append(f"{label}: boxes shape {rec['boxes'].shape}, expected ({nb}, 4)")
    else:
      problem = schema.box_problem(rec["boxes"], rec["width"], rec["height"], box_tolerance)
      if problem:
        problems.append(f"{label}: {problem}")
    if want_dist != ("cls_prob" in rec):
      problems.append(f"{label}: cls_prob {'missing' if want_dist else 'present'} but "
                      f"class_target is {meta['class_target']!r}")
    elif want_dist and rec["cls_prob"].shape != (nb, meta["num_classes"]):
      problems.append(f"{label}: cls_prob shape {rec['cls_prob'].shape}, expected "
                      f"({nb}, {meta['num_classes']})")
    ids = rec["object_ids"]
    if ids.shape != (nb,) or (nb and (ids.min() < 0 or ids.max() >= meta["num_classes"])):
      problems.append(f"{label}: object_ids {ids.shape} outside [0, {meta['num_classes']})")
  stats["sampled_images"] = len(indices)
  stats["region_histogram"] = _histogram(region_counts)
  return stats


def validate(data_dir, splits=(), sample=1000, box_tolerance=1.0, text_len=0, notes=None):
  """Returns (stats per split, problems); appends to `notes` what is sound but worth
  saying (captions longer than text_len). Never raises for a broken dataset."""
  problems = []
  try:
    meta = schema.read_metadata(data_dir)
  except schema.DatasetError as e:
    return [], [str(e)]
  vocab_path = os.path.join(data_dir, schema.VOCAB_FILE)
  if not os.path.exists(vocab_path):
    problems.append(f"{vocab_path}: missing")
  else:
    with open(vocab_path, encoding="utf-8") as f:
      vocab_lines = sum(1 for _ in f)
    if vocab_lines != meta["vocab_size"]:
      problems.append(f"{vocab_path}: {vocab_lines} tokens but metadata.json says "
                      f"vocab_size={meta['vocab_size']}")
  names = list(splits) or sorted(meta["splits"])
  stats = []
  for split in names:
    if split not in meta["splits"]:
      problems.append(f"{data_dir}: split {split!r} is not in metadata.json "
                      f"(has {sorted(meta['splits'])})")
      continue
    try:
      errors.check_name(split, "--split")
    except errors.UserError as e:
      problems.append(str(e))
      continue
    stats.append(check_split(data_dir, split, meta, sample, box_tolerance, problems, notes,
                             text_len))
  return stats, problems


def main(argv):
  absl_logging.set_verbosity(absl_logging.WARNING)  # Libraries' INFO lines drown ours.
  if len(argv) != 2:
    raise app.UsageError("usage: python -m interbert_jax.data.validate DIR "
                         "[--sample=N] [--split=a,b]")
  notes = []
  stats, problems = validate(argv[1], FLAGS.split, FLAGS.sample, FLAGS.box_tolerance,
                             FLAGS.text_len, notes)
  for s in stats:
    print(json.dumps(s, sort_keys=True))
  for note in notes:
    print(f"note: {note}")
  if problems:
    print(f"BROKEN: {len(problems)} problem(s) in {argv[1]}:", file=sys.stderr)
    for p in problems:
      print("  " + p, file=sys.stderr)
    return 1
  print(f"OK: {argv[1]} ({len(stats)} split(s))")
  return 0


if __name__ == "__main__":
  define_flags()
  os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
  cli.run(main)
