"""The Chinese synthetic world (config.data.synthetic.language=zh) and its retrieval test.

- captions are Chinese text naming the image's objects, split one token per character by
  the BERT tokenizer (tokenizer.py) against the character vocabulary the world writes;
- English stays the default, with the same generating parameters (and so cache hash);
- an unknown language is a config error;
- a short tiny pretraining run in Chinese, then `evaluate retrieval` on the Chinese
  retrieval split: zero-shot image retrieval R@1 above chance.
"""
import json
import os

import pytest

from configs import pretrain
from interbert_jax import evaluate
from interbert_jax.data import schema
from interbert_jax.data import synthetic
from interbert_jax.data import synthetic_world as world
from interbert_jax.data import tokenizer as tokenizer_lib
from interbert_jax.training import config_validation
from tests.conftest import pretrain_tiny

ZH_TEXT_LEN = 26              # configs/pretrain.py: 3 objects in the short form fit in 26.
ZH_STEPS = 600
EVAL_IMAGES = 24


def zh_config(**synthetic_over):
  config = pretrain.get_config("tiny")
  config.data.synthetic.language = "zh"
  config.data.text_len = ZH_TEXT_LEN
  config.data.synthetic.update(synthetic_over)
  return config


def test_zh_captions_are_chinese_text_tokenised_by_the_bert_tokenizer(tmp_path):
  config = zh_config(num_train_images=2, num_validation_images=2, num_test_images=6,
                     dir=str(tmp_path / "zh"))
  data = synthetic.ensure_synthetic(config)
  vocab = tokenizer_lib.load_vocab(os.path.join(data, "vocab.txt"))
  assert list(vocab) == world.vocab_tokens("zh")
  assert all(len(t) == 1 for t in list(vocab)[len(tokenizer_lib.SPECIAL_TOKENS):])
  tok = tokenizer_lib.Tokenizer(vocab)
  caps = schema.load_captions(data, "test")
  params = synthetic.synthetic_params(config)
  truths = [truth for _, _, truth in synthetic.split_images(params, "test")]
  for c, image in enumerate(caps.image_index):
    ids = [int(i) for i in caps.token_ids[caps.offsets[c]:caps.offsets[c + 1]]]
    text = tok.decode(ids).replace(" ", "")
    assert text.endswith("。") and tokenizer_lib.SPECIAL_TOKENS[1] not in text, text
    assert all(tokenizer_lib._is_cjk(ord(ch)) or ch in world.ZH_PUNCT for ch in text), text
    assert tok.encode(text) == ids                  # the tokenizer made these ids.
    assert len(ids) == len(text)                    # one token per character.
    for attr, cls in truths[image]["objects"]:      # every object, named in Chinese.
      assert world.ZH_ATTRIBUTES[attr] + world.ZH_CLASSES[cls] in text, text


def test_english_is_the_default_and_its_parameters_are_unchanged():
  en = synthetic.synthetic_params(pretrain.get_config("tiny"))
  assert "language" not in en                       # the English cache hash is as before.
  zh = synthetic.synthetic_params(zh_config())
  assert zh["language"] == "zh" and synthetic.params_hash(zh) != synthetic.params_hash(en)
  bad = pretrain.get_config("tiny")
  bad.data.synthetic.language = "fr"
  with pytest.raises(config_validation.ConfigError, match="data.synthetic.language"):
    config_validation.validate_config(bad, num_devices=1)


def test_short_chinese_pretraining_retrieves_images_above_chance(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("zh_pretrain") / "run"
  step_dir = pretrain_tiny(workdir, ZH_STEPS, "--config.data.synthetic.language=zh",
                           f"--config.data.text_len={ZH_TEXT_LEN}")
  data = synthetic.ensure_retrieval(zh_config())
  output = workdir / "retrieval.json"
  assert evaluate.main(["retrieval", f"--checkpoint={step_dir}", f"--data={data}",
                        f"--output={output}", f"--max_images={EVAL_IMAGES}",
                        "--block_images=8", "--block_captions=40"]) == 0
  got = json.loads(output.read_text())
  assert got["images"] == EVAL_IMAGES and got["captions"] == 5 * EVAL_IMAGES
  assert got["chance_ir_r1"] == pytest.approx(100 / EVAL_IMAGES)
  # Chance is 1/24 = 4.2%. Measured: 16.7% after 600 steps (4x chance; ITM acc 0.70),
  # 5.8% after 300 (1.4x, too close to chance to test). The bound is 2x chance.
  assert got["ir_r1"] > 2 * got["chance_ir_r1"], got
  assert got["ir_r10"] > got["ir_r1"]
