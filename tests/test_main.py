"""The real trainer, `python -m interbert_jax.main`, in subprocesses (1 CPU device each).

- a run killed with SIGKILL (as soon as its step-20 checkpoint starts being written) and
  restarted ends with bitwise the same parameters and optimizer state as a straight run;
- SIGTERM saves a checkpoint at the current step and exits 0; resuming is exact too;
- a non-finite loss stops the run (exit 1) and leaves the last good checkpoint alone;
- bad config values / keys fail at start-up, before anything compiles;
- the README's quick-start run (the shipped tiny config) learns the synthetic data:
  ITM >= 0.9, MSM and MRM far above chance.
All runs share a persistent compilation cache, so only the first one compiles.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import chex
import jax
import orbax.checkpoint as ocp
import pytest

from configs.pretrain import get_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL = 40
COMMON = [
    f"--config.total_steps={TOTAL}", "--config.log_every_steps=5",
    "--config.checkpoint_every_steps=10", "--config.eval_every_steps=20",
    "--config.eval_batches=2", "--config.keep_checkpoints=10",
    "--config.peak_flops_per_device=1e11",      # Skip the start-up matmul benchmark.
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  e = dict(os.environ)
  e.update(
      JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2",
      # Halves compile time; every comparison is between runs compiled the same way.
      XLA_FLAGS="--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0",
      JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  return e


def _cmd(workdir, *overrides):
  return [sys.executable, "-m", "interbert_jax.main", "--config=configs/pretrain.py:tiny",
          f"--workdir={workdir}", *COMMON, *overrides]


def _run(env, workdir, *overrides, expect_rc=0):
  proc = subprocess.run(_cmd(workdir, *overrides), cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == expect_rc, proc.stderr[-4000:]
  return proc


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _restore(path):
  return jax.device_get(ocp.StandardCheckpointer().restore(path))


def _assert_same_checkpoint(a_dir, b_dir, step):
  for item in ("params", "train_state"):
    a = _restore(os.path.join(a_dir, "checkpoints", str(step), item))
    b = _restore(os.path.join(b_dir, "checkpoints", str(step), item))
    chex.assert_trees_all_equal(a, b, strict=True)   # bitwise, same structure and dtypes


def _start(env, workdir, log_path):
  """Background trainer; its log goes to a file (a full stderr pipe would block it)."""
  log = open(log_path, "w")
  return subprocess.Popen(_cmd(workdir), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=log), log_path


def _wait_for(predicate, proc, what, timeout=300):
  start = time.time()
  while not predicate():
    if proc.poll() is not None:
      raise AssertionError(f"trainer exited ({proc.returncode}) before {what}")
    if time.time() - start > timeout:
      proc.kill()
      raise AssertionError(f"timed out waiting for {what}")
    time.sleep(0.02)


@pytest.fixture(scope="module")
def straight(env, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("straight"))
  proc = _run(env, workdir)
  return workdir, proc


def test_straight_run_outputs(straight):
  workdir, proc = straight
  records = _metrics(workdir)
  train = [r for r in records if "loss" in r]
  evals = [r for r in records if "eval_loss" in r]
  assert [r["step"] for r in train] == list(range(5, TOTAL + 1, 5))
  assert [r["step"] for r in evals] == [20, 40]
  for key in ("step", "loss", "msm_loss", "mrm_loss", "itm_loss", "msm_acc", "mrm_acc",
              "itm_acc", "learning_rate", "grad_norm", "examples_per_sec", "mfu"):
    assert key in train[-1], key
  for key in ("eval_loss", "eval_msm_acc", "eval_mrm_acc", "eval_itm_acc"):
    assert key in evals[-1], key
  assert train[-1]["loss"] < train[0]["loss"]                       # it learns
  assert 0 < train[-1]["mfu"] < 1 and train[-1]["examples_per_sec"] > 0
  config = json.load(open(os.path.join(workdir, "config.json")))
  assert config["total_steps"] == TOTAL and config["model"]["hidden_size"] == get_config("tiny").model.hidden_size
  assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))) == [10, 20, 30, 40]
  assert os.listdir(os.path.join(workdir, "tb"))
  assert "MB arguments" in proc.stderr and "FLOPs/example" in proc.stderr
  assert "ETA" in proc.stderr


def test_kill9_during_save_then_resume_is_bitwise_exact(env, straight, tmp_path):
  workdir = str(tmp_path / "killed")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  proc, _ = _start(env, workdir, tmp_path / "killed.log")

  def saving_step_20():
    return os.path.isdir(ckpt_dir) and any(n.startswith("20") for n in os.listdir(ckpt_dir))
  _wait_for(saving_step_20, proc, "the step-20 checkpoint")
  proc.kill()                                        # SIGKILL, typically mid-save.
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  proc = _run(env, workdir)
  assert "resumed from" in proc.stderr
  _assert_same_checkpoint(straight[0], workdir, TOTAL)
  final = [r for r in _metrics(workdir) if r["step"] == TOTAL and "loss" in r][-1]
  want = [r for r in _metrics(straight[0]) if r["step"] == TOTAL and "loss" in r][-1]
  assert final["loss"] == want["loss"]


def test_sigterm_saves_and_exits_cleanly(env, straight, tmp_path):
  workdir = str(tmp_path / "preempted")
  metrics = os.path.join(workdir, "metrics.jsonl")
  proc, log = _start(env, workdir, tmp_path / "preempted.log")
  _wait_for(lambda: os.path.exists(metrics) and any(
      r["step"] >= 15 for r in _metrics(workdir)), proc, "step 15")
  proc.send_signal(signal.SIGTERM)
  proc.wait(timeout=300)
  stderr = open(log).read()
  assert proc.returncode == 0, stderr[-3000:]
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))
                 if s.isdigit())
  assert 15 <= steps[-1] < TOTAL
  assert f"preempted at step {steps[-1]}" in stderr
  _run(env, workdir)                                 # Resumes from the SIGTERM checkpoint.
  _assert_same_checkpoint(straight[0], workdir, TOTAL)


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(env, straight, tmp_path):
  workdir = str(tmp_path / "nan")
  shutil.copytree(straight[0], workdir)
  os.remove(os.path.join(workdir, "metrics.jsonl"))
  proc = _run(env, workdir, "--config.total_steps=60", "--config.optimizer.learning_rate=1e30",
              expect_rc=1)
  assert "non-finite loss" in proc.stderr and "last good checkpoint (step 40)" in proc.stderr
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  assert steps[-1] == TOTAL                          # no checkpoint of NaN parameters
  _assert_same_checkpoint(straight[0], workdir, TOTAL)
  records = _metrics(workdir)
  assert records[-1]["loss"] is None and records[-1]["step"] <= 45


def test_bad_config_fails_before_compiling(env, tmp_path):
  workdir = str(tmp_path / "bad")
  proc = _run(env, workdir, "--config.mesh.data=3", "--config.model.fusion=max", expect_rc=2)
  assert "config.mesh: data*fsdp*tensor = 3" in proc.stderr
  assert "config.model.fusion='max'" in proc.stderr
  assert "compiled" not in proc.stderr
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))
  assert "Traceback" not in proc.stderr
  proc = subprocess.run(_cmd(workdir, "--config.no_such_key=1"), cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0 and "no_such_key" in proc.stderr


def test_tiny_learns_on_synthetic_data(tmp_path):
  """The README's quick-start job, as shipped (3,000 steps of `tiny`, ~4 min on 2 cores).

  Measured (eval on 256 validation pairs, bit-identical across runs on this CPU):
  ITM 0.918, MSM 0.772, MRM 0.797 at step 3000. Chance: ITM 0.5; MSM 0.21 (most frequent
  word; text alone tops out near 0.68 since object/attribute words need the regions);
  MRM 0.18 (most frequent class).
  """
  env = dict(os.environ, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="",
             TF_CPP_MIN_LOG_LEVEL="2", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  workdir = str(tmp_path / "learn")
  proc = subprocess.run(
      [sys.executable, "-m", "interbert_jax.main", "--config=configs/pretrain.py:tiny",
       f"--workdir={workdir}", "--config.peak_flops_per_device=1e11"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  records = _metrics(workdir)
  train = [r for r in records if "loss" in r]
  final_eval = [r for r in records if "eval_loss" in r][-1]
  assert final_eval["step"] == get_config("tiny").total_steps
  assert train[-1]["loss"] < 0.3 * train[0]["loss"], (train[0]["loss"], train[-1]["loss"])
  assert final_eval["eval_itm_acc"] >= 0.9, final_eval
  assert final_eval["eval_msm_acc"] >= 0.7, final_eval
  assert final_eval["eval_mrm_acc"] >= 0.6, final_eval
