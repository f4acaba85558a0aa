"""Start-up config validation: every bad value is reported with its key, all at once."""
import pytest

from configs.pretrain import get_config
from interbert_jax.training import config_validation


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
