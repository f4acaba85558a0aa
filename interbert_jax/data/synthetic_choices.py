"""Synthetic multiple-choice questions over the synthetic world's images (data/choices.py).

Per image: question "there is"; the right answer names the image's objects left to right
("a red dog and a wooden car ."); each of the 3 distractors changes ONE object's attribute
or class (to another of the world's first num_attributes / num_object_classes), so only
the regions tell them apart. The rationale question (QA->R) asks about one object: "a red
dog ." against the same object with its attribute or class changed. Deterministic from
the synthetic parameters; written beside the synthetic dataset on first use.
"""
import os

import numpy as np

from interbert_jax.data import choices as choices_lib
from interbert_jax.data import synthetic
from interbert_jax.data import synthetic_world as world

NUM_CHOICES = 4
QUESTION = ("there", "is")


def _phrase(objects, order):
  words = []
  for j, i in enumerate(order):
    attr, cls = objects[i]
    words += (["and"] if j else []) + ["a", world.ALL_ATTRIBUTES[attr],
                                       world.ALL_CLASSES[cls]]
  return words + ["."]


def _changed(rng, objects, which, n_attr, n_cls):
  """objects with object `which` given another attribute or class (uniform over both)."""
  attr, cls = objects[which]
  options = [(a, cls) for a in range(n_attr) if a != attr] + \
            [(attr, c) for c in range(n_cls) if c != cls]
  out = list(objects)
  out[which] = options[rng.integers(len(options))]
  return out


def _options(rng, objects, order, positions, n_attr, n_cls):
  """(4 word lists, label): the truth and 3 distinct one-change distractors, shuffled."""
  truth = _phrase(objects, order)
  distractors = []
  while len(distractors) < NUM_CHOICES - 1:
    cand = _phrase(_changed(rng, objects, positions[rng.integers(len(positions))], n_attr,
                            n_cls), order)
    if cand != truth and cand not in distractors:
      distractors.append(cand)
  label = int(rng.integers(NUM_CHOICES))
  return distractors[:label] + [truth] + distractors[label:], label


def questions(params: dict, split: str):
  """Yields one choices.Question per image of the synthetic split."""
  word_ids = {w: i for i, w in enumerate(world.vocab_tokens(**synthetic.vocab_args(params)))}
  ids = lambda words: [word_ids[w] for w in words]
  n_attr, n_cls = params["num_attributes"], params["num_object_classes"]
  for index, (_, _, truth) in enumerate(synthetic.split_images(params, split)):
    rng = np.random.default_rng([params["seed"], 11, synthetic.SPLITS.index(split), index])
    objects = truth["objects"]
    order = list(np.argsort(truth["object_centre_x"], kind="stable"))
    answers, a_label = _options(rng, objects, order, list(range(len(objects))), n_attr, n_cls)
    which = int(rng.integers(len(objects)))
    rationales, r_label = _options(rng, objects, [which], [which], n_attr, n_cls)
    yield choices_lib.Question(index, ids(QUESTION), [ids(a) for a in answers], a_label,
                               [ids(r) for r in rationales], r_label)


def ensure_choices(config, split: str) -> str:
  """The synthetic dataset's directory, with `<split>_choices.jsonl` written if missing."""
  data_dir = synthetic.ensure_synthetic(config)
  path = choices_lib.choices_path(data_dir, split)
  if not os.path.exists(path):
    choices_lib.write_choices(path, questions(synthetic.synthetic_params(config), split))
  return data_dir
