"""Fine-tuning through the one trainer (`python -m interbert_jax.main`, subprocesses):
retrieval fine-tuning from `config.init_from`, the EMA of the weights in the state and in
checkpoints (item `ema_params`), and exact resume of both (stop at step 6, rerun: bitwise
the straight run's step-12 checkpoint). One compile, shared through the persistent cache.
"""
import json
import os
import subprocess
import sys

import chex
import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import interbert_jax
from configs import finetune_retrieval
from interbert_jax.model import dummy_inputs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL = 12


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("finetune")
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="",
             TF_CPP_MIN_LOG_LEVEL="2",
             XLA_FLAGS="--xla_force_host_platform_device_count=1 "
                       "--xla_backend_optimization_level=0",
             JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  # A "pretrained" model checkpoint to start from (random weights: what matters is that
  # they are loaded, not what they know).
  config = finetune_retrieval.get_config("tiny")
  model = interbert_jax.build_model(config.model)
  params = nn.unbox(model.init(jax.random.key(3), **dummy_inputs(config.model))["params"])
  init_dir = str(root / "pretrained")
  interbert_jax.save_checkpoint(init_dir, params, config.model)
  common = [f"--config.init_from={init_dir}", f"--config.total_steps={TOTAL}",
            "--config.log_every_steps=3", "--config.checkpoint_every_steps=6",
            "--config.eval_every_steps=6", "--config.eval_batches=2",
            "--config.keep_checkpoints=5",
            # No warm-up, so the schedule does not depend on total_steps (the resume test
            # runs to 6 first); x0.1 at epoch 0.5 = step 0.5 * 4 pairs * 80 captions / 32 = 5
            # (the retrieval set's 16 train images x 5 captions).
            "--config.optimizer.warmup_fraction=0.0", "--config.optimizer.decay_epochs=(0.5,)",
            "--config.data.synthetic.num_train_images=16",
            "--config.data.synthetic.num_validation_images=8",
            "--config.data.synthetic.num_test_images=4",
            f"--config.data.synthetic.dir={root / 'synthetic'}"]
  return env, root, common, params


def _run(setup, workdir, *extra):
  env, _, common, _ = setup
  proc = subprocess.run(
      [sys.executable, "-m", "interbert_jax.main", "--config=configs/finetune_retrieval.py:tiny",
       f"--workdir={workdir}", *common, *extra], cwd=REPO, env=env, capture_output=True,
      text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def _restore(workdir, step, item):
  return jax.device_get(ocp.StandardCheckpointer().restore(
      os.path.join(workdir, "checkpoints", str(step), item)))


@pytest.fixture(scope="module")
def straight(setup):
  workdir = str(setup[1] / "straight")
  return workdir, _run(setup, workdir)


def test_retrieval_finetuning_run(setup, straight):
  workdir, proc = straight
  assert "init_from" in proc.stderr and "loaded" in proc.stderr
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  train = [r for r in records if "loss" in r]
  evals = [r for r in records if "eval_loss" in r]
  assert [r["step"] for r in evals] == [6, 12]
  assert set(evals[-1]) >= {"eval_itm_loss", "eval_itm_acc", "eval_group_acc"}
  assert "msm_acc" not in train[-1] and 0 <= train[-1]["itm_acc"] <= 1
  lr = finetune_retrieval.get_config("tiny").optimizer.learning_rate
  assert train[0]["step"] == 3 and train[0]["learning_rate"] == pytest.approx(lr, rel=1e-6)
  assert train[-1]["learning_rate"] == pytest.approx(0.1 * lr, rel=1e-6)
  # EMA: its own checkpoint item, different from the weights, closer to them than the
  # initialisation is (decay ramp min(0.9999, (1+t)/(10+t)) after t=12 updates).
  params, ema = _restore(workdir, TOTAL, "params"), _restore(workdir, TOTAL, "ema_params")
  init = setup[3]
  leaf = lambda t: np.asarray(t["itm_head"]["kernel"], np.float64)
  assert not np.array_equal(leaf(params), leaf(ema))
  assert np.abs(leaf(ema) - leaf(init)).max() > 0
  assert np.abs(leaf(ema) - leaf(init)).max() < np.abs(leaf(params) - leaf(init)).max()
  # the EMA checkpoint is a plain InterBERT tree: load_checkpoint reads either item
  _, loaded, _ = interbert_jax.load_checkpoint(os.path.join(workdir, "checkpoints", "12",
                                                            "ema_params"))
  chex.assert_trees_all_equal(jax.device_get(loaded), ema)


def test_resume_is_bitwise_exact_with_ema(setup, straight):
  workdir = str(setup[1] / "resumed")
  _run(setup, workdir, "--config.total_steps=6")
  proc = _run(setup, workdir)
  assert "resumed from" in proc.stderr
  for item in ("params", "ema_params", "train_state"):
    chex.assert_trees_all_equal(_restore(straight[0], TOTAL, item),
                                _restore(workdir, TOTAL, item), strict=True)


def test_evaluate_refuses_other_tasks_and_missing_checkpoints(straight, tmp_path):
  from interbert_jax.evaluation import finetuned
  with pytest.raises(finetuned.EvaluationError, match="trained for task 'retrieval'"):
    finetuned.evaluate(straight[0], task_name="multiple_choice")
  with pytest.raises(finetuned.EvaluationError, match="no training checkpoint"):
    finetuned.evaluate(str(tmp_path), task_name="classification")
  assert finetuned.resolve_checkpoint(straight[0]) == (straight[0], TOTAL)
