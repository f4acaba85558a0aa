"""BERT WordPiece tokenizer (BasicTokenizer + WordPiece), dependency-free.

Behaves like Google BERT's `tokenization.py` / Hugging Face `BertTokenizer`:
control characters dropped, whitespace normalised, CJK ideographs split one per token
(so a Chinese character vocabulary works), optional lower-casing with accent stripping,
punctuation split, then greedy longest-match-first WordPiece with `##` continuations;
a word with no segmentation, or longer than `max_chars_per_word`, becomes `[UNK]`.

Hand-written because no tokenizer library is a runtime dependency; parity with
`transformers.BertTokenizer` is asserted in tests/test_tokenizer.py.
"""
import unicodedata
from typing import Dict, List, Optional, Sequence

from interbert_jax.data.importers.common import text_lines
from interbert_jax.errors import BadValueError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def load_vocab(path) -> Dict[str, int]:
  """Reads a vocab.txt (one token per line, id = line number) into {token: id}."""
  vocab = {}
  for line_no, line in text_lines(path):   # UTF-8; a leading BOM is dropped
    token = line.rstrip("\n").rstrip("\r")
    if token and token not in vocab:  # A duplicate keeps its first id, as BERT does.
      vocab[token] = line_no - 1
  if not vocab:
    raise BadValueError(f"{path}: the vocabulary file is empty")
  missing = [t for t in SPECIAL_TOKENS if t not in vocab]
  if missing:
    raise BadValueError(f"{path}: the vocabulary lacks the special tokens {missing} "
                        "(a BERT WordPiece vocab.txt is expected)")
  return vocab


def _is_whitespace(ch):
  if ch in (" ", "\t", "\n", "\r"):
    return True
  return unicodedata.category(ch) == "Zs"


def _is_control(ch):
  if ch in ("\t", "\n", "\r"):
    return False
  return unicodedata.category(ch) in ("Cc", "Cf")


def _is_punctuation(ch):
  cp = ord(ch)
  # ASCII non-letters/digits count as punctuation ("$", "^", "`"), as in BERT.
  if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
    return True
  return unicodedata.category(ch).startswith("P")


def _is_cjk(cp):
  return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
          or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F
          or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF
          or 0x2F800 <= cp <= 0x2FA1F)


class Tokenizer:
  """WordPiece tokenizer over a `load_vocab` vocabulary.

  Args:
    vocab: {token: id}.
    lower_case: lower-case the text before splitting.
    strip_accents: remove combining marks after NFD; None = follow `lower_case` (BERT).
    max_chars_per_word: longer whitespace/punctuation-separated words become `[UNK]`.
  """

  def __init__(self, vocab: Dict[str, int], lower_case: bool = True,
               strip_accents: Optional[bool] = None, max_chars_per_word: int = 100):
    self.vocab = vocab
    self.inv_vocab = {i: t for t, i in vocab.items()}
    self.lower_case = lower_case
    self.strip_accents = lower_case if strip_accents is None else strip_accents
    self.max_chars_per_word = max_chars_per_word
    self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
        vocab[t] for t in SPECIAL_TOKENS)

  @property
  def vocab_size(self) -> int:
    return max(self.vocab.values()) + 1

  def basic_tokenize(self, text: str) -> List[str]:
    """Whitespace/punctuation/CJK split (BERT's BasicTokenizer)."""
    chars = []
    for ch in text:
      cp = ord(ch)
      if cp == 0 or cp == 0xFFFD or _is_control(ch):
        continue
      if _is_whitespace(ch):
        chars.append(" ")
      elif _is_cjk(cp):
        chars.extend((" ", ch, " "))
      else:
        chars.append(ch)
    words = []
    for word in "".join(chars).split():
      if self.lower_case:
        word = word.lower()
      if self.strip_accents:
        word = "".join(c for c in unicodedata.normalize("NFD", word)
                       if unicodedata.category(c) != "Mn")
      current = []
      for ch in word:
        if _is_punctuation(ch):
          if current:
            words.append("".join(current))
            current = []
          words.append(ch)
        else:
          current.append(ch)
      if current:
        words.append("".join(current))
    return words

  def wordpiece(self, word: str) -> List[str]:
    """Greedy longest-match-first split of one word into vocabulary pieces."""
    if len(word) > self.max_chars_per_word:
      return ["[UNK]"]
    pieces, start = [], 0
    while start < len(word):
      end = len(word)
      while end > start:
        piece = word[start:end] if start == 0 else "##" + word[start:end]
        if piece in self.vocab:
          break
        end -= 1
      if end == start:  # No prefix matches: the whole word is unknown.
        return ["[UNK]"]
      pieces.append(piece)
      start = end
    return pieces

  def tokenize(self, text: str) -> List[str]:
    return [p for w in self.basic_tokenize(text) for p in self.wordpiece(w)]

  def encode(self, text: str) -> List[int]:
    """Token ids of `text`, WITHOUT [CLS]/[SEP] (the pipeline adds them)."""
    return [self.vocab[p] for p in self.tokenize(text)]

  def decode(self, ids: Sequence[int]) -> str:
    """Joins pieces back into text (`##` continuations glued); for inspection only."""
    text = " ".join(self.inv_vocab.get(int(i), "[UNK]") for i in ids)
    return text.replace(" ##", "")


def from_vocab_file(path, lower_case: bool = True) -> Tokenizer:
  return Tokenizer(load_vocab(path), lower_case=lower_case)
