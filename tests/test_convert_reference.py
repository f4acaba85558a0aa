"""Official InterBERT (PyTorch) <-> ours: output parity on the tiny reference fixture,
bitwise round trips (.bin and .safetensors, scanned and unscanned), clear errors.

The fixture (tests/fixtures/reference_tiny, see its README) was made by running the official
code; these tests never need it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from interbert_jax import build_model, load_checkpoint, save_checkpoint
from interbert_jax.convert import commands, model_configs, reference
from interbert_jax.model import param_shapes
from interbert_jax.convert.__main__ import main as cli_main
from interbert_jax.convert.tensor_io import ConversionError

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "fixtures" / "reference_tiny"
TOL = 1e-4
PAIRS = [("msm_logits", "prediction_scores_t"), ("mrm_logits", "prediction_scores_v"),
         ("itm_logits", "seq_relationship_score"), ("text_hidden", "sequence_output_t"),
         ("image_hidden", "sequence_output_v"), ("text_pooled", "pooled_output_t"),
         ("image_pooled", "pooled_output_v")]


def run_cli(*args):
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  proc = subprocess.run([sys.executable, "-m", "interbert_jax.convert", *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


@pytest.fixture(scope="module")
def ref_out():
  return dict(np.load(FIX / "outputs.npz"))


@pytest.fixture(scope="module")
def safetensors_sd():
  from safetensors.numpy import load_file
  return load_file(str(FIX / "model.safetensors"))


@pytest.fixture(scope="module")
def cli_checkpoint(tmp_path_factory):
  """The real entry point, reading the torch-free copy of the fixture weights."""
  out = tmp_path_factory.mktemp("ref") / "converted"
  run_cli("reference", f"--checkpoint={FIX / 'model.safetensors'}",
          f"--reference_config={FIX / 'config.json'}", f"--output={out}")
  return out


def apply(model, params, d):
  out = jax.jit(model.apply)({"params": params}, d["input_ids"].astype(np.int32),
                    d["attention_mask"].astype(np.int32), d["image_feat"], d["image_loc"],
                    d["image_attention_mask"].astype(np.int32),
                    segment_ids=d["token_type_ids"].astype(np.int32))
  return jax.tree.map(np.asarray, out)


@pytest.fixture(scope="module")
def ours(cli_checkpoint, ref_out):
  model, params, m = load_checkpoint(cli_checkpoint)
  return apply(model, params, ref_out), m


def test_outputs_match_reference(ours, ref_out):
  out, m = ours
  assert (m.single_stream.layers, m.text_stream.layers, m.image_stream.layers) == (2, 3, 2)
  assert (m.single_stream.heads, m.image_stream.heads, m.pooler_dim) == (2, 4, 24)
  for mine, theirs in PAIRS:
    assert out[mine].shape == ref_out[theirs].shape, mine
    np.testing.assert_allclose(out[mine], ref_out[theirs], atol=TOL, rtol=0, err_msg=mine)
  # The comparison is not vacuous: the three rows' ITM logits differ by far more than TOL.
  assert np.ptp(ref_out["seq_relationship_score"][:, 1]) > 100 * TOL
  # mrm_logits keeps the global token (index 0) like the reference's inference output.
  assert out["mrm_logits"].shape[1] == ref_out["image_feat"].shape[1]


def test_sum_fusion_matches_reference(cli_checkpoint, ref_out):
  _, params, m = load_checkpoint(cli_checkpoint)
  m = ml_collections.ConfigDict(m.to_dict())
  m.fusion = "sum"
  out = apply(build_model(m), params, ref_out)
  np.testing.assert_allclose(out["itm_logits"], ref_out["seq_relationship_score_sum"],
                             atol=TOL, rtol=0)


@pytest.fixture(scope="module")
def scanned(safetensors_sd):
  m = model_configs.from_reference(json.loads((FIX / "config.json").read_text()),
                                   model_configs.variant_model_config("base"))
  m.scan_layers = True
  params = commands.finalize(reference.reference_to_params(safetensors_sd, m), m, "fixture")
  return params, m


def test_scanned_layout_same_outputs(scanned, ours, ref_out):
  params, m = scanned
  assert set(params["text_stream"]) == {"layers"}
  assert params["text_stream"]["layers"]["attention"]["query"]["kernel"].shape == (3, 32, 2, 16)
  assert params["image_stream"]["layers"]["attention"]["query"]["kernel"].shape == (2, 32, 4, 8)
  out = apply(build_model(m), params, ref_out)
  for mine, theirs in PAIRS:
    np.testing.assert_allclose(out[mine], ref_out[theirs], atol=TOL, rtol=0, err_msg=mine)
    np.testing.assert_allclose(out[mine], ours[0][mine], atol=1e-5, rtol=0, err_msg=mine)


def test_padded_vocabulary_same_outputs_and_unpadded_round_trip(safetensors_sd, ours, ref_out):
  """model.vocab_pad_multiple: zero rows on import, masked logits, the real V on export."""
  m = model_configs.from_reference(json.loads((FIX / "config.json").read_text()),
                                   model_configs.variant_model_config("base"))
  m.vocab_pad_multiple = 64
  v, rows = m.vocab_size, -(-m.vocab_size // 64) * 64
  assert rows > v
  params = commands.finalize(reference.reference_to_params(safetensors_sd, m), m, "fixture")
  assert params["embeddings"]["word_embeddings"]["embedding"].shape[0] == rows
  assert params["msm_head"]["bias"].shape == (rows,)
  out = apply(build_model(m), params, ref_out)
  assert out["msm_logits"].shape[-1] == rows
  np.testing.assert_array_equal(out["msm_logits"][..., v:], np.finfo(np.float32).min)
  out["msm_logits"] = out["msm_logits"][..., :v]
  for mine, theirs in PAIRS:
    np.testing.assert_allclose(out[mine], ours[0][mine], atol=1e-5, rtol=0, err_msg=mine)
  back = reference.params_to_reference(params, m)
  for name, x in safetensors_sd.items():
    assert back[name].shape == x.shape and np.array_equal(back[name], x), name


def test_round_trip_bin_is_bitwise(cli_checkpoint, tmp_path):
  torch = pytest.importorskip("torch")
  out = tmp_path / "back.bin"
  run_cli("to_reference", f"--checkpoint={cli_checkpoint}", f"--output={out}",
          f"--reference_config_output={tmp_path / 'back.json'}")
  original = torch.load(FIX / "pytorch_model.bin", weights_only=True)
  back = torch.load(out, weights_only=True)
  assert list(back) == list(original)          # same names, same order
  for name, t in original.items():
    assert back[name].dtype == t.dtype and torch.equal(back[name], t), name
  # The tied MSM decoder is one tensor, as in the reference's own state dict.
  assert (back["cls.predictions.decoder.weight"].data_ptr()
          == back["bert.embeddings.word_embeddings.weight"].data_ptr())
  # The written reference config describes the same architecture.
  ref_cfg = json.loads((tmp_path / "back.json").read_text())
  fixture_cfg = json.loads((FIX / "config.json").read_text())
  for key, value in ref_cfg.items():
    if key in fixture_cfg and not key.endswith("initializer_range"):
      assert fixture_cfg[key] == value, key


def test_round_trip_safetensors_from_scanned_is_bitwise(scanned, safetensors_sd, tmp_path):
  params, m = scanned
  save_checkpoint(tmp_path / "scanned", params, m)
  out = str(tmp_path / "back.safetensors")
  commands.to_reference_checkpoint(str(tmp_path / "scanned"), out)
  from safetensors.numpy import load_file
  back = load_file(out)
  assert sorted(back) == sorted(safetensors_sd)
  for name, x in safetensors_sd.items():
    assert back[name].dtype == x.dtype and np.array_equal(back[name], x), name


def _convert(sd):
  m = model_configs.from_reference(json.loads((FIX / "config.json").read_text()),
                                   model_configs.variant_model_config("base"))
  return reference.reference_to_params(sd, m, origin="test.bin")


def test_bad_tensors_are_listed_by_name(safetensors_sd):
  sd = dict(safetensors_sd)
  del sd["bert.encoder.layer.4.output.dense.bias"]          # text stream's last layer
  sd["bert.encoder.v_layer.2.output.dense.bias"] = np.zeros(32, np.float32)  # K_v is 2
  sd["cls.bi_seq_relationship.weight"] = np.zeros((2, 32), np.float32)        # D is 24
  with pytest.raises(ConversionError) as e:
    _convert(sd)
  msg = str(e.value)
  assert "test.bin" in msg
  assert "missing (1):\n  bert.encoder.layer.4.output.dense.bias (32,)" in msg
  assert "mis-shaped (1):\n  cls.bi_seq_relationship.weight: has (2, 32), expected (2, 24)" in msg
  assert "unknown (1):\n  bert.encoder.v_layer.2.output.dense.bias" in msg


def test_untied_decoder_is_refused(safetensors_sd):
  sd = dict(safetensors_sd)
  sd["cls.predictions.decoder.weight"] = sd["cls.predictions.decoder.weight"] + 1.0
  with pytest.raises(ConversionError, match="differs from bert.embeddings.word_embeddings"):
    _convert(sd)


def test_released_config_maps_to_157m_parameters():
  """bert_base_6layer_interbert.json (values copied from the reference) -> our base model
  with exactly the reference's parameter count (docs/reference_notes.md: 157,021,565)."""
  released = dict(
      attention_probs_dropout_prob=0.1, hidden_act="gelu", hidden_dropout_prob=0.1,
      hidden_size=768, initializer_range=0.02, intermediate_size=3072,
      max_position_embeddings=512, num_attention_heads=12, num_hidden_layers=6,
      type_vocab_size=2, vocab_size=30522, t_num_hidden_layers=6, v_feature_size=2048,
      v_target_size=1601, v_hidden_size=768, v_num_hidden_layers=6, v_num_attention_heads=8,
      v_intermediate_size=3072, v_attention_probs_dropout_prob=0.1, v_hidden_act="gelu",
      v_hidden_dropout_prob=0.2, v_initializer_range=0.02, pooling_method="mul",
      conv_layer="normal_conv", max_region_length=36, max_seq_length=36)
  m = model_configs.from_reference(released, model_configs.variant_model_config("base"))
  assert (m.pooler_dim, m.fusion, m.image_stream.heads, m.image_stream.hidden_dropout) == (
      1024, "mul", 8, 0.2)
  shapes = param_shapes(m)
  assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes)) == 157_021_565


def test_cli_reports_user_errors(tmp_path, capsys):
  rc = cli_main(["reference", f"--checkpoint={tmp_path / 'nope.bin'}",
                 f"--reference_config={FIX / 'config.json'}", f"--output={tmp_path / 'o'}"])
  assert rc == 2
  assert "nope.bin: no such file" in capsys.readouterr().err
  bad_cfg = tmp_path / "cfg.json"
  bad_cfg.write_text(json.dumps({**json.loads((FIX / "config.json").read_text()),
                                 "v_hidden_size": 48}))
  rc = cli_main(["reference", f"--checkpoint={FIX / 'model.safetensors'}",
                 f"--reference_config={bad_cfg}", f"--output={tmp_path / 'o'}"])
  assert rc == 2
  assert "v_hidden_size=48 != hidden_size=32" in capsys.readouterr().err


def test_bin_without_torch_is_a_clear_error(monkeypatch, tmp_path):
  from interbert_jax.convert import tensor_io
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
  with pytest.raises(ConversionError, match=r"needs PyTorch.*use a \.safetensors file"):
    tensor_io.read_state_dict(str(FIX / "pytorch_model.bin"))
  with pytest.raises(ConversionError, match="needs PyTorch"):
    tensor_io.write_state_dict(str(tmp_path / "x.bin"), {"a": np.zeros(2, np.float32)})
