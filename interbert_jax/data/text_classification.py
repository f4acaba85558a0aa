"""Text classification data: GLUE-style TSV through the text path alone.

`<data.dir>/<split>.tsv`: `label<TAB>text` or `label<TAB>text_a<TAB>text_b`, one example
a line; a first line whose label column reads `label` is a header. Tokenised with
`finetune.vocab` (default `<data.dir>/vocab.txt`). Labels: `finetune.labels` or, when empty,
the sorted labels of the training split; a label outside that set stops with the file and
line. `data.dir` = "": a synthetic set (`synthetic_text_dir`).

Batches: text_ids, text_mask, segment_ids int32 [B, T] (`[CLS] a [SEP] (b [SEP])`,
segment 1 for b), labels int32 [B]. Training order: pipeline.epoch_permutation; eval: in
order (the max(1, n // B) full batches).
"""
import functools
import os
import shutil

import numpy as np

from interbert_jax.data import pipeline
from interbert_jax.data import schema
from interbert_jax.data import synthetic
from interbert_jax.data import synthetic_world as world
from interbert_jax.data import tokenizer as tokenizer_lib


def read_tsv(path: str):
  """-> [(label, text_a, text_b or None, line)]; errors name the file and line."""
  if not os.path.exists(path):
    raise schema.DatasetError(f"{path}: missing (text classification split)")
  rows = []
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      line = line.rstrip("\n")
      if not line.strip():
        continue
      cols = line.split("\t")
      if len(cols) not in (2, 3):
        raise schema.DatasetError(f"{path}:line {line_no}: {len(cols)} columns, expected "
                                  "label<TAB>text or label<TAB>text_a<TAB>text_b")
      if line_no == 1 and cols[0].strip().lower() == "label":
        continue                                  # header
      rows.append((cols[0].strip(), cols[1], cols[2] if len(cols) == 3 else None, line_no))
  if not rows:
    raise schema.DatasetError(f"{path}: no examples")
  return rows


def synthetic_text_dir(config) -> str:
  """A synthetic set beside the synthetic dataset: the world's captions, labelled with
  the attribute of the first object they name (4 labels in `tiny`); written once."""
  base = synthetic.ensure_synthetic(config)
  out = os.path.join(base, "text_classification")
  if os.path.exists(os.path.join(out, "vocab.txt")):
    return out
  tmp = f"{out}.tmp{os.getpid()}"
  os.makedirs(tmp, exist_ok=True)
  vocab_path = os.path.join(base, schema.VOCAB_FILE)      # the world's, as generated
  words = {i: w for w, i in tokenizer_lib.load_vocab(vocab_path).items()}
  attributes = set(world.ALL_ATTRIBUTES)
  for split in synthetic.SPLITS:
    caps = schema.load_captions(base, split)
    with open(os.path.join(tmp, f"{split}.tsv"), "w", encoding="utf-8") as f:
      f.write("label\tsentence\n")
      for k in range(len(caps)):
        text = [words[i] for i in caps.caption(k)]
        label = next(w for w in text if w in attributes)
        f.write(f"{label}\t{' '.join(text)}\n")
  shutil.copyfile(vocab_path, os.path.join(tmp, "vocab.txt"))
  try:
    os.rename(tmp, out)
  except OSError:             # another process finished first: its identical copy stays
    shutil.rmtree(tmp, ignore_errors=True)
  return out


def data_dir(config) -> str:
  return config.data.dir or synthetic_text_dir(config)


def label_set(config) -> tuple:
  if config.finetune.labels:
    return tuple(config.finetune.labels)
  rows = read_tsv(os.path.join(data_dir(config), f"{config.data.train_split}.tsv"))
  return tuple(sorted({r[0] for r in rows}))


class TextBatches:
  """index -> host batch of a split's examples (training step or eval batch `index`)."""

  def __init__(self, config, kind: str, split: str, process_index: int, process_count: int):
    directory = data_dir(config)
    vocab = tokenizer_lib.load_vocab(config.finetune.vocab or
                                     os.path.join(directory, "vocab.txt"))
    tok = tokenizer_lib.Tokenizer(vocab, lower_case=True)
    labels = {name: i for i, name in enumerate(label_set(config))}
    path = os.path.join(directory, f"{split}.tsv")
    self.examples = []
    for label, a, b, line in read_tsv(path):
      if label not in labels:
        raise schema.DatasetError(f"{path}:line {line}: label {label!r} is not in the label "
                                  f"set {sorted(labels)} (config.finetune.labels)")
      self.examples.append((labels[label], tok.encode(a), tok.encode(b) if b else []))
    self.cls_id, self.sep_id = vocab["[CLS]"], vocab["[SEP]"]
    self.T = int(config.data.text_len)
    self.kind, self.seed = kind, int(config.data.seed)
    self.global_batch = config.batch_size
    self.host_batch = config.batch_size // process_count
    self.process_index = process_index

  def spec(self) -> dict:
    b, T = self.host_batch, self.T
    return dict(text_ids=((b, T), np.int32), text_mask=((b, T), np.int32),
                segment_ids=((b, T), np.int32), labels=((b,), np.int32))

  def fill(self, out, row, example):
    label, a, b = self.examples[example]
    budget = self.T - (3 if b else 2)
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
      (a if len(a) > len(b) else b).pop()
    ids = [self.cls_id, *a, self.sep_id] + ([*b, self.sep_id] if b else [])
    out["text_ids"][row, :len(ids)] = ids
    out["text_mask"][row, :len(ids)] = 1
    out["segment_ids"][row, len(a) + 2:len(ids)] = 1
    out["labels"][row] = label

  def __call__(self, index, out=None):
    if out is None:
      out = {k: np.zeros(shape, dtype) for k, (shape, dtype) in self.spec().items()}
    n = len(self.examples)
    first = index * self.global_batch + self.process_index * self.host_batch
    for row in range(self.host_batch):
      self.fill(out, row, pipeline.example_at(self.kind, self.seed, first + row, n))
    return out

  def num_eval_batches(self) -> int:
    """Default eval length: the max(1, n // batch_size) full batches."""
    return max(1, len(self.examples) // self.global_batch)


train_iterator = functools.partial(pipeline.maker_iterator, TextBatches, kind="train")
eval_iterator = functools.partial(pipeline.maker_iterator, TextBatches, kind="eval")


def steps_per_epoch(config) -> float:
  return len(TextBatches(config, "train", config.data.train_split, 0, 1).examples) \
      / config.batch_size
