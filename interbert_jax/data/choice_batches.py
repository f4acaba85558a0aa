"""Multiple-choice batches (VCR-style Q->A and QA->R) from `<split>_choices.jsonl`.

An example is (question q, mode): mode 0 = Q->A, text `[CLS] Q [SEP] A_c [SEP]`; mode 1 =
QA->R, text `[CLS] Q A* [SEP] R_c [SEP]` with A* the right answer (../shared/SPEC.md
section 4); segment 0 up to the first [SEP], 1 after; pairs longer than text_len lose tokens
from the end of the longer part. Every choice sees the question's image (regions unmasked).
Example e is question e // M, mode e % M (M = 2 with rationales, else 1). Training: example
permutation_epoch[g % n] at position g (pipeline.epoch_permutation); eval: in stored order,
so a question's two modes sit in adjacent rows (Q->AR accuracy pairs them).

Keys: text_ids, text_mask, segment_ids int32 [B, C, T]; region_features [B, R, F];
region_locations [B, R, 5]; region_mask [B, R]; labels int32 [B]; mode int32 [B].
"""
import functools

import numpy as np

from interbert_jax.data import choices as choices_lib
from interbert_jax.data import pipeline
from interbert_jax.data import synthetic_choices

NUM_CHOICES = 4


def data_dir(config, split: str) -> str:
  if config.data.dir:
    return config.data.dir
  return synthetic_choices.ensure_choices(config, split)


def _truncate_pair(a, b, max_len):
  a, b = list(a), list(b)
  while len(a) + len(b) > max_len:
    (a if len(a) > len(b) else b).pop()
  return a, b


class ChoiceBatches:
  """index -> host batch: training step `index` or eval batch `index` of a split."""

  def __init__(self, config, kind: str, split: str, process_index: int, process_count: int):
    directory = data_dir(config, split)
    self.split = pipeline._Split(config, split)  # pylint: disable=protected-access
    pipeline.validate(config, self.split.meta)
    self.questions = choices_lib.load_choices(
        choices_lib.choices_path(directory, split), num_images=len(self.split.images),
        num_choices=NUM_CHOICES, vocab_size=self.split.vocab_size)
    self.modes = 2 if all(q.rationales for q in self.questions) else 1
    self.num_examples = self.modes * len(self.questions)
    self.kind, self.seed = kind, int(config.data.seed)
    self.global_batch = config.batch_size
    self.host_batch = config.batch_size // process_count
    self.process_index = process_index

  def spec(self) -> dict:
    b, C, T = self.host_batch, NUM_CHOICES, self.split.T
    full = self.split.batch_spec(b)
    return dict(text_ids=((b, C, T), np.int32), text_mask=((b, C, T), np.int32),
                segment_ids=((b, C, T), np.int32), region_features=full["region_features"],
                region_locations=full["region_locations"], region_mask=full["region_mask"],
                labels=((b,), np.int32), mode=((b,), np.int32))

  def fill(self, out: dict, row: int, example: int) -> None:
    q = self.questions[example // self.modes]
    mode = example % self.modes
    if mode == 0:
      first, options, label = q.question, q.answers, q.answer_label
    else:
      first, options, label = q.question + q.answers[q.answer_label], q.rationales, \
          q.rationale_label
    s = self.split
    for c, option in enumerate(options):
      a, b = _truncate_pair(first, option, s.T - 3)
      ids = [s.cls_id, *a, s.sep_id, *b, s.sep_id]
      out["text_ids"][row, c, :len(ids)] = ids
      out["text_mask"][row, c, :len(ids)] = 1
      out["segment_ids"][row, c, len(a) + 2:len(ids)] = 1
    out["labels"][row], out["mode"][row] = label, mode
    s.fill_regions(out, row, q.image_index)

  def __call__(self, index: int, out=None) -> dict:
    if out is None:
      out = {k: np.zeros(shape, dtype) for k, (shape, dtype) in self.spec().items()}
    n = self.num_examples
    first = index * self.global_batch + self.process_index * self.host_batch
    for row in range(self.host_batch):
      self.fill(out, row, pipeline.example_at(self.kind, self.seed, first + row, n))
    return out

  def num_eval_batches(self) -> int:
    """Default eval length: the max(1, n // batch_size) full batches."""
    return max(1, self.num_examples // self.global_batch)


train_iterator = functools.partial(pipeline.maker_iterator, ChoiceBatches, kind="train")
eval_iterator = functools.partial(pipeline.maker_iterator, ChoiceBatches, kind="eval")


def steps_per_epoch(config) -> float:
  return ChoiceBatches(config, "train", config.data.train_split, 0, 1).num_examples \
      / config.batch_size
