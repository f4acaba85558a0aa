"""Multiple-choice questions (VCR-style) beside a prepared dataset: `<split>_choices.jsonl`.

One question per line, token ids already (the dataset's vocab.txt):
  {"image_index": i, "question": [ids], "answers": [[ids] x C], "answer_label": a,
   "rationales": [[ids] x C], "rationale_label": r}
`image_index` points into the split's images (data/schema.py); rationales may be absent
(then only Q->A is asked). Written by the VCR importer (data/vcr.py) and the synthetic
generator (data/synthetic_choices.py); read by data/choice_batches.py.
"""
import json
import os
from typing import NamedTuple

from interbert_jax.data import schema


class Question(NamedTuple):
  image_index: int
  question: list
  answers: list
  answer_label: int
  rationales: list          # [] when the set has no rationales
  rationale_label: int      # -1 when the set has no rationales


def choices_path(data_dir: str, split: str) -> str:
  return os.path.join(data_dir, f"{split}_choices.jsonl")


def write_choices(path: str, questions) -> int:
  """Writes Questions as JSON lines atomically (tmp file, rename); returns the count."""
  tmp, n = f"{path}.tmp{os.getpid()}", 0
  with open(tmp, "w", encoding="utf-8") as f:
    for q in questions:
      f.write(json.dumps(q._asdict()) + "\n")
      n += 1
  os.replace(tmp, path)
  return n


def load_choices(path: str, *, num_images: int, num_choices: int, vocab_size: int) -> list:
  """Reads and checks a choices file; errors name the file and line."""
  if not os.path.exists(path):
    raise schema.DatasetError(f"{path}: missing (multiple-choice questions of the split)")
  out = []
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path}:line {line_no}"
      try:
        q = Question(**{k: v for k, v in json.loads(line).items()})
      except (json.JSONDecodeError, TypeError) as e:
        raise schema.DatasetError(f"{where}: not a question object ({e})") from None
      if not 0 <= q.image_index < num_images:
        raise schema.DatasetError(f"{where}: image_index {q.image_index} outside the "
                                  f"split's {num_images} images")
      for key, options, label in (("answer", q.answers, q.answer_label),
                                  ("rationale", q.rationales, q.rationale_label)):
        if key == "rationale" and not options:
          continue
        if len(options) != num_choices:
          raise schema.DatasetError(f"{where}: {len(options)} {key}s, expected {num_choices}")
        if not 0 <= label < num_choices:
          raise schema.DatasetError(f"{where}: {key}_label {label} not in [0, {num_choices})")
      for ids in [q.question, *q.answers, *q.rationales]:
        if not ids or min(ids) < 0 or max(ids) >= vocab_size:
          raise schema.DatasetError(f"{where}: empty text or token id outside the "
                                    f"vocabulary of {vocab_size}")
      out.append(q)
  if not out:
    raise schema.DatasetError(f"{path}: no questions")
  return out
