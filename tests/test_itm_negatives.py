"""Hard ITM negatives (data.itm_negatives="hard"): nearest images by cosine of mean region
features, draws only from their captions (never a duplicate of a positive caption), cached
beside the dataset, and batches still a pure function of (seed, epoch, position)."""
import hashlib
import itertools
import os

import numpy as np
import pytest

from configs import pretrain
from interbert_jax.data import neighbours
from interbert_jax.data import pipeline
from interbert_jax.training import config_validation

K = 3


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  c = pretrain.get_config("tiny")
  s = c.data.synthetic
  s.num_train_images, s.num_validation_images, s.num_test_images = 60, 20, 10
  s.dir = str(tmp_path_factory.mktemp("synthetic"))
  c.data.num_threads = 2
  c.data.itm_negatives = "hard"
  c.data.hard_negative_k = K
  c.data.hard_negative_prob = 1.0
  return c


def _fingerprint(batch):
  h = hashlib.sha256()
  for key in sorted(batch):
    h.update(key.encode() + np.ascontiguousarray(batch[key]).tobytes())
  return h.hexdigest()


def test_nearest_images_by_cosine():
  emb = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [1, 0]], np.float32)
  table = neighbours.nearest_neighbours(emb, 2, block=2)        # blocks cross rows
  np.testing.assert_array_equal(table, [[4, 1], [0, 4], [3, 1], [2, 1], [0, 1]])
  assert table.dtype == np.int32
  assert neighbours.nearest_neighbours(emb, 10).shape == (5, 4)  # at most the others


def test_hard_pairs_come_from_the_nearest_images(config):
  split = pipeline._Split(config, "train")
  table = split.hard.neighbors
  assert table.shape == (60, K)
  caps = split.captions.image_index
  labels, from_neighbours = [], []
  for g in range(600):
    image, caption, label = split.pair(pipeline.example_rng(0, 1, 0, g), g % len(caps))
    assert image == caps[g % len(caps)]
    labels.append(label)
    if label:
      assert caps[caption] != image
      own = {split._caption(c).tobytes() for c in np.flatnonzero(caps == image)}
      if len(split.hard.candidates(image)):
        assert caps[caption] in table[image]
        assert split._caption(caption).tobytes() not in own   # never a positive's text
      from_neighbours.append(caps[caption] in table[image])
  assert 0.44 < np.mean(labels) < 0.56                          # itm_negative_prob 0.5
  assert np.mean(from_neighbours) > 0.95
  # hard_negative_prob=0.5: about half the negatives are hard (random ones rarely are).
  half = config.copy_and_resolve_references()
  half.data.hard_negative_prob = 0.5
  split = pipeline._Split(half, "train")
  hits = [caps[c] in table[i] for i, c, l in
          (split.pair(pipeline.example_rng(0, 1, 0, g), g % len(caps)) for g in range(1200))
          if l]
  assert 0.45 < np.mean(hits) < 0.65, np.mean(hits)            # 0.5 + 0.5 * 3/59


def test_neighbours_are_cached_beside_the_dataset(config, monkeypatch, tmp_path):
  data_dir = pipeline.data_dir(config)
  path = os.path.join(data_dir, "neighbours", f"train_k{K}.npy")
  pipeline._Split(config, "train")
  assert os.path.exists(path) and np.load(path).shape == (60, K)

  def no_compute(*a, **k):
    raise AssertionError("recomputed despite the cache")
  monkeypatch.setattr(neighbours, "nearest_neighbours", no_compute)
  pipeline._Split(config, "train")                              # loads, does not compute
  assert neighbours.cache_path("gs://bucket/cc", "train", 8, str(tmp_path)).startswith(
      str(tmp_path))                                            # remote dataset: cache dir


def test_hard_batches_resume_exactly_and_split_over_hosts(config):
  straight = list(itertools.islice(pipeline.train_iterator(config), 6))
  again = list(itertools.islice(pipeline.train_iterator(config), 6))
  assert [_fingerprint(b) for b in again] == [_fingerprint(b) for b in straight]
  for k in (2, 5):                                              # an epoch is 3.75 batches
    assert _fingerprint(next(pipeline.train_iterator(config, start_step=k))) == \
        _fingerprint(straight[k])
  hosts = [next(pipeline.train_iterator(config, start_step=4, process_index=h,
                                        process_count=2)) for h in range(2)]
  joined = {key: np.concatenate([h[key] for h in hosts]) for key in hosts[0]}
  assert _fingerprint(joined) == _fingerprint(straight[4])
  rand = config.copy_and_resolve_references()
  rand.data.itm_negatives = "random"
  other = next(pipeline.train_iterator(rand))
  np.testing.assert_array_equal(other["itm_labels"], straight[0]["itm_labels"])  # same draws
  assert _fingerprint(other) != _fingerprint(straight[0])       # other captions


def test_config_checks_name_the_keys(config):
  bad = config.copy_and_resolve_references()
  bad.data.itm_negatives, bad.data.hard_negative_prob = "nearest", 1.5
  with pytest.raises(config_validation.ConfigError) as e:
    config_validation.validate_config(bad, num_devices=1)
  assert "config.data.itm_negatives='nearest': must be one of ('random', 'hard')" in str(e.value)
  assert "config.data.hard_negative_prob=1.5: must be in [0, 1]" in str(e.value)
