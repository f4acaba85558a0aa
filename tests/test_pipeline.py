"""Input pipeline: the batch contract, ITM negatives, determinism, exact resume, sharding,
a dead loader worker."""
import hashlib
import itertools
import multiprocessing
import os
import signal
import time

import numpy as np
import pytest

from configs import pretrain
from interbert_jax.data import grain_loader
from interbert_jax.data import pipeline
from interbert_jax.data import schema

NUM_IMAGES = 60       # x 2 captions = 120 captions: an epoch is 3.75 batches of 32.


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  c = pretrain.get_config("tiny")
  s = c.data.synthetic
  s.num_train_images, s.num_validation_images, s.num_test_images = NUM_IMAGES, 20, 10
  s.dir = str(tmp_path_factory.mktemp("synthetic"))
  c.data.num_threads = 2
  return c


@pytest.fixture(scope="module")
def straight(config):
  """The first 9 batches of a run from step 0 (crosses two epoch boundaries)."""
  return list(itertools.islice(pipeline.train_iterator(config), 9))


@pytest.fixture(scope="module")
def captions(config):
  return schema.load_captions(pipeline.data_dir(config), "train")


def fingerprint(batch):
  h = hashlib.sha256()
  for key in sorted(batch):
    h.update(key.encode())
    h.update(np.ascontiguousarray(batch[key]).tobytes())
  return h.hexdigest()


def test_batch_contract(config, straight):
  B, T, R = config.batch_size, config.data.text_len, config.data.max_regions + 1
  F, C = config.model.feature_dim, config.model.num_region_classes
  expected = dict(
      text_ids=(np.int32, (B, T)), text_mask=(np.int32, (B, T)),
      segment_ids=(np.int32, (B, T)), region_features=(np.float16, (B, R, F)),
      region_locations=(np.float32, (B, R, 5)), region_mask=(np.int32, (B, R)),
      msm_positions=(np.int32, (B, T)), msm_targets=(np.int32, (B, T)),
      msm_weights=(np.float32, (B, T)), mrm_weights=(np.float32, (B, R)),
      mrm_target_probs=(np.float16, (B, R, C)), mrm_target_classes=(np.int32, (B, R)),
      itm_labels=(np.int32, (B,)))
  for batch in straight:
    assert set(batch) == set(expected)
    for key, (dtype, shape) in expected.items():
      assert batch[key].dtype == dtype and batch[key].shape == shape, key


def test_text_and_msm_targets(config, straight, captions):
  info = pipeline.dataset_info(config)
  vocab = [l.strip() for l in open(info["vocab_path"])]
  cls, sep, mask = vocab.index("[CLS]"), vocab.index("[SEP]"), vocab.index("[MASK]")
  m, L = len(captions), config.data.text_len - 2
  total = masked = 0
  for step, batch in enumerate(straight):
    for row in range(config.batch_size):
      n = int(batch["text_mask"][row].sum()) - 2
      ids = batch["text_ids"][row]
      assert ids[0] == cls and ids[n + 1] == sep and not ids[n + 2:].any()
      assert np.all(batch["text_mask"][row, :n + 2] == 1)
      w = batch["msm_weights"][row].astype(bool)
      pos = batch["msm_positions"][row][w]
      assert np.all(np.diff(pos) > 0) and (len(pos) == 0 or (pos.min() >= 1 and pos.max() <= n))
      assert not batch["msm_positions"][row][~w].any()
      # Putting the targets back gives the caption actually shown with the image.
      restored = ids.copy()
      restored[pos] = batch["msm_targets"][row][w]
      g = step * config.batch_size + row
      epoch, j = divmod(g, m)
      k = int(pipeline.epoch_permutation(config.data.seed, epoch, m)[j])
      own_image = captions.image_index[k]
      shown = restored[1:n + 1]
      same = [c for c in range(m) if np.array_equal(captions.caption(c)[:L], shown)]
      assert same, "the restored caption is not a caption of the split"
      if batch["itm_labels"][row] == 0:
        assert np.array_equal(shown, captions.caption(k)[:L])
      else:
        assert all(captions.image_index[c] != own_image for c in same)
      total += len(pos)
      masked += int((ids[pos] == mask).sum())
  assert abs(masked / total - 0.8) < 0.06


def test_itm_negatives_rate(straight):
  labels = np.concatenate([b["itm_labels"] for b in straight])
  assert abs(labels.mean() - 0.5) < 0.08          # 288 draws: 3 sigma = 0.088.
  assert set(np.unique(labels)) == {0, 1}


def test_regions_global_token_and_mrm(config, straight):
  for batch in straight:
    loc, feats = batch["region_locations"], batch["region_features"].astype(np.float32)
    rmask = batch["region_mask"]
    np.testing.assert_array_equal(loc[:, 0], np.tile([0, 0, 1, 1, 1], (len(loc), 1)))
    assert np.all(rmask[:, 0] == 1) and np.all(batch["mrm_weights"][:, 0] == 0)
    w = batch["mrm_weights"].astype(bool)
    assert not (w & (rmask == 0)).any()
    assert not feats[w].any()                      # Masked regions are zeroed ...
    assert loc[w].any(axis=-1).all()               # ... but keep their locations.
    valid = rmask[:, 1:].astype(bool)
    assert feats[:, 1:][valid & ~w[:, 1:]].any(axis=-1).all()
    n = valid.sum(1, keepdims=True)
    mean = (feats[:, 1:] * valid[..., None]).sum(1) / n
    np.testing.assert_allclose(feats[:, 0], mean, atol=2e-3, rtol=2e-3)
    probs = batch["mrm_target_probs"].astype(np.float32)
    np.testing.assert_allclose(probs[:, 1:].sum(-1)[valid], 1.0, atol=0.03)
    np.testing.assert_array_equal(probs.argmax(-1)[:, 1:][valid],
                                  batch["mrm_target_classes"][:, 1:][valid])
  rate = np.concatenate([b["mrm_weights"][:, 1:][b["region_mask"][:, 1:] == 1]
                         for b in straight]).mean()
  assert 0.12 < rate < 0.35      # Anchors at 10%, grown by their IoU groups.


def test_determinism_and_exact_resume(config, straight):
  again = list(itertools.islice(pipeline.train_iterator(config), 9))
  assert [fingerprint(b) for b in again] == [fingerprint(b) for b in straight]
  for k in (3, 4, 7):             # Epoch boundaries fall inside batches 3 and 7.
    resumed = next(pipeline.train_iterator(config, start_step=k))
    assert fingerprint(resumed) == fingerprint(straight[k]), k
  # Masks are redrawn every epoch: the 2nd epoch differs from the 1st.
  assert fingerprint(straight[0]) != fingerprint(straight[4])


def test_two_host_sharding(config, straight):
  for k in (0, 5):
    hosts = [next(pipeline.train_iterator(config, start_step=k, process_index=h,
                                          process_count=2)) for h in range(2)]
    assert hosts[0]["text_ids"].shape[0] == config.batch_size // 2
    joined = {key: np.concatenate([h[key] for h in hosts]) for key in hosts[0]}
    assert fingerprint(joined) == fingerprint(straight[k])


def test_eval_iterator_is_finite_and_repeatable(config):
  first = [fingerprint(b) for b in pipeline.eval_iterator(config, num_batches=2)]
  second = [fingerprint(b) for b in pipeline.eval_iterator(config, num_batches=2)]
  assert len(first) == 2 and first == second
  # Default: max(1, captions // batch) = max(1, 40 // 32) batches of the eval split.
  assert len(list(pipeline.eval_iterator(config))) == 1
  test_batches = list(pipeline.eval_iterator(config, split="test"))
  assert len(test_batches) == 1 and fingerprint(test_batches[0]) not in first


def test_dataset_info(config):
  info = pipeline.dataset_info(config)
  assert info["num_captions"] == 2 * NUM_IMAGES
  assert info["feature_dim"] == config.model.feature_dim
  assert info["num_classes"] == config.model.num_region_classes
  assert info["vocab_size"] <= config.model.vocab_size
  assert info["vocab_path"].endswith("vocab.txt")


@pytest.mark.parametrize("key,value,message", [
    ("model.vocab_size", 10, "config.model.vocab_size"),
    ("model.feature_dim", 32, "config.model.feature_dim"),
    ("model.num_region_classes", 100, "config.model.num_region_classes"),
    ("data.train_split", "nope", "config.data.train_split"),
])
def test_config_errors_name_the_key(config, key, value, message):
  c = config.copy_and_resolve_references()
  if key == "model.feature_dim" or key == "model.num_region_classes":
    # The synthetic data would be regenerated for the new shapes: point at the old one.
    c.data.dir = pipeline.data_dir(config)
  section, _, name = key.rpartition(".")
  setattr(c[section] if section else c, name, value)
  with pytest.raises(ValueError, match=message.replace(".", r"\.")):
    next(pipeline.train_iterator(c))


def test_worker_processes_give_the_same_batches(config, straight):
  c = config.copy_and_resolve_references()
  c.data.num_workers = 2
  got = list(itertools.islice(pipeline.train_iterator(c, start_step=2), 3))
  assert [fingerprint(b) for b in got] == [fingerprint(b) for b in straight[2:5]]


def test_variants_adaptive_regions_token_masking_fixed_targets_regress(config):
  c = config.copy_and_resolve_references()
  c.data.dir = pipeline.data_dir(config)
  c.data.adaptive_regions = True
  c.data.min_regions, c.data.region_conf_threshold = 2, 0.75
  c.data.msm.strategy = "token"
  c.data.max_msm_targets = 3
  c.model.mrm_target = "regress"
  batches = list(itertools.islice(pipeline.train_iterator(c), 4))
  plain = list(itertools.islice(pipeline.train_iterator(config), 4))
  for b, p in zip(batches, plain):
    assert b["msm_positions"].shape == (c.batch_size, 3)
    assert b["msm_weights"].sum(1).max() <= 3
    real = b["region_mask"][:, 1:].sum(1)
    available = p["region_mask"][:, 1:].sum(1)               # Same images, fixed mode.
    # At least min_regions are kept (or all an image has), at most max_regions.
    assert (real >= np.minimum(2, available)).all() and real.max() <= c.data.max_regions
    assert (real <= available).all()                         # Low-confidence ones dropped.
    assert (real < available).any()
    assert b["mrm_target_features"].shape == b["region_features"].shape
    w = b["mrm_weights"].astype(bool)
    # Targets keep the original features although the inputs are zeroed.
    assert b["mrm_target_features"][w].astype(np.float32).any(-1).all()
  targets = np.concatenate([b["msm_weights"].sum(1) for b in batches])
  lengths = np.concatenate([b["text_mask"].sum(1) - 2 for b in batches])
  assert 0.08 < targets.sum() / lengths.sum() < 0.16     # ~15%, capped at 3 per caption.


def test_object_id_datasets_get_one_hot_targets(config, tmp_path):
  """LXMERT-style data (object ids, no distribution): targets are one-hot of the id."""
  c = config.copy_and_resolve_references()
  src = pipeline.data_dir(config)
  images = schema.open_images(src, "train")
  caps = schema.load_captions(src, "train")
  records, captions = [], {}
  for i in range(6):
    r = dict(images[i])
    del r["cls_prob"]
    records.append(r)
    captions[r["image_id"]] = [caps.caption(k) for k in np.flatnonzero(caps.image_index == i)]
  meta = schema.read_metadata(src)
  schema.write_vocab(tmp_path, [l.rstrip("\n") for l in open(f"{src}/vocab.txt")])
  for split in ("train", "validation"):
    schema.write_split(tmp_path, split, records, captions, feature_dim=meta["feature_dim"],
                       num_classes=meta["num_classes"], class_target="object_ids",
                       vocab_size=meta["vocab_size"], lower_case=True, source_format="test")
  c.data.dir = str(tmp_path)
  b = next(pipeline.train_iterator(c))
  valid = b["region_mask"][:, 1:] == 1
  probs = b["mrm_target_probs"][:, 1:][valid].astype(np.float32)
  np.testing.assert_array_equal(probs.sum(-1), 1.0)
  np.testing.assert_array_equal(probs.argmax(-1), b["mrm_target_classes"][:, 1:][valid])


def test_worker_slots_are_unlinked_when_the_iterator_closes(config):
  """Each worker's ring of shared-memory slots (grain_loader) is gone once the trainer's
  iterator is closed: nothing is left in /dev/shm."""
  c = config.copy_and_resolve_references()
  c.data.num_workers = 1
  before = {p.pid for p in multiprocessing.active_children()}
  it = pipeline.train_iterator(c)
  next(it)
  (worker,) = [p for p in multiprocessing.active_children() if p.pid not in before]
  ring = lambda: [f for f in os.listdir("/dev/shm") if f.startswith(f"interbert_{worker.pid}_")]
  assert len(ring()) == grain_loader.ring_slots(c.data.prefetch)
  it.close()
  assert ring() == []


def test_worker_deaths_are_named_from_grains_error():
  """Grain's error text -> how the worker died; SIGBUS points at /dev/shm."""
  died = lambda code: grain_loader._worker_death(  # pylint: disable=protected-access
      RuntimeError(f"Worker process was terminated unexpectedly with exit code {code}."))
  assert died(-9) == "killed by SIGKILL"
  assert died(1) == "exit code 1"
  assert died(-7).startswith("killed by SIGBUS: /dev/shm is probably too small")
  assert grain_loader._worker_death(ValueError("bad record")) is None  # pylint: disable=protected-access


def test_dead_worker_process_stops_the_iterator_within_seconds(config):
  """A loader worker killed with SIGKILL (as the OOM killer does): the next batch raises."""
  c = config.copy_and_resolve_references()
  c.data.num_workers = 1
  before = {p.pid for p in multiprocessing.active_children()}
  it = pipeline.train_iterator(c)
  next(it)
  workers = [p for p in multiprocessing.active_children() if p.pid not in before]
  assert len(workers) == 1
  os.kill(workers[0].pid, signal.SIGKILL)
  start = time.time()
  with pytest.raises(grain_loader.WorkerDiedError,
                     match=rf"worker process died \(pid {workers[0].pid}, killed by SIGKILL\): "
                           "stopping"):
    for _ in range(100):
      next(it)
  assert time.time() - start < 10
