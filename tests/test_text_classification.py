"""Text-only classification: GLUE-style TSV (header optional, one or two texts), bad labels
naming file and line, batches, the text path (= InterBERT with every region masked out),
the classifier tree and init_from skipping the image side, accuracy and macro F1."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import interbert_jax
from configs import finetune_text
from interbert_jax import tasks
from interbert_jax.checkpoints import init_from
from interbert_jax.data import schema, text_classification
from interbert_jax.model import dummy_inputs
from interbert_jax.tasks import classification
from tests.test_data_formats import write_lines

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "movie", "plot", "."]


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  d = tmp_path_factory.mktemp("glue")
  write_lines(d / "vocab.txt", VOCAB)
  write_lines(d / "train.tsv", ["label\tsentence", "pos\tgood movie .", "neg\tbad plot",
                                "pos\tgood", "neg\tbad movie"])
  write_lines(d / "dev.tsv", ["pos\tgood plot\tgood movie", "neg\tbad\tmovie"])
  c = finetune_text.get_config("tiny")
  c.data.dir, c.data.eval_split = str(d), "dev"
  c.batch_size, c.data.text_len, c.data.num_threads = 2, 8, 1
  return c


def test_tsv_and_batches(config):
  assert text_classification.label_set(config) == ("neg", "pos")
  e = next(text_classification.eval_iterator(config))
  tok = {t: i for i, t in enumerate(VOCAB)}
  ids = lambda s: [tok[w] for w in s.split()]
  want = ids("[CLS] good plot [SEP] good movie [SEP]")
  np.testing.assert_array_equal(e["text_ids"][0, :len(want)], want)
  np.testing.assert_array_equal(e["segment_ids"][0, :len(want)], [0, 0, 0, 0, 1, 1, 1])
  np.testing.assert_array_equal(e["labels"], [1, 0])
  assert e["text_mask"][1].sum() == 5                      # [CLS] bad [SEP] movie [SEP]
  t = next(text_classification.train_iterator(config))
  assert t["text_ids"].shape == (2, 8) and set(t) == {"text_ids", "text_mask",
                                                      "segment_ids", "labels"}


def test_bad_label_and_columns_name_file_and_line(config, tmp_path):
  c = config.copy_and_resolve_references()
  write_lines(tmp_path / "dev.tsv", ["pos\tgood", "meh\tgood movie"])
  write_lines(tmp_path / "vocab.txt", VOCAB)
  write_lines(tmp_path / "train.tsv", ["pos\tgood", "neg\tbad"])
  c.data.dir = str(tmp_path)
  with pytest.raises(schema.DatasetError, match=r"dev.tsv:line 2: label 'meh' is not in"):
    text_classification.TextBatches(c, "eval", "dev", 0, 1)
  write_lines(tmp_path / "dev.tsv", ["pos\tgood", "pos"])
  with pytest.raises(schema.DatasetError, match=r"dev.tsv:line 2: 1 columns"):
    text_classification.read_tsv(str(tmp_path / "dev.tsv"))


def test_text_path_model(config):
  task = tasks.get_task(config)
  model = task.build_model(config)
  params = nn.unbox(model.init({"params": jax.random.key(0)}, **task.init_inputs(config.model),
                               deterministic=True)["params"])
  assert set(params) == {"embeddings", "single_stream", "text_stream", "classifier"}
  assert params["classifier"]["kernel"].shape == (config.model.hidden_size, 2)
  full_model = interbert_jax.build_model(config.model)
  full = nn.unbox(full_model.init(jax.random.key(1), **dummy_inputs(config.model))["params"])
  with pytest.raises(ValueError, match="not in the model"):
    init_from.merge_params(params, full)
  merged = init_from.merge_params(params, full, ignore=task.init_from_ignore)
  batch = next(text_classification.eval_iterator(config))
  # the text path equals InterBERT's text stream output with every region masked out
  text = model.apply({"params": merged}, batch["text_ids"], batch["text_mask"],
                     batch["segment_ids"], method=classification.TextClassifier.text_path)
  B = batch["text_ids"].shape[0]
  ref = full_model.apply({"params": full}, batch["text_ids"], batch["text_mask"],
                         np.zeros((B, 3, config.model.feature_dim), np.float32),
                         np.zeros((B, 3, 5), np.float32), np.zeros((B, 3), np.int32),
                         segment_ids=batch["segment_ids"])
  m = batch["text_mask"].astype(bool)
  np.testing.assert_allclose(np.asarray(text)[m], np.asarray(ref["text_hidden"])[m],
                             atol=1e-5)
  out = task.apply(model, merged, batch, deterministic=True)
  assert out["logits"].shape == (B, 2)


def test_accuracy_and_macro_f1():
  task = classification.TASK
  logits = jnp.eye(3)[jnp.array([0, 0, 1, 2, 2, 2])]
  labels = jnp.array([0, 1, 1, 2, 2, 0])
  _, m = task.combine(task.eval_terms({"logits": logits}, {"labels": labels}, None), None)
  # per class F1: c0 tp1 pred2 true2 -> .5; c1 tp1 pred1 true2 -> 2/3; c2 tp2 pred3 true2 -> .8
  assert float(m["cls_acc"]) == pytest.approx(4 / 6)
  assert float(m["macro_f1"]) == pytest.approx((0.5 + 2 / 3 + 0.8) / 3, rel=1e-6)
