"""Importers -> prepare -> open_images/load_captions round trips, bad-input errors,
--skip_bad counting and validate, on tiny files written here (F=6, C=5)."""
import base64
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from interbert_jax.data import prepare, schema, validate
from interbert_jax.data.importers import RecordError

F, C = 6, 5
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog", "cat", "runs", "on",
         "grass", "the", "##s", "big", "."]
TOK = {t: i for i, t in enumerate(VOCAB)}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def b64(a):
  return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def make_images(n_images=4, seed=0, with_dist=True):
  rng = np.random.default_rng(seed)
  images = []
  for i in range(n_images):
    n = 2 + i % 3
    w, h = 100 + i, 80 + i
    x1 = rng.uniform(0, 40, n); y1 = rng.uniform(0, 30, n)
    boxes = np.stack([x1, y1, x1 + rng.uniform(1, 50, n), y1 + rng.uniform(1, 40, n)],
                     1).astype(np.float32)
    img = {"image_id": f"img{i}", "width": w, "height": h, "num_boxes": n, "boxes": boxes,
           # Values exactly representable in float16, so the round trip is exact.
           "features": (rng.integers(-512, 512, (n, F)) / 64).astype(np.float32)}
    if with_dist:
      p = rng.random((n, C)).astype(np.float32)
      img["cls_prob"] = p / p.sum(1, keepdims=True)
    else:
      img["object_ids"] = rng.integers(0, C, n).astype(np.int64)
      img["object_conf"] = rng.random(n).astype(np.float32)
    images.append(img)
  return images


def butd_line(img, with_dist=True):
  cols = [img["image_id"], str(img["width"]), str(img["height"]), str(img["num_boxes"]),
          b64(img["boxes"]), b64(img["features"])]
  if with_dist:
    cols.append(b64(img["cls_prob"]))
  return "\t".join(cols)


def lxmert_line(img):
  n = img["num_boxes"]
  return "\t".join([img["image_id"], str(img["height"]), str(img["width"]),
                    b64(img["object_ids"]), b64(img["object_conf"]),
                    b64(np.zeros(n, np.int64)), b64(np.ones(n, np.float32)), str(n),
                    b64(img["boxes"]), b64(img["features"])])


def write_lines(path, lines):
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return str(path)


CAPTIONS = [("img0", "A dog runs on the grass."), ("img0", "The big cats"),
            ("img2", "a cat"), ("img3", "Dogs")]
CAPTION_IDS = {"A dog runs on the grass.": [5, 6, 8, 9, 11, 10, 14],
               "The big cats": [11, 13, 7, 12], "a cat": [5, 7], "Dogs": [6, 12]}


def write_captions(path, items=CAPTIONS):
  return write_lines(path, [json.dumps({"image_id": i, "caption": c}) for i, c in items])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("formats")
  vocab = write_lines(d / "vocab.txt", VOCAB)
  caps = write_captions(d / "caps.jsonl")
  return d, vocab, caps


def run_prepare(files, fmt, features, out, split="train", captions=None, **kw):
  d, vocab, caps = files
  return prepare.run(format=fmt, features=features, captions=captions or caps,
                     output_dir=str(out), split=split, vocab=vocab, print_fn=lambda s: None,
                     **kw)


def assert_round_trip(out, split, images, dist, boxes_scale=None):
  src = schema.open_images(str(out), split)
  assert len(src) == len(images)
  for i, img in enumerate(images):
    rec = src[i]
    assert rec["image_id"] == img["image_id"]
    assert rec["num_boxes"] == img["num_boxes"] and rec["num_boxes"].dtype == np.int32
    np.testing.assert_array_equal(rec["features"], img["features"].astype(np.float16))
    assert rec["features"].dtype == np.float16
    np.testing.assert_allclose(rec["boxes"], img["boxes"] if boxes_scale is None
                               else boxes_scale(img), rtol=1e-6)
    if dist:
      np.testing.assert_array_equal(rec["cls_prob"], img["cls_prob"].astype(np.float16))
      np.testing.assert_array_equal(rec["object_ids"], img["cls_prob"].argmax(1))
    else:
      assert "cls_prob" not in rec
      np.testing.assert_array_equal(rec["object_ids"], img["object_ids"])
      np.testing.assert_array_equal(rec["object_conf"], img["object_conf"])
  caps = schema.load_captions(str(out), split)
  np.testing.assert_array_equal(caps.image_index, [0, 0, 2, 3])
  assert [caps.caption(k).tolist() for k in range(4)] == [
      CAPTION_IDS[c] for _, c in CAPTIONS]


def test_butd_round_trip_and_second_split(files, tmp_path):
  images = make_images()
  tsv = write_lines(tmp_path / "f.tsv", [butd_line(im) for im in images])
  report = run_prepare(files, "butd_tsv", tsv, tmp_path / "out", shard_bytes=200)
  assert report["images"] == 4 and report["captions"] == 4
  assert report["images_without_captions"] == 1 and report["skipped"] == {}
  assert_round_trip(tmp_path / "out", "train", images, dist=True)
  # A box's confidence is its best non-background class (class 0 is background, as in
  # BUTD's extractor): adaptive region selection ranks by it.
  src = schema.open_images(str(tmp_path / "out"), "train")
  for i, img in enumerate(images):
    np.testing.assert_allclose(src[i]["object_conf"],
                               img["cls_prob"][:, 1:].max(1), rtol=1e-5)
  meta = schema.read_metadata(str(tmp_path / "out"))
  assert (meta["feature_dim"], meta["num_classes"], meta["class_target"]) == (
      F, C, "distribution")
  assert meta["vocab_size"] == len(VOCAB) and meta["splits"]["train"]["num_shards"] > 1
  # A second split into the same directory merges metadata.
  run_prepare(files, "butd_tsv", tsv, tmp_path / "out", split="validation")
  meta = schema.read_metadata(str(tmp_path / "out"))
  assert sorted(meta["splits"]) == ["train", "validation"]
  stats, problems = validate.validate(str(tmp_path / "out"), sample=10)
  assert problems == []
  assert stats[0]["images"] == 4 and stats[0]["caption_length"]["max"] == 7
  assert stats[0]["region_histogram"] == {"1-9": 4}


def test_lxmert_round_trip(files, tmp_path):
  images = make_images(with_dist=False, seed=1)
  tsv = write_lines(tmp_path / "l.tsv", [lxmert_line(im) for im in images])
  report = run_prepare(files, "lxmert_tsv", tsv, tmp_path / "out", num_classes=C,
                       compression="uncompressed")
  assert report["class_target"] == "object_ids" and report["num_classes"] == C
  assert_round_trip(tmp_path / "out", "train", images, dist=False)
  src = schema.open_images(str(tmp_path / "out"), "train")
  assert (src[1]["width"], src[1]["height"]) == (101, 81)  # h before w in the file.


def test_npz_dir_round_trip(files, tmp_path):
  images = make_images(seed=2)
  (tmp_path / "npz").mkdir()
  for k, im in enumerate(images):
    scale = np.array([im["width"], im["height"]] * 2, np.float32)
    arrays = {"features": im["features"].astype(np.float16),
              "norm_bb": np.concatenate([im["boxes"] / scale, np.ones((im["num_boxes"], 3),
                                                                      np.float32)], 1),
              "soft_labels": im["cls_prob"], "conf": im["cls_prob"].max(1)}
    if k != 3:  # img3 has no size: boxes stay normalised (w = h = 1).
      arrays.update(width=np.int32(im["width"]), height=np.int32(im["height"]))
    np.savez(tmp_path / "npz" / f"{im['image_id']}.npz", **arrays)

  def boxes(img):
    if img["image_id"] == "img3":
      return img["boxes"] / np.array([img["width"], img["height"]] * 2, np.float32)
    return img["boxes"]

  run_prepare(files, "npz_dir", str(tmp_path / "npz"), tmp_path / "out")
  assert_round_trip(tmp_path / "out", "train", images, dist=True, boxes_scale=boxes)
  assert schema.open_images(str(tmp_path / "out"), "train")[3]["width"] == 1


def _bad_cases(images):
  good = [butd_line(im) for im in images]
  f64 = b64(np.zeros((2, F), np.float32))
  nan = images[1]["features"].copy(); nan[0, 0] = np.nan
  outside = images[1]["boxes"].copy(); outside[0, 2] = images[1]["width"] + 5
  return {
      "truncated_line": good[1].split("\t")[:5],
      "bad_base64": good[1].split("\t")[:5] + [good[1].split("\t")[5][:-8]]
                    + good[1].split("\t")[6:],
      "num_boxes_mismatch": ["img1", "101", "81", "5"] + good[1].split("\t")[4:],
      "feature_dim_mismatch": good[1].split("\t")[:5] + [f64] + good[1].split("\t")[6:],
      "non_finite_features": butd_line(dict(images[1], features=nan)).split("\t"),
      "box_outside_image": butd_line(dict(images[1], boxes=outside)).split("\t"),
      "duplicate_image_id": ["img0"] + good[1].split("\t")[1:],
  }


@pytest.mark.parametrize("reason", ["truncated_line", "bad_base64", "num_boxes_mismatch",
                                    "non_finite_features", "box_outside_image",
                                    "duplicate_image_id"])
def test_bad_tsv_line_names_file_and_line(files, tmp_path, reason):
  images = make_images()
  lines = [butd_line(im) for im in images]
  lines[1] = "\t".join(_bad_cases(images)[reason])
  tsv = write_lines(tmp_path / "bad.tsv", lines)
  with pytest.raises(RecordError) as e:
    run_prepare(files, "butd_tsv", tsv, tmp_path / "out")
  assert e.value.reason == (reason if reason != "num_boxes_mismatch" else reason)
  assert f"{tsv}:line 2" in str(e.value)
  assert not (tmp_path / "out" / "train").exists()  # Nothing half-written.


def test_feature_dim_change_is_a_base64_length_error(files, tmp_path):
  images = make_images()
  lines = [butd_line(im) for im in images]
  lines[2] = "\t".join(_bad_cases(images)["feature_dim_mismatch"])
  tsv = write_lines(tmp_path / "bad.tsv", lines)
  with pytest.raises(RecordError, match=r"bad\.tsv:line 3: column 'features' has width "
                                        r"4 but .*line 1 had 6"):
    run_prepare(files, "butd_tsv", tsv, tmp_path / "out")


@pytest.mark.parametrize("captions,reason,line", [
    ([("img0", "a dog"), ("img9", "a cat")], "caption_unknown_image", 2),
    ([("img0", "a dog"), ("img1", "  ")], "empty_caption", 2),
])
def test_bad_caption_names_file_and_line(files, tmp_path, captions, reason, line):
  tsv = write_lines(tmp_path / "f.tsv", [butd_line(im) for im in make_images()])
  caps = write_captions(tmp_path / "c.jsonl", captions)
  with pytest.raises(RecordError) as e:
    run_prepare(files, "butd_tsv", tsv, tmp_path / "out", captions=caps)
  assert e.value.reason == reason and f"{caps}:line {line}" in str(e.value)
  assert not (tmp_path / "out" / "train").exists()


def test_skip_bad_counts_every_reason(files, tmp_path):
  images = make_images(8)
  cases = _bad_cases(images)
  lines = [butd_line(im) for im in images[:1]]
  for reason in ("truncated_line", "bad_base64", "num_boxes_mismatch",
                 "non_finite_features", "box_outside_image", "duplicate_image_id"):
    lines.append("\t".join(cases[reason]))
  lines += [butd_line(im) for im in images[2:]]   # img2..img7: 6 good images.
  tsv = write_lines(tmp_path / "bad.tsv", lines)
  caps = write_captions(tmp_path / "c.jsonl", CAPTIONS + [("img1", "a dog"), ("x", "a"),
                                                          ("img2", "")])
  report = run_prepare(files, "butd_tsv", tsv, tmp_path / "out", captions=caps,
                       skip_bad=True)
  want = {"truncated_line": 1, "bad_base64": 1, "num_boxes_mismatch": 1,
          "non_finite_features": 1, "box_outside_image": 1, "duplicate_image_id": 1,
          "empty_caption": 1, "caption_unknown_image": 2}  # img1 (all its lines bad), x.
  assert report["skipped"] == want
  assert report["images"] == 7 and report["captions"] == 4
  meta = schema.read_metadata(str(tmp_path / "out"))
  assert meta["splits"]["train"]["skipped"] == want
  assert meta["splits"]["train"]["images_without_captions"] == 4


def test_box_tolerance_is_one_pixel(files, tmp_path):
  images = make_images()
  images[1]["boxes"][0, 2] = images[1]["width"] + 0.9   # within 1 px: kept.
  tsv = write_lines(tmp_path / "f.tsv", [butd_line(im) for im in images])
  assert run_prepare(files, "butd_tsv", tsv, tmp_path / "out")["images"] == 4
  images[1]["boxes"][0, 2] = images[1]["width"] + 1.1
  tsv = write_lines(tmp_path / "f.tsv", [butd_line(im) for im in images])
  with pytest.raises(RecordError, match="line 2: box 0"):
    run_prepare(files, "butd_tsv", tsv, tmp_path / "out2")


def test_validate_broken_datasets(files, tmp_path):
  tsv = write_lines(tmp_path / "f.tsv", [butd_line(im) for im in make_images()])
  out = str(tmp_path / "out")
  run_prepare(files, "butd_tsv", tsv, out)
  assert validate.validate(out)[1] == []
  # Captions pointing past the image count.
  path = os.path.join(out, "train_captions.npz")
  with np.load(path) as z:
    arrays = dict(z)
  np.savez(path, **dict(arrays, image_index=arrays["image_index"] + 3))
  problems = validate.validate(out)[1]
  assert len(problems) == 1 and "outside [0, 4)" in problems[0]
  np.savez(path, **arrays)
  # Metadata that disagrees with the shards, and a vocab of the wrong size.
  meta = schema.read_metadata(out)
  meta["splits"]["train"]["images"] = 5
  meta["vocab_size"] = 99
  schema.write_metadata(out, meta)
  problems = "\n".join(validate.validate(out)[1])
  assert "4 image records but metadata.json says 5" in problems
  assert "vocab_size=99" in problems and "outside the vocabulary" not in problems
  # A missing split directory.
  meta["splits"]["test"] = dict(meta["splits"]["train"])
  schema.write_metadata(out, meta)
  assert any("test" in p and "cannot open" in p for p in validate.validate(out)[1])
  assert validate.validate(str(tmp_path / "nothing"))[1][0].endswith(
      "run python -m interbert_jax.data.prepare)")


def test_validate_detects_nan_features(files, tmp_path, monkeypatch):
  out = str(tmp_path / "out")
  images = make_images()
  # write_split refuses NaN features, so corrupt the encoded record of image 2 instead.
  to_example = schema.to_example

  def corrupt(record, *args):
    example = to_example(record, *args)
    if example["image_id"] == "img2":
      example["features"][0, 0] = np.nan
    return example

  monkeypatch.setattr(schema, "to_example", corrupt)
  schema.write_split(out, "train", iter(images), {"img0": [[5, 6]]}, feature_dim=F,
                     num_classes=C, class_target="distribution", vocab_size=len(VOCAB),
                     lower_case=True, source_format="test")
  schema.write_vocab(out, VOCAB)
  problems = validate.validate(out)[1]
  assert len(problems) == 1 and "record 2 (image 'img2'): features contain NaN" in problems[0]
  assert validate.validate(out, sample=1)[1] == []  # Only record 0 is read.


def test_cli_exit_codes(files, tmp_path):
  """The real entry points: prepare then validate (0), validate broken (1), no vocab."""
  d, vocab, caps = files
  tsv = write_lines(tmp_path / "f.tsv", [butd_line(im) for im in make_images()])
  out = str(tmp_path / "out")
  env = dict(os.environ, PYTHONPATH=REPO)
  run = lambda *a: subprocess.run([sys.executable, "-m", *a], capture_output=True,
                                  text=True, env=env, cwd=REPO)
  p = run("interbert_jax.data.prepare", "--format=butd_tsv", f"--features={tsv}",
          f"--captions={caps}", f"--output_dir={out}", "--lower_case=true")
  assert "--vocab is required" in p.stderr and p.returncode == 2   # a user error: exit 2
  p = run("interbert_jax.data.prepare", "--format=butd_tsv", f"--features={tsv}",
          f"--captions={caps}", f"--output_dir={out}", f"--vocab={vocab}",
          "--log_every=2")
  assert p.returncode == 0, p.stderr
  assert "train: 4 images (" in p.stdout and '"images": 4' in p.stdout
  p = run("interbert_jax.data.validate", out)
  assert p.returncode == 0 and '"feature_dim": 6' in p.stdout
  os.remove(os.path.join(out, "train_captions.npz"))
  p = run("interbert_jax.data.validate", out)
  assert p.returncode == 1 and "train_captions.npz: missing" in p.stderr


def test_input_without_class_target_or_file_is_a_clear_error(files, tmp_path):
  tsv = write_lines(tmp_path / "f.tsv", [butd_line(im, with_dist=False)
                                         for im in make_images()])
  with pytest.raises(schema.DatasetError, match=r"f\.tsv:line 1: the records have no "
                                                r"class target"):
    run_prepare(files, "butd_tsv", tsv, tmp_path / "out")
  with pytest.raises(FileNotFoundError, match="missing.tsv: no such file"):
    run_prepare(files, "butd_tsv", str(tmp_path / "missing.tsv"), tmp_path / "out")
  images = make_images(with_dist=False)
  tsv = write_lines(tmp_path / "l.tsv", [lxmert_line(im) for im in images])
  with pytest.raises(RecordError, match=r"l\.tsv:line \d: object ids span .* outside "
                                        r"\[0, 2\)"):
    run_prepare(files, "lxmert_tsv", tsv, tmp_path / "out", num_classes=2)


def test_incompatible_second_split_is_refused_before_writing(files, tmp_path):
  tsv = write_lines(tmp_path / "f.tsv", [butd_line(im) for im in make_images()])
  run_prepare(files, "butd_tsv", tsv, tmp_path / "out")
  with pytest.raises(schema.DatasetError, match="has lower_case=False but the splits "
                                                "already in this directory have "
                                                "lower_case=True"):
    run_prepare(files, "butd_tsv", tsv, tmp_path / "out", split="test", lower_case=False)
  assert not (tmp_path / "out" / "test").exists()
  assert sorted(schema.read_metadata(str(tmp_path / "out"))["splits"]) == ["train"]


def test_a_dataset_of_the_old_schema_names_the_command_that_prepares_it_again(tmp_path):
  """Schema 1 (TFDS Example records, until 2026-12-08): one line with the command."""
  meta = {"schema_version": 1, "source_format": "butd_tsv", "splits": {}}
  schema.write_metadata(tmp_path, meta)
  with pytest.raises(schema.DatasetError) as e:
    schema.read_metadata(str(tmp_path))
  message = str(e.value)
  assert "\n" not in message and "storage schema 1" in message
  assert (f"python -m interbert_jax.data.prepare --format=butd_tsv --output_dir={tmp_path} "
          "--overwrite") in message
