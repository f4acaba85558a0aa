"""Multiple choice (VCR-style): the VCR importer (tags, errors naming file and line), the
synthetic questions (distractors change one object or attribute), batches, the model head
over an unchanged InterBERT tree, and the Q->A / QA->R / Q->AR metrics."""
import json

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import interbert_jax
from configs import finetune_vcr
from interbert_jax import tasks
from interbert_jax.checkpoints import init_from
from interbert_jax.data import choice_batches, choices, schema, vcr
from interbert_jax.data import synthetic_world as world
from interbert_jax.data.importers import RecordError
from interbert_jax.model import dummy_inputs
from tests.test_data_formats import butd_line, make_images, write_lines

VCR_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "why", "is", "casey", "jessie",
             "and", "dog", "happy", "sad", "it", "runs", "?", "."]


def _vcr_item(**kw):
  item = {"img_id": "img0", "objects": ["person", "dog", "person"],
          "question": ["why", "is", [0], "happy", "?"],
          "answer_choices": [[[1], "runs"], ["it", "is", "sad"], [[0, 2], "runs"], ["sad"]],
          "answer_label": 2,
          "rationale_choices": [["it"], [[1]], ["happy"], [[2], "is", "sad"]],
          "rationale_label": 0}
  item.update(kw)
  return item


def test_detag_names_persons_gender_neutral():
  objects = ["person", "dog", "person"]
  assert vcr.detag(["why", "is", [0, 2], "near", [1]], objects, "x") == \
      "why is Casey and Jessie near dog"
  with pytest.raises(RecordError, match=r"f.jsonl:line 3: tag \[3\] points past the 3"):
    vcr.detag([[3]], objects, "f.jsonl:line 3")


@pytest.mark.parametrize("bad, message", [
    (dict(question=["why", [5]]), r"line 2: tag \[5\] points past"),
    (dict(answer_label=4), r"line 2: answer_label=4 not in \[0, 4\)"),
    (dict(rationale_label=-1), r"line 2: rationale_label=-1"),
    (dict(answer_choices=[["a"]]), r"line 2: answer_choices has 1 options")])
def test_bad_vcr_line_names_file_and_line(tmp_path, bad, message):
  path = write_lines(tmp_path / "val.jsonl", [json.dumps(_vcr_item()),
                                             json.dumps(_vcr_item(**bad))])
  with pytest.raises(RecordError, match=message):
    vcr.read_annotations(path)


def test_vcr_import_round_trip(tmp_path):
  images = make_images(3)
  tsv = write_lines(tmp_path / "val.tsv", [butd_line(im) for im in images])
  vocab = write_lines(tmp_path / "vocab.txt", VCR_VOCAB)
  ann = write_lines(tmp_path / "val.jsonl", [json.dumps(_vcr_item()),
                                            json.dumps(_vcr_item(img_id="img2"))])
  out = tmp_path / "out"
  report = vcr.run(annotations=ann, format="butd_tsv", features=tsv, vocab=vocab,
                   output_dir=str(out), split="validation", print_fn=lambda s: None)
  assert report["questions"] == 2 and report["images"] == 3
  tok = {t: i for i, t in enumerate(VCR_VOCAB)}
  qs = choices.load_choices(choices.choices_path(str(out), "validation"), num_images=3,
                            num_choices=4, vocab_size=len(VCR_VOCAB))
  ids = lambda s: [tok[w] for w in s.split()]
  assert qs[0].question == ids("why is casey happy ?")
  assert qs[0].answers[2] == ids("casey and jessie runs")    # persons 0 and 2 (lower-cased)
  assert qs[0].answers[0] == ids("dog runs")
  assert qs[0].answer_label == 2 and qs[0].rationale_label == 0
  images_out = schema.open_images(str(out), "validation")
  assert images_out[qs[1].image_index]["image_id"] == "img2"
  # a question whose image is not in the features: its annotation line, nothing written
  ann = write_lines(tmp_path / "bad.jsonl", [json.dumps(_vcr_item()),
                                            json.dumps(_vcr_item(img_id="nope"))])
  with pytest.raises(RecordError, match=r"bad.jsonl:line 2: .*'nope'"):
    vcr.run(annotations=ann, format="butd_tsv", features=tsv, vocab=vocab,
            output_dir=str(tmp_path / "out2"), split="validation", print_fn=lambda s: None)
  assert not (tmp_path / "out2" / "validation_choices.jsonl").exists()


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  c = finetune_vcr.get_config("tiny")
  s = c.data.synthetic
  s.num_train_images, s.num_validation_images, s.num_test_images = 24, 8, 4
  s.dir = str(tmp_path_factory.mktemp("synthetic"))
  c.data.num_threads = 2
  c.batch_size = 8
  return c


def test_synthetic_distractors_change_one_object_or_attribute(config):
  batch = next(choice_batches.train_iterator(config))
  maker = choice_batches.ChoiceBatches(config, "eval", "validation", 0, 1)
  words = world.vocab_tokens()
  content = set(world.CLASSES) | set(world.ATTRIBUTES)
  for q in maker.questions:
    for options, label in ((q.answers, q.answer_label), (q.rationales, q.rationale_label)):
      truth = options[label]
      assert len({tuple(o) for o in options}) == 4
      for o in options:
        if o is truth:
          continue
        diff = [(words[a], words[b]) for a, b in zip(o, truth) if a != b]
        assert len(o) == len(truth) and len(diff) == 1, (o, truth)
        assert diff[0][0] in content and diff[0][1] in content
  B, C, T = config.batch_size, 4, config.data.text_len
  assert batch["text_ids"].shape == (B, C, T) and batch["region_features"].shape[0] == B
  assert set(batch["mode"].tolist()) <= {0, 1} and batch["labels"].max() < 4
  sep = words.index("[SEP]")
  for row in range(B):
    for c in range(C):
      ids, seg = batch["text_ids"][row, c], batch["segment_ids"][row, c]
      n = int(batch["text_mask"][row, c].sum())
      first_sep = int(np.flatnonzero(ids == sep)[0])
      assert ids[n - 1] == sep and (seg[:first_sep + 1] == 0).all() and (seg[first_sep + 1:n] == 1).all()
  # eval: a question's Q->A and QA->R examples are adjacent rows
  e = next(choice_batches.eval_iterator(config))
  np.testing.assert_array_equal(e["mode"], np.tile([0, 1], B // 2))


def test_model_keeps_interbert_tree_and_loads_it(config):
  task = tasks.get_task(config)
  model = task.build_model(config)
  params = nn.unbox(model.init({"params": jax.random.key(0)}, **task.init_inputs(config.model),
                               deterministic=True)["params"])
  base_model = interbert_jax.build_model(config.model)
  base = nn.unbox(base_model.init(jax.random.key(1), **dummy_inputs(config.model))["params"])
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  flat_base = flax.traverse_util.flatten_dict(base, sep="/")
  assert set(flat) - set(flat_base) == {"choice_head/kernel", "choice_head/bias"}
  assert flat["choice_head/kernel"].shape == (config.model.pooler_dim, 1)
  merged = init_from.merge_params(params, base)
  chex_equal = lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  chex_equal(flax.traverse_util.flatten_dict(merged, sep="/")["text_pooler/kernel"],
             flat_base["text_pooler/kernel"])
  batch = next(choice_batches.eval_iterator(config))
  out = task.apply(model, merged, batch, deterministic=True)
  assert out["choice_logits"].shape == (config.batch_size, 4)
  # each choice scores exactly as InterBert's fused vector of that (text, image) pair
  b0 = {k: v[:1] for k, v in batch.items()}
  full = base_model.apply({"params": merged}, b0["text_ids"][0], b0["text_mask"][0],
                          np.repeat(b0["region_features"], 4, 0),
                          np.repeat(b0["region_locations"], 4, 0),
                          np.repeat(b0["region_mask"], 4, 0), segment_ids=b0["segment_ids"][0])
  fused = full["text_pooled"] * full["image_pooled"]
  want = fused @ merged["choice_head"]["kernel"][:, 0] + merged["choice_head"]["bias"][0]
  np.testing.assert_allclose(out["choice_logits"][0], want, rtol=1e-5, atol=1e-5)


def test_q_ar_metric():
  task = tasks.get_task(finetune_vcr.get_config("tiny"))
  logits = jnp.eye(4)[jnp.array([0, 1, 2, 3, 0, 0])] * 5.0    # predicts 0,1,2,3,0,0
  batch = {"labels": jnp.array([0, 1, 2, 0, 1, 0]), "mode": jnp.array([0, 1, 0, 1, 0, 1])}
  terms = task.eval_terms({"choice_logits": logits}, batch, None)
  _, m = task.combine(terms, None)
  assert float(m["qa_acc"]) == pytest.approx(2 / 3)      # rows 0, 2 right; 4 wrong
  assert float(m["qar_acc"]) == pytest.approx(2 / 3)     # rows 1, 5 right; 3 wrong
  assert float(m["q_ar_acc"]) == pytest.approx(1 / 3)    # only question 0 both
  assert float(m["mc_acc"]) == pytest.approx(4 / 6)
