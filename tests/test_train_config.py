"""Start-up config validation: every bad value is reported with its key, all at once."""
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
    ("data.dir", "/nonexistent/data", r"config\.data\.dir='/nonexistent/data': directory"),
    ("init_from", "/nonexistent/ckpt", r"config\.init_from='/nonexistent/ckpt'"),
    ("mesh.data", 3, r"config\.mesh: data\*fsdp\*tensor = 3"),
    ("eval_retrieval_every_steps", -1, r"config\.eval_retrieval_every_steps=-1: must be"),
    ("eval_retrieval_images", -5, r"config\.eval_retrieval_images=-5: must be an integer >= 0"),
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


def test_all_problems_reported_together():
  config = get_config("tiny")
  config.model.fusion = "max"
  config.batch_size = 30
  with pytest.raises(config_validation.ConfigError) as e:
    config_validation.validate_config(config, num_devices=8, process_count=4)
  text = str(e.value)
  assert "config.model.fusion" in text
  assert "process count 4" in text
  assert text.count("\n  config.") >= 2


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
