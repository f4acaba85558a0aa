"""Start-up config validation: every bad value is reported with its key, all at once."""
import json
import os
import re
import subprocess
import sys

import pytest

import interbert_jax
from configs.pretrain import get_config
from interbert_jax.training import config_validation

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


@pytest.mark.parametrize("variant", ["tiny", "base", "large"])
def test_shipped_configs_are_valid(variant):
  config = get_config(variant)
  config.batch_size = 512
  config_validation.validate_config(config, num_devices=8, process_count=2)


@pytest.mark.parametrize("key,value,message", [
    ("total_steps", 0, r"config\.total_steps=0: must be an integer > 0"),
    ("microbatches", 3, r"config\.microbatches=3: must divide batch_size=32"),
    ("batch_size", 36, r"config\.batch_size=36: each microbatch .* mesh\.data\*mesh\.fsdp=8"),
    ("model.fusion", "max", r"config\.model\.fusion='max'"),
    ("model.dtype", "float64", r"config\.model\.dtype='float64'"),
    ("model.mrm_target", "mse", r"config\.model\.mrm_target='mse'"),
    ("model.image_stream.heads", 3, r"config\.model\.image_stream\.heads=3: must divide"),
    ("optimizer.warmup_fraction", 1.5, r"config\.optimizer\.warmup_fraction=1\.5"),
    ("data.msm.strategy", "word", r"config\.data\.msm\.strategy='word'"),
    ("data.text_len", 80, r"config\.data\.text_len=80: exceeds model\.max_position_embeddings=64"),
    ("data.dir", "/nonexistent/data", r"config\.data\.dir='/nonexistent/data': directory"),
    ("init_from", "/nonexistent/ckpt", r"config\.init_from='/nonexistent/ckpt'"),
    ("mesh.data", 3, r"config\.mesh: data\*fsdp\*tensor = 3"),
    ("eval_retrieval_every_steps", -1, r"config\.eval_retrieval_every_steps=-1: must be"),
    ("eval_retrieval_images", -5, r"config\.eval_retrieval_images=-5: must be an integer >= 0"),
    ("plateau.window_steps", -1, r"config\.plateau\.window_steps=-1: must be an integer >= 0"),
    ("plateau.tolerance", 1.5, r"config\.plateau\.tolerance=1\.5: must be in \(0, 1\)"),
    ("plateau.dead_image_floor", 1.5, r"config\.plateau\.dead_image_floor=1\.5: must be in"),
    ("loss.msm_packing", 1.5, r"config\.loss\.msm_packing=1\.5: must be in \[0, 1\]"),
])
def test_bad_values_name_their_key(key, value, message):
  config = get_config("tiny")
  node = config
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(config_validation.ConfigError, match=message):
    config_validation.validate_config(config, num_devices=8)


def test_msm_packing_is_for_pretraining_only():
  config = get_config("tiny")
  config.task = "retrieval"
  config.loss.msm_packing = 0.5
  with pytest.raises(config_validation.ConfigError,
                     match=r"config\.loss\.msm_packing=0\.5: packs the pretraining MSM head"):
    config_validation.validate_config(config, num_devices=8)


def test_all_problems_reported_together():
  config = get_config("tiny")
  config.model.fusion = "max"
  config.batch_size = 30
  with pytest.raises(config_validation.ConfigError) as e:
    config_validation.validate_config(config, num_devices=8, process_count=4)
  text = str(e.value)
  assert "config.model.fusion" in text
  assert "process count 4" in text
  assert text.count("; config.") >= 2 and "\n" not in text   # one line, every problem


@pytest.mark.parametrize("key", sorted(config_validation.ENUMERATED))
def test_every_enumerated_key_rejects_a_bad_value(key):
  """Each key with a fixed set of values, set to one outside it, is named in the error."""
  config = get_config("tiny")
  *parents, leaf = key.split(".")
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = "bogus"
  with pytest.raises(config_validation.ConfigError, match=rf"config\.{re.escape(key)}='bogus'"):
    config_validation.validate_config(config, num_devices=8)


def test_enumerated_values_are_the_implemented_ones():
  """The shipped defaults are allowed, and every allowed model value builds a model."""
  config = get_config("tiny")
  for key, allowed in config_validation.ENUMERATED.items():
    node = config
    for p in key.split("."):
      node = node[p]
    assert node in allowed, key
  for key in ("model.fusion", "model.mrm_target", "model.dtype", "model.remat_policy"):
    for value in config_validation.ENUMERATED[key]:
      m = get_config("tiny").model
      m[key.split(".")[1]] = value
      interbert_jax.build_model(m)


def test_trainer_exits_2_naming_every_bad_key_before_building_anything(tmp_path):
  """float16 used to pass start-up and fail in build_model with a traceback."""
  env = {**os.environ, "PYTHONPATH": REPO}
  proc = subprocess.run(
      [sys.executable, "-m", "interbert_jax.main", "--config=configs/pretrain.py:tiny",
       f"--workdir={tmp_path / 'w'}", "--config.model.dtype=float16",
       "--config.data.msm.strategy=word", "--config.data.synthetic.dir=" + str(tmp_path / "d")],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "config.model.dtype='float16'" in proc.stderr
  assert "config.data.msm.strategy='word'" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "d").exists()            # no synthetic data was generated


def test_workdir_check_names_the_keys_that_must_match(tmp_path):
  """Another run's config.json: shape/vocab keys refused, schedule/frequency keys allowed."""
  from interbert_jax.checkpoints import workdir_check
  config = get_config("tiny")
  workdir_check.check_workdir(str(tmp_path), config)           # no config.json: a new run
  (tmp_path / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))
  resumed = get_config("tiny")
  resumed.total_steps, resumed.log_every_steps, resumed.checkpoint_every_steps = 9, 1, 3
  resumed.eval_every_steps, resumed.keep_checkpoints, resumed.batch_size = 2, 1, 64
  resumed.model.dtype, resumed.model.remat_policy = "bfloat16", "full"
  resumed.model.text_stream.hidden_dropout = 0.3
  resumed.data.dir, resumed.data.num_workers = "/elsewhere", 4
  workdir_check.check_workdir(str(tmp_path), resumed)          # allowed on resume
  # A run made before a key existed resumes when the key has the value it was made with.
  older = json.loads(config.to_json_best_effort())
  del older["model"]["vocab_pad_multiple"], older["model"]["pooler_bias_init"]
  assert workdir_check.differences(older, json.loads(config.to_json_best_effort())) == []
  padded = json.loads(config.to_json_best_effort())
  padded["model"]["vocab_pad_multiple"] = 128
  assert workdir_check.differences(older, padded) == [
      "model.vocab_pad_multiple: 1 in the workdir, 128 now"]
  other = get_config("tiny")
  other.model.vocab_size, other.model.image_stream.layers = 2048, 3
  other.data.text_len, other.model.scan_layers = 20, True
  with pytest.raises(workdir_check.WorkdirMismatchError) as e:
    workdir_check.check_workdir(str(tmp_path), other)
  assert isinstance(e.value, config_validation.ConfigError)    # exit 2 in the trainer
  lines = str(e.value).splitlines()
  assert lines[1:5] == ["  data.text_len: 16 in the workdir, 20 now",
                        "  model.image_stream.layers: 2 in the workdir, 3 now",
                        "  model.scan_layers: false in the workdir, true now",
                        "  model.vocab_size: 1024 in the workdir, 2048 now"]
  assert "4 key(s)" in lines[0] and "another --workdir" in lines[-1]
