"""The embedded synthetic dataset: deterministic, disjoint splits, a fitting vocab, and a
cross-modal signal (captions name exactly the objects the regions show)."""
import glob
import hashlib
import os

import numpy as np
import pytest

from configs import pretrain
from interbert_jax.data import masking
from interbert_jax.data import schema
from interbert_jax.data import synthetic
from interbert_jax.data import synthetic_world as world
from interbert_jax.data import tokenizer


def _config(d, seed=0):
  c = pretrain.get_config("tiny")
  s = c.data.synthetic
  s.num_train_images, s.num_validation_images, s.num_test_images = 40, 10, 10
  s.seed = seed
  s.dir = str(d)
  return c


def _digest(d):
  """sha256 of every data file (array records, captions, vocab) of a generated dataset."""
  h = hashlib.sha256()
  files = sorted(glob.glob(os.path.join(d, "*", "*array_record*")) +
                 glob.glob(os.path.join(d, "*_captions.npz")) + [os.path.join(d, "vocab.txt")])
  for f in files:
    h.update(os.path.relpath(f, d).encode())
    with open(f, "rb") as fh:
      h.update(fh.read())
  return h.hexdigest(), len(files)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return synthetic.ensure_synthetic(_config(tmp_path_factory.mktemp("a")))


def test_deterministic_from_seed(data, tmp_path):
  again = synthetic.ensure_synthetic(_config(tmp_path / "b"))
  other = synthetic.ensure_synthetic(_config(tmp_path / "c", seed=1))
  d0, nfiles = _digest(data)
  assert nfiles == 3 + 3 + 1
  assert _digest(again)[0] == d0
  assert _digest(other)[0] != d0


def test_generated_once_and_reused(data):
  stamp = os.path.getmtime(os.path.join(data, synthetic.PARAMS_FILE))
  assert synthetic.ensure_synthetic(_config(data)) == data
  assert os.path.getmtime(os.path.join(data, synthetic.PARAMS_FILE)) == stamp
  with pytest.raises(ValueError, match="config.data.synthetic.dir"):
    synthetic.ensure_synthetic(_config(data, seed=5))   # Same dir, other parameters.


def test_data_of_an_older_storage_schema_is_written_again(tmp_path):
  """A cache written by an older storage schema (same parameters) is regenerated in
  place, with the same content."""
  d = synthetic.ensure_synthetic(_config(tmp_path / "old"))
  digest = _digest(d)
  meta = schema.read_metadata(d)
  meta["schema_version"] = 1
  schema.write_metadata(d, meta)
  assert synthetic.ensure_synthetic(_config(tmp_path / "old")) == d
  assert schema.read_metadata(d)["schema_version"] == schema.SCHEMA_VERSION
  assert _digest(d) == digest
  assert not [f for f in os.listdir(tmp_path) if "stale" in f]


def test_default_dir_is_keyed_by_parameters():
  a = pretrain.get_config("tiny")
  b = pretrain.get_config("tiny")
  b.data.synthetic.seed = 3
  pa, pb = synthetic.synthetic_params(a), synthetic.synthetic_params(b)
  assert synthetic.default_dir(pa) != synthetic.default_dir(pb)
  assert synthetic.default_dir(pa).startswith(os.path.expanduser("~/.cache/interbert_jax"))


def test_metadata_splits_and_vocab(data):
  meta = schema.read_metadata(data)
  c = _config(data)
  assert meta["feature_dim"] == c.model.feature_dim
  assert meta["num_classes"] == c.model.num_region_classes
  assert meta["class_target"] == "distribution"
  assert {s: meta["splits"][s]["images"] for s in synthetic.SPLITS} == {
      "train": 40, "validation": 10, "test": 10}
  assert meta["splits"]["train"]["captions"] == 80
  vocab = tokenizer.load_vocab(os.path.join(data, "vocab.txt"))
  assert len(vocab) == meta["vocab_size"] <= c.model.vocab_size
  assert [vocab[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]
  ids = set()
  for split in synthetic.SPLITS:
    src = schema.open_images(data, split)
    ids |= {src[i]["image_id"] for i in range(len(src))}
    caps = schema.load_captions(data, split)
    assert caps.token_ids.min() >= 5 and caps.token_ids.max() < len(vocab)
    assert caps.lengths().max() <= c.data.text_len - 2
  assert len(ids) == 60                                   # Splits are disjoint.
  # The WordPiece tokenizer reproduces the stored ids from the caption text.
  tok = tokenizer.Tokenizer(vocab)
  inv = {i: w for w, i in vocab.items()}
  caps = schema.load_captions(data, "validation")
  for k in range(5):
    text = " ".join(inv[int(i)] for i in caps.caption(k))
    assert tok.encode(text) == caps.caption(k).tolist()


def test_captions_name_the_regions_objects(data):
  """Every caption names exactly the image's objects; regions of one object group by IoU."""
  vocab = tokenizer.load_vocab(os.path.join(data, "vocab.txt"))
  inv = {i: w for w, i in vocab.items()}
  src = schema.open_images(data, "train")
  caps = schema.load_captions(data, "train")
  c = _config(data)
  params = synthetic.synthetic_params(c)
  protos = world.make_prototypes(c.data.synthetic.seed, c.model.feature_dim)
  nobj = len(world.CLASSES)
  for index, (record, _, truth) in enumerate(synthetic.split_images(params, "train")):
    rec = src[index]
    np.testing.assert_array_equal(rec["features"], record["features"])
    assert rec["num_boxes"] <= c.data.max_regions
    owner = truth["region_object"]
    cls = rec["object_ids"] - 1                       # Detector class 1 + k = object k.
    np.testing.assert_array_equal(owner >= 0, cls < nobj)
    for k in np.flatnonzero(caps.image_index == index):
      words = [inv[int(i)] for i in caps.caption(k)]
      named = [(w, words[i + 1]) for i, w in enumerate(words) if w in world.ATTRIBUTES]
      objects = [(world.ATTRIBUTES[a], world.CLASSES[o]) for a, o in truth["objects"]]
      assert sorted(named) == sorted(objects)
    is_obj = owner >= 0
    assert sorted({world.CLASSES[i] for i in cls[is_obj]}) == sorted(
        {world.CLASSES[o] for _, o in truth["objects"]})
    # Nearest class prototype recovers every object region's class from its feature.
    f = rec["features"].astype(np.float32)[is_obj]
    nearest = np.argmax(f @ protos["classes"].T, axis=1)
    assert np.mean(nearest == cls[is_obj]) >= 0.9
    # Same object <-> IoU >= 0.4 (so IoU MRM masks an object's regions together).
    iou = masking.box_iou(rec["boxes"][is_obj])
    same = owner[is_obj][:, None] == owner[is_obj][None]
    np.testing.assert_array_equal(iou >= 0.4, same)


def test_generation_is_fast(tmp_path):
  import time
  c = pretrain.get_config("tiny")   # The full tiny sizes: 2,000 + 200 + 200 images.
  c.data.synthetic.dir = str(tmp_path / "tiny")
  start = time.perf_counter()
  synthetic.ensure_synthetic(c)
  assert time.perf_counter() - start < 20.0


def test_object_counts_and_spatial_caption_order(data):
  """Tiny images hold 1-3 objects and <= 1 clutter region; captions name them left to right,
  so a masked region group's place among the boxes tells which caption object it shows."""
  vocab = tokenizer.load_vocab(os.path.join(data, "vocab.txt"))
  inv = {i: w for w, i in vocab.items()}
  caps = schema.load_captions(data, "train")
  c = _config(data)
  s = c.data.synthetic
  params = synthetic.synthetic_params(c)
  counts = []
  for index, (record, _, truth) in enumerate(synthetic.split_images(params, "train")):
    n_obj = len(truth["objects"])
    counts.append(n_obj)
    assert int(np.sum(truth["region_object"] < 0)) <= s.max_clutter
    left_to_right = [truth["objects"][i] for i in np.argsort(truth["object_centre_x"])]
    expected = [(world.ATTRIBUTES[a], world.CLASSES[o]) for a, o in left_to_right]
    for k in np.flatnonzero(caps.image_index == index):
      words = [inv[int(i)] for i in caps.caption(k)]
      named = [(w, words[i + 1]) for i, w in enumerate(words) if w in world.ATTRIBUTES]
      assert named == expected
  assert (s.min_objects, s.max_objects) == (1, 3)
  assert min(counts) == 1 and max(counts) == 3


def test_tiny_world_uses_its_class_and_attribute_subsets(data):
  c = _config(data)
  s = c.data.synthetic
  params = synthetic.synthetic_params(c)
  attrs, classes = set(), set()
  for _, _, truth in synthetic.split_images(params, "train"):
    attrs |= {a for a, _ in truth["objects"]}
    classes |= {o for _, o in truth["objects"]}
  assert attrs == set(range(s.num_attributes)) and classes == set(range(s.num_object_classes))


def test_bad_object_counts_are_named():
  c = pretrain.get_config("tiny")
  c.data.synthetic.min_objects, c.data.synthetic.max_objects = 3, 2
  with pytest.raises(ValueError, match="min_objects=3"):
    synthetic.ensure_synthetic(c)
