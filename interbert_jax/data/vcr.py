r"""VCR importer: VCR's JSON lines + the images' region features -> a prepared multiple-choice
dataset (images via data/prepare.py, questions in `<split>_choices.jsonl`, data/choices.py).

  python -m interbert_jax.data.vcr --annotations=vcr1annots/val.jsonl \
      --format=butd_tsv --features=/data/vcr/val_*.tsv --vocab=$BERT/vocab.txt \
      --output_dir=/data/vcr_prepared --split=validation

Each line has `question`, `answer_choices`, `rationale_choices` (token lists in which a
detection tag is a list of object indices), `answer_label`, `rationale_label`, `objects`
(class names) and `img_id` (the features' image_id; `--image_key=img_fn` uses the image
file's name without extension). A tag becomes its objects' class names joined by "and", a
`person` the gender-neutral name of its index (as R2C does). Bad input (a tag past the
object list, a label out of range, an image missing from the features) stops with the
file and line; nothing is half-written.
"""
import json
import os
import tempfile

from absl import app
from absl import flags

from interbert_jax import cli
from interbert_jax import errors
from interbert_jax.errors import MissingFileError
from interbert_jax.data import choices as choices_lib
from interbert_jax.data import prepare
from interbert_jax.data import schema
from interbert_jax.data import tokenizer as tokenizer_lib
from interbert_jax.data.importers import RecordError
from interbert_jax.data.importers.common import text_lines

# R2C's list (VCR's reference code, dataloaders/vcr.py).
GENDER_NEUTRAL_NAMES = ("Casey", "Riley", "Jessie", "Jackie", "Avery", "Jaime", "Peyton",
                        "Kerry", "Jody", "Kendall", "Peyton", "Skyler", "Frankie", "Pat",
                        "Quinn")
NUM_CHOICES = 4
_REQUIRED = ("question", "answer_choices", "rationale_choices", "answer_label",
             "rationale_label", "objects")


def detag(tokens, objects, source: str) -> str:
  """VCR tokens (words and lists of object indices) -> plain text."""
  words = []
  for token in tokens:
    if isinstance(token, list):
      names = []
      for i in token:
        if not isinstance(i, int) or not 0 <= i < len(objects):
          raise RecordError(source, "vcr_bad_tag", f"tag {token} points past the "
                            f"{len(objects)} objects {objects}")
        names.append(GENDER_NEUTRAL_NAMES[i % len(GENDER_NEUTRAL_NAMES)]
                     if objects[i] == "person" else objects[i])
      words.append(" and ".join(names))
    else:
      words.append(str(token))
  return " ".join(words)


def parse_item(item: dict, source: str) -> dict:
  """One VCR line -> {"question", "answers" [4], "rationales" [4], labels} as text."""
  missing = [k for k in _REQUIRED if k not in item]
  if missing:
    raise RecordError(source, "vcr_bad_line", f"missing keys {missing}")
  objects = item["objects"]
  out = {"question": detag(item["question"], objects, source)}
  for key, label_key in (("answer_choices", "answer_label"),
                         ("rationale_choices", "rationale_label")):
    options, label = item[key], item[label_key]
    if len(options) != NUM_CHOICES:
      raise RecordError(source, "vcr_bad_line", f"{key} has {len(options)} options, "
                        f"expected {NUM_CHOICES}")
    if not isinstance(label, int) or not 0 <= label < NUM_CHOICES:
      raise RecordError(source, "vcr_bad_label", f"{label_key}={label!r} not in "
                        f"[0, {NUM_CHOICES})")
    out[key] = [detag(o, objects, source) for o in options]
    out[label_key] = label
  return out


def image_id(item: dict, image_key: str, source: str) -> str:
  if image_key not in item:
    raise RecordError(source, "vcr_bad_line", f"no {image_key!r} (--image_key)")
  value = str(item[image_key])
  return os.path.splitext(os.path.basename(value))[0] if image_key == "img_fn" else value


def read_annotations(path: str, image_key: str = "img_id"):
  """-> [(image_id, parsed item, source)]; errors name the file and line."""
  if not os.path.exists(path):
    raise MissingFileError(f"{path}: annotations file not found")
  items = []
  for line_no, line in text_lines(path):   # UTF-8; a leading BOM is dropped
    if not line.strip():
      continue
    source = f"{path}:line {line_no}"
    try:
      item = json.loads(line)
    except json.JSONDecodeError as e:
      raise RecordError(source, "vcr_bad_line", f"not valid JSON ({e})") from None
    items.append((image_id(item, image_key, source), parse_item(item, source), source))
  if not items:
    raise schema.DatasetError(f"{path}: no questions")
  return items


def run(*, annotations, format, features, vocab, output_dir, split="validation",
        image_key="img_id", lower_case=True, print_fn=print, **prepare_options) -> dict:
  """Imports one split; returns prepare's report plus the number of questions."""
  errors.check_name(split, "--split")
  schema.check_new_split(output_dir, split, prepare_options.get("overwrite", False))
  items = read_annotations(annotations, image_key)
  tok = tokenizer_lib.Tokenizer(tokenizer_lib.load_vocab(vocab), lower_case=lower_case)
  # The images go through prepare (all its checks); each question is its image's caption,
  # so a question whose image is not in the features fails there, naming its line.
  with tempfile.TemporaryDirectory() as tmp:
    captions = os.path.join(tmp, "questions.jsonl")
    with open(captions, "w", encoding="utf-8") as f:
      for img, item, _ in items:
        f.write(json.dumps({"image_id": img, "caption": item["question"]}) + "\n")
    try:
      report = prepare.run(format=format, features=features, captions=captions,
                           output_dir=output_dir, split=split, vocab=vocab,
                           lower_case=lower_case, print_fn=print_fn, **prepare_options)
    except RecordError as e:
      line = int(e.source.rsplit("line ", 1)[-1]) if "line " in e.source else 0
      where = items[line - 1][2] if e.source.startswith(captions) and line else e.source
      raise RecordError(where, e.reason, str(e).split(": ", 1)[-1]) from None
  images = schema.open_images(output_dir, split)
  index = {str(images[i]["image_id"]): i for i in range(len(images))}
  encode = tok.encode
  questions = [choices_lib.Question(
      index[img], encode(item["question"]), [encode(a) for a in item["answer_choices"]],
      item["answer_label"], [encode(r) for r in item["rationale_choices"]],
      item["rationale_label"]) for img, item, _ in items]
  report["questions"] = choices_lib.write_choices(
      choices_lib.choices_path(output_dir, split), questions)
  print_fn("vcr: " + json.dumps({"split": split, "questions": report["questions"]}))
  return report


_ANNOTATIONS = flags.DEFINE_string("annotations", None, "VCR JSON lines (train/val.jsonl).")
_IMAGE_KEY = flags.DEFINE_enum("image_key", "img_id", ["img_id", "img_fn"],
                               "Which field names the image in the features.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  F = flags.FLAGS
  for name in ("annotations", "format", "features", "output_dir", "vocab"):
    if not getattr(F, name):
      raise app.UsageError(f"--{name} is required")
  # Bad input (errors.UserError) is one line and exit 2 (cli.run).
  run(annotations=F.annotations, format=F.format, features=F.features, vocab=F.vocab,
      output_dir=F.output_dir, split=F.split, image_key=F.image_key,
      lower_case=F.lower_case, num_classes=F.num_classes, box_tolerance=F.box_tolerance,
      text_len=F.text_len, overwrite=F.overwrite, print_fn=lambda s: print(s, flush=True))


if __name__ == "__main__":
  prepare.define_flags()
  os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
  cli.run(main)
