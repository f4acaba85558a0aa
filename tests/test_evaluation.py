"""Export and zero-shot retrieval evaluation (interbert_jax.export, interbert_jax.evaluate).

The README's quick-start run (the `tiny_pretrain_run` session fixture, conftest.py) is
shared by every test here:
- the synthetic retrieval split is the pretraining world's test images, 5 captions each;
- R@K on a hand-made score matrix (ties broken by index), and chance;
- the trainer logged eval_ir_r1..eval_tr_r10 at its last step (config.eval_retrieval_*);
- zero-shot image retrieval of the quick start is >= 5x chance;
- scores on 8 devices equal those on 1 device;
- kill -9 mid-evaluation, then the same command: the same JSON, bit for bit;
- export (native, safetensors) -> load -> evaluate gives exactly the numbers of evaluating
  the training checkpoint; bfloat16 within the stated tolerance; reference format
  round-trips through the converter bitwise; EMA weights are picked when present;
- bad input: a split with no captions, a missing step, no checkpoint, a format that cannot
  hold the params (exit 2, one line).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import pretrain
from interbert_jax import evaluate
from interbert_jax import export
from interbert_jax.checkpoints import model_files
from interbert_jax.convert import commands
from interbert_jax.data import schema
from interbert_jax.data import synthetic
from interbert_jax.evaluation import common
from interbert_jax.evaluation import retrieval
from interbert_jax.evaluation import retrieval_cli
from interbert_jax.evaluation import retrieval_data
from interbert_jax.parallel import mesh as mesh_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The subset every evaluation here ranks: 24 images x their 120 captions (2,880 pairs).
QUICK = dict(max_images=24, max_captions=0, max_regions=0, block_images=8,
             block_captions=40)
BF16_TOLERANCE = 0.02     # max |P(match) bf16 export - P(match) float32| on the subset.


@pytest.fixture(scope="module")
def retrieval_dir():
  return synthetic.ensure_retrieval(pretrain.get_config("tiny"))


def _args(checkpoint, data, output="", dtype="float32", **over):
  return argparse.Namespace(checkpoint=str(checkpoint), data=data, split="test",
                            output=str(output), dtype=dtype, **dict(QUICK, **over))


def _scores(checkpoint, data, dtype="float32", devices=None):
  mesh = mesh_lib.create_mesh(dict(data=-1, fsdp=1, tensor=1), devices)
  model, params, cfg = common.load_for_eval(str(checkpoint), mesh, dtype)
  split = retrieval_data.load_split(data, "test", max_images=QUICK["max_images"],
                                    max_text_len=cfg.max_position_embeddings)
  with jax.set_mesh(mesh):
    scorer = retrieval.BlockScorer(model, mesh, jax.tree.map(lambda x: x.sharding, params),
                                   block_images=8, block_captions=40)
    return retrieval.score_matrix(scorer, params, split), split


# ----------------------------------------------------------------------------- metrics

def test_recall_metrics_on_a_hand_made_matrix():
  # 3 images; captions 0,1 -> image 0, 2,3 -> image 1, 4 -> image 2.
  caption_image = np.array([0, 0, 1, 1, 2])
  scores = np.array([[0.9, 0.1, 0.8, 0.2, 0.5],
                     [0.3, 0.2, 0.7, 0.6, 0.5],
                     [0.3, 0.9, 0.1, 0.6, 0.5]], np.float32)
  ir, tr = retrieval.ranks(scores, caption_image)
  # caption 1: images 2 (0.9) and 1 (0.2) before its image 0 (0.1): rank 2; caption 2:
  # image 0 (0.8) first; caption 3: image 1 ties image 2 at 0.6 and wins by index; caption
  # 4: a three-way tie at 0.5, broken by index: its image 2 comes last.
  np.testing.assert_array_equal(ir, [0, 2, 1, 0, 2])
  # image 0: its caption 0 is the top caption; image 1: its caption 2 (0.7) is; image 2:
  # its caption 4 is behind captions 1 (0.9) and 3 (0.6).
  np.testing.assert_array_equal(tr, [0, 0, 2])
  m = retrieval.recall_metrics(scores, caption_image)
  assert m["ir_r1"] == 40.0 and m["ir_r5"] == 100.0 and m["ir_r10"] == 100.0
  assert m["tr_r1"] == pytest.approx(200 / 3) and m["tr_r5"] == 100.0
  assert m["rsum"] == pytest.approx(40 + 100 + 100 + 200 / 3 + 100 + 100)
  assert retrieval.chance(3, caption_image) == pytest.approx(
      dict(chance_ir_r1=100 / 3, chance_tr_r1=100 * (2 / 5 + 2 / 5 + 1 / 5) / 3))


def test_synthetic_retrieval_set_test_is_the_world_test_images_train_is_new(retrieval_dir):
  config = pretrain.get_config("tiny")
  meta = schema.read_metadata(retrieval_dir)["splits"]
  sizes = {"train": 2000, "validation": 200, "test": 200}
  assert meta == {k: dict(meta[k], images=n, captions=5 * n, images_without_captions=0)
                  for k, n in sizes.items()}
  assert synthetic.ensure_retrieval(config) == retrieval_dir       # cached
  caps = schema.load_captions(retrieval_dir, "test")
  np.testing.assert_array_equal(np.bincount(caps.image_index), np.full(200, 5))
  world_dir = synthetic.ensure_synthetic(config)
  ours = schema.open_images(retrieval_dir, "test")
  world = schema.open_images(world_dir, "test")
  for i in (0, 199):
    for key, value in ours[i].items():
      np.testing.assert_array_equal(value, world[i][key])
  # Fine-tuning images are not the pretraining world's (nor its test images).
  world_feats = [np.asarray(schema.open_images(world_dir, s)[0]["features"])
                 for s in ("train", "validation", "test")]
  for split in ("train", "validation"):
    first = np.asarray(schema.open_images(retrieval_dir, split)[0]["features"])
    assert not any(f.shape == first.shape and np.array_equal(f, first) for f in world_feats)


# ----------------------------------------------------------------------------- the run

def test_trainer_logs_zero_shot_retrieval(tiny_pretrain_run):
  records = [json.loads(l) for l in open(os.path.join(tiny_pretrain_run["workdir"],
                                                      "metrics.jsonl"))]
  last = [r for r in records if r["step"] == tiny_pretrain_run["steps"] and "eval_ir_r1" in r]
  assert len(last) == 1
  for key in ("eval_ir_r1", "eval_ir_r5", "eval_ir_r10", "eval_tr_r1", "eval_tr_r5",
              "eval_tr_r10"):
    assert 0.0 <= last[0][key] <= 100.0
  assert last[0]["eval_ir_r10"] >= last[0]["eval_ir_r1"]


def test_export_load_evaluate_is_exact_and_beats_chance(tiny_pretrain_run, retrieval_dir,
                                                        tmp_path):
  workdir, step_dir = tiny_pretrain_run["workdir"], tiny_pretrain_run["step_dir"]
  from_step = retrieval_cli.run(_args(step_dir, retrieval_dir))
  for fmt in ("native", "safetensors"):
    out = tmp_path / fmt
    info = export.export(workdir, str(out), format=fmt)
    assert info["step"] == tiny_pretrain_run["steps"] and info["weights"] == "raw"
    assert info["eval_metrics"]["eval_itm_acc"] > 0.5 and "eval_ir_r1" in info["eval_metrics"]
    _, params, _ = model_files.load_checkpoint(str(out))
    assert model_files.checksums(params) == info["checksums"]
    assert info["parameters"] == 1_020_098
    got = retrieval_cli.run(_args(out, retrieval_dir))
    assert {k: v for k, v in got.items() if k != "checkpoint"} == {
        k: v for k, v in from_step.items() if k != "checkpoint"}, fmt
  # The quick start's zero-shot image retrieval on these 24 images: measured 83.3% against
  # 4.2% chance (1/24); tests/test_downstream.py checks 50 images.
  assert from_step["chance_ir_r1"] == pytest.approx(100 / 24)
  assert from_step["ir_r1"] >= 5 * from_step["chance_ir_r1"], from_step
  assert from_step["ir_r10"] > from_step["ir_r1"]


def test_bfloat16_export_within_tolerance(tiny_pretrain_run, retrieval_dir, tmp_path):
  export.export(tiny_pretrain_run["workdir"], str(tmp_path / "bf16"), dtype="bfloat16",
                format="safetensors")
  f32, _ = _scores(tiny_pretrain_run["step_dir"], retrieval_dir)
  bf16, _ = _scores(tmp_path / "bf16", retrieval_dir)
  assert 0 < np.abs(bf16 - f32).max() < BF16_TOLERANCE


def test_eight_devices_equal_one(tiny_pretrain_run, retrieval_dir):
  eight, split = _scores(tiny_pretrain_run["step_dir"], retrieval_dir)
  one, _ = _scores(tiny_pretrain_run["step_dir"], retrieval_dir, devices=jax.devices()[:1])
  assert eight.shape == (24, 120)
  np.testing.assert_allclose(eight, one, rtol=0, atol=1e-6)
  assert (retrieval.recall_metrics(eight, split.caption_image)
          == retrieval.recall_metrics(one, split.caption_image))


def test_kill9_mid_evaluation_then_same_command_gives_same_json(tiny_pretrain_run,
                                                                retrieval_dir, tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  output = tmp_path / "killed.json"
  cmd = [sys.executable, "-m", "interbert_jax.evaluate", "retrieval",
         f"--checkpoint={tiny_pretrain_run['step_dir']}", f"--data={retrieval_dir}",
         f"--output={output}", "--max_images=12", "--block_images=1", "--block_captions=8"]
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
  blocks = tmp_path / "killed.json.blocks"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if blocks.is_dir() and len(list(blocks.glob("*.npy"))) >= 3:
      break
    time.sleep(0.02)
  proc.kill()                        # SIGKILL
  proc.wait()
  assert not output.exists(), "finished before the kill: make the evaluation longer"
  done = len(list(blocks.glob("*.npy")))
  assert 0 < done < 12 * 8
  resumed = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"({done} already done)" in resumed.stderr
  # The uninterrupted evaluation (same devices, same blocks), in this process.
  straight = tmp_path / "straight.json"
  assert evaluate.main(cmd[3:6] + [f"--output={straight}"] + cmd[7:]) == 0
  assert output.read_bytes() == straight.read_bytes() == resumed.stdout.encode()
  assert json.loads(output.read_bytes())["images"] == 12


# ----------------------------------------------------------------------------- export

def test_reference_export_round_trips_and_ema_is_preferred(tiny_pretrain_run, tmp_path):
  pytest.importorskip("torch")
  workdir = tiny_pretrain_run["workdir"]
  info = export.export(workdir, str(tmp_path / "ref"), format="reference")
  params, _ = commands.reference_checkpoint(str(tmp_path / "ref" / "pytorch_model.bin"),
                                            str(tmp_path / "ref" / "bert_config.json"),
                                            config_variant="tiny")
  assert model_files.checksums(params) == info["checksums"]

  # A step with an EMA item (as fine-tuning writes it): the default export uses it.
  fake = tmp_path / "work"
  shutil.copytree(workdir, fake, ignore=shutil.ignore_patterns("tb"))
  step = tiny_pretrain_run["steps"]
  raw = jax.tree.map(np.asarray, model_files.load_checkpoint(tiny_pretrain_run["step_dir"])[1])
  ema = jax.tree.map(lambda x: x * 0.5, raw)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save((fake / "checkpoints" / str(step) / "ema_params").absolute(), ema)
  ckptr.wait_until_finished()
  got = export.export(str(fake), str(tmp_path / "ema"))
  assert got["weights"] == "ema" and got["checksums"] == model_files.checksums(ema)
  assert export.export(str(fake), str(tmp_path / "raw"), weights="raw")["checksums"] == \
      info["checksums"]


def test_export_errors(tiny_pretrain_run, tmp_path):
  workdir = tiny_pretrain_run["workdir"]
  with pytest.raises(export.ExportError, match=r"--step=7: .* has steps .*3000"):
    export.export(workdir, str(tmp_path / "a"), step=7)
  with pytest.raises(export.ExportError, match="no checkpoint in"):
    export.export(str(tmp_path), str(tmp_path / "b"))
  with pytest.raises(export.ExportError, match="--weights=ema: .* has no ema_params"):
    export.export(workdir, str(tmp_path / "c"), weights="ema")
  with pytest.raises(export.ExportError, match="float32 only"):
    export.export(workdir, str(tmp_path / "d"), format="reference", dtype="bfloat16")
  _, params, cfg = model_files.load_checkpoint(tiny_pretrain_run["step_dir"])
  params = dict(params, vcr_head={"kernel": np.zeros((128, 1), np.float32)})
  with pytest.raises(commands.ConversionError, match=r"no place for \['vcr_head/kernel'\]"):
    commands.write_reference(params, cfg, str(tmp_path / "e.bin"))
  assert not (tmp_path / "e.bin").exists()
  # The CLI: exit 2 and one line.
  proc = subprocess.run([sys.executable, "-m", "interbert_jax.export", f"--workdir={workdir}",
                         f"--output={tmp_path / 'f'}", "--step=7"], cwd=REPO,
                        env=dict(os.environ, PYTHONPATH=REPO), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 2 and proc.stderr.strip().startswith("error: --step=7"), proc.stderr
  assert "Traceback" not in proc.stderr and not (tmp_path / "f").exists()


def test_evaluate_errors(tiny_pretrain_run, tmp_path, capsys):
  data = str(tmp_path / "nocaps")
  record = dict(image_id="a", width=np.int32(10), height=np.int32(10), num_boxes=np.int32(1),
                boxes=np.array([[0, 0, 5, 5]], np.float32),
                features=np.zeros((1, 64), np.float16),
                object_ids=np.zeros(1, np.int32), object_conf=np.ones(1, np.float32))
  schema.write_vocab(data, ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"])
  schema.write_split(data, "test", [record, dict(record, image_id="b")], {},
                     feature_dim=64, num_classes=64, class_target="object_ids",
                     vocab_size=5, lower_case=True, source_format="test")
  step_dir = tiny_pretrain_run["step_dir"]
  assert evaluate.main(["retrieval", f"--checkpoint={step_dir}", f"--data={data}"]) == 2
  assert "test_captions.npz: no captions for the first 2 images" in capsys.readouterr().err
  assert evaluate.main(["retrieval", f"--checkpoint={tmp_path / 'none'}",
                        f"--data={data}"]) == 2
  assert "does not exist" in capsys.readouterr().err
  assert evaluate.main(["retrieval", f"--checkpoint={step_dir}", f"--data={data}",
                        "--split=validation"]) == 2
  assert "no split 'validation'" in capsys.readouterr().err
