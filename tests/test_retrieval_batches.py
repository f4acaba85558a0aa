"""Retrieval fine-tuning data: the 4 pairs per caption, hard negatives from the cached
nearest images, determinism and exact resume, host sharding, bad batch sizes."""
import itertools

import numpy as np
import pytest

from configs import finetune_retrieval
from interbert_jax.data import neighbours
from interbert_jax.data import pipeline
from interbert_jax.data import retrieval_batches
from interbert_jax.data import schema

NUM_IMAGES = 16       # x 5 captions = 80 anchors: an epoch is 10 batches of 8 anchors.


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  c = finetune_retrieval.get_config("tiny")
  s = c.data.synthetic
  s.num_train_images, s.num_validation_images, s.num_test_images = NUM_IMAGES, 12, 4
  s.dir = str(tmp_path_factory.mktemp("synthetic"))
  c.data.num_threads = 2
  c.finetune.num_neighbours = 3
  return c


@pytest.fixture(scope="module")
def straight(config):
  return list(itertools.islice(retrieval_batches.train_iterator(config), 12))


def _caption_text(ids, mask):
  return tuple(ids[1:int(mask.sum()) - 1])


def test_nearest_neighbours_pure_function():
  v = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [1, 0]], np.float32)
  nn = neighbours.nearest_neighbours(v, 2)
  assert nn.dtype == np.int32 and nn.shape == (5, 2)
  np.testing.assert_array_equal(nn[0], [4, 1])        # an identical row first, never itself
  np.testing.assert_array_equal(nn[2], [3, 1])
  assert all(i not in row for i, row in enumerate(nn))
  np.testing.assert_array_equal(neighbours.nearest_neighbours(v, 2, block=2), nn)
  assert neighbours.nearest_neighbours(v, 5).shape == (5, 4)    # at most the others
  with pytest.raises(ValueError, match="k >= 1"):
    neighbours.nearest_neighbours(v, 0)


def test_four_pairs_per_caption(config, straight):
  d = retrieval_batches.data_dir(config)
  caps = schema.load_captions(d, "train")
  by_text = {}
  for k in range(len(caps)):
    by_text.setdefault(tuple(caps.caption(k)), set()).add(int(caps.image_index[k]))
  nbrs = np.load(neighbours.cache_path(d, "train", 3))
  assert nbrs.shape == (NUM_IMAGES, 3)
  vectors = neighbours.image_vectors(NUM_IMAGES, schema.open_images(d, "train").__getitem__)
  np.testing.assert_array_equal(nbrs, neighbours.nearest_neighbours(vectors, 3))

  B = config.batch_size
  for batch in straight:
    assert set(batch) == set(retrieval_batches.KEYS)
    assert batch["text_ids"].shape == (B, config.data.text_len)
    np.testing.assert_array_equal(batch["itm_labels"], np.tile([0, 1, 1, 1], B // 4))
    f = batch["region_features"]
    for q in range(B // 4):
      r = 4 * q
      text = [_caption_text(batch["text_ids"][r + i], batch["text_mask"][r + i]) for i in range(4)]
      # same image in rows 0, 1, 3; same caption in rows 0, 2; row 2 another image
      np.testing.assert_array_equal(f[r], f[r + 1])
      np.testing.assert_array_equal(f[r], f[r + 3])
      assert not np.array_equal(f[r], f[r + 2])
      assert text[0] == text[2]
      # no masking: the caption is stored text, the global token the mean of the regions
      assert text[0] in by_text and text[1] in by_text and text[3] in by_text
      n = int(batch["region_mask"][r].sum()) - 1
      np.testing.assert_allclose(f[r, 0], f[r, 1:n + 1].astype(np.float32).mean(0),
                                 atol=2e-3)
  # the hard negative of each anchor is a caption of one of its image's neighbours
  rec_images = schema.open_images(d, "train")
  feats = {i: np.asarray(rec_images[i]["features"], np.float16) for i in range(NUM_IMAGES)}
  for batch in straight[:3]:
    for q in range(B // 4):
      r = 4 * q
      n = int(batch["region_mask"][r].sum()) - 1
      image = [i for i, x in feats.items()
               if x.shape[0] == n and np.array_equal(x, batch["region_features"][r, 1:n + 1])]
      assert len(image) == 1
      hard = _caption_text(batch["text_ids"][r + 3], batch["text_mask"][r + 3])
      assert by_text[hard] & set(nbrs[image[0]].tolist())


def test_deterministic_resume_and_hosts(config, straight):
  again = list(itertools.islice(retrieval_batches.train_iterator(config, start_step=7), 5))
  for a, b in zip(straight[7:], again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  hosts = [next(retrieval_batches.train_iterator(config, start_step=3, process_index=h,
                                                 process_count=2)) for h in range(2)]
  for key in straight[3]:
    np.testing.assert_array_equal(np.concatenate([h[key] for h in hosts]), straight[3][key])
  e1 = list(retrieval_batches.eval_iterator(config))
  e2 = list(retrieval_batches.eval_iterator(config))
  assert len(e1) == 4 * 5 * 12 // config.batch_size
  for a, b in zip(e1, e2):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  # epochs: every training caption is an anchor exactly once per epoch (10 batches)
  anchors = [_caption_text(b["text_ids"][r], b["text_mask"][r])
             for b in straight[:10] for r in range(0, config.batch_size, 4)]
  caps = schema.load_captions(retrieval_batches.data_dir(config), "train")
  assert sorted(anchors) == sorted(tuple(caps.caption(k)) for k in range(len(caps)))


def test_bad_batch_size(config):
  c = config.copy_and_resolve_references()
  c.batch_size = 30
  with pytest.raises(pipeline.PipelineConfigError, match="divisible by 4"):
    retrieval_batches.RetrievalBatches(c, "train", "train", 0, 1)
