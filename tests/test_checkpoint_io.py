"""Model checkpoints: save -> load round trip, training step directories, clear errors."""
import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
from flax import linen as nn

from configs import pretrain

import interbert_jax
from interbert_jax.model import dummy_inputs, scan_params


@pytest.fixture(scope="module")
def tiny_params():
  cfg = pretrain.model_config("tiny")
  cfg.text_stream.layers = cfg.image_stream.layers = 1
  model = interbert_jax.build_model(cfg)
  params = nn.unbox(jax.jit(lambda: model.init(jax.random.key(0), **dummy_inputs(cfg)))())
  return cfg, params["params"]



def test_save_load_roundtrip(tmp_path, tiny_params):
  cfg, params = tiny_params
  interbert_jax.save_checkpoint(tmp_path / "ckpt", params, cfg)
  assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["hidden_size"] == cfg.hidden_size
  model, loaded, loaded_cfg = interbert_jax.load_checkpoint(str(tmp_path / "ckpt"))
  assert loaded_cfg.to_dict() == cfg.to_dict()
  chex.assert_trees_all_equal(loaded, params, strict=True)
  inputs = dummy_inputs(cfg, 2, 4, 3)
  run = jax.jit(lambda p: model.apply({"params": p}, **inputs)["itm_logits"])
  np.testing.assert_array_equal(run(loaded), run(params))
  with pytest.raises(FileExistsError):
    interbert_jax.save_checkpoint(tmp_path / "ckpt", params, cfg)


def test_load_training_step_dir_with_scanned_params(tmp_path, tiny_params):
  """The trainer's layout: <workdir>/config.json (full config), checkpoints/<step>/params."""
  import orbax.checkpoint as ocp
  cfg, params = tiny_params
  full = pretrain.get_config("tiny")
  full.model = cfg
  full.model.scan_layers = True
  workdir = tmp_path / "work"
  (workdir / "checkpoints" / "200").mkdir(parents=True)
  (workdir / "config.json").write_text(full.to_json())
  stacked = scan_params(params)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(workdir / "checkpoints" / "200" / "params", stacked)
  ckptr.wait_until_finished()
  for path in (workdir / "checkpoints" / "200", workdir / "checkpoints" / "200" / "params"):
    _, loaded, loaded_cfg = interbert_jax.load_checkpoint(path)
    assert loaded_cfg.scan_layers is True
    chex.assert_trees_all_equal(loaded, stacked, strict=True)


def test_missing_config_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    interbert_jax.load_checkpoint(tmp_path / "nope")
  (tmp_path / "a" / "b" / "c" / "d").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match="config.json"):
    interbert_jax.load_checkpoint(tmp_path / "a" / "b" / "c" / "d")


def test_import_is_light():
  code = ("import sys, interbert_jax; "
          "print(any(m in sys.modules for m in ('tensorflow', 'orbax.checkpoint')))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=os.path.join(os.path.dirname(__file__), ".."), check=True)
  assert out.stdout.strip() == "False"
