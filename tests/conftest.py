"""Tests run on CPU with 8 fake devices; XLA_FLAGS must be set before JAX is imported."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


import pytest  # noqa: E402  (after the environment above)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_PRETRAIN_STEPS = 600


def pretrain_tiny(workdir, steps, *overrides, checkpoint_every_steps=0):
  """Runs the shipped tiny config for `steps` steps on 1 CPU device in a subprocess.

  overrides: more --config.* flags. Checkpoints every checkpoint_every_steps (0 = only at
  `steps`). -> the checkpoint directory of step `steps`.
  """
  import subprocess
  import sys
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  proc = subprocess.run(
      [sys.executable, "-m", "interbert_jax.main", "--config=configs/pretrain.py:tiny",
       f"--workdir={workdir}", f"--config.total_steps={steps}",
       "--config.log_every_steps=50", f"--config.eval_every_steps={steps}",
       "--config.eval_batches=2",
       f"--config.checkpoint_every_steps={checkpoint_every_steps or steps}",
       "--config.peak_flops_per_device=1e11", *overrides],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return str(os.path.join(workdir, "checkpoints", str(steps)))


@pytest.fixture(scope="session")
def tiny_pretrain_run(tmp_path_factory):
  """One short pretraining run of the shipped tiny config, shared by the downstream tests.

  600 steps (checkpoints at 300 and 600), 1 CPU device, zero-shot retrieval on the first
  16 eval images at the end. -> {"workdir", "steps", "step_dir"}.
  """
  workdir = tmp_path_factory.mktemp("tiny_pretrain") / "run"
  step_dir = pretrain_tiny(
      workdir, TINY_PRETRAIN_STEPS,
      f"--config.eval_retrieval_every_steps={TINY_PRETRAIN_STEPS}",
      "--config.eval_retrieval_images=16", checkpoint_every_steps=300)
  return dict(workdir=str(workdir), steps=TINY_PRETRAIN_STEPS, step_dir=step_dir)
