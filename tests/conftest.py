"""Tests run on CPU with 8 fake devices; XLA_FLAGS must be set before JAX is imported."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


import pytest  # noqa: E402  (after the environment above)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train(config, workdir, *overrides, timeout=1800):
  """`python -m interbert_jax.main --config=CONFIG --workdir=WORKDIR OVERRIDES...` on 1 CPU
  device in a subprocess, with every start-up path a user takes -> its stderr.
  """
  import subprocess
  import sys
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  proc = subprocess.run(
      [sys.executable, "-m", "interbert_jax.main", f"--config={config}",
       f"--workdir={workdir}", *overrides],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc.stderr


def pretrain_tiny(workdir, steps, *overrides):
  """The shipped tiny config for `steps` steps, one eval and one checkpoint at the end.
  overrides: more --config.* flags. -> the checkpoint directory of step `steps`."""
  train("configs/pretrain.py:tiny", workdir, f"--config.total_steps={steps}",
        "--config.log_every_steps=50", f"--config.eval_every_steps={steps}",
        "--config.eval_batches=2", f"--config.checkpoint_every_steps={steps}", *overrides)
  return str(os.path.join(workdir, "checkpoints", str(steps)))


# The longest modules first: pytest-xdist (`-n 2 --dist loadfile`, pyproject.toml) hands
# out whole modules in collection order, so the long ones start at once on both workers
# instead of ending the run on one. test_main and test_evaluation, which also read the
# shared pretraining run below (test_downstream starts it), come after the first three.
LONG_MODULES = ("test_downstream.py", "test_small_recipe.py", "test_synthetic_zh.py",
                "test_multiprocess.py", "test_main.py", "test_evaluation.py")


def pytest_collection_modifyitems(items):
  rank = lambda item: (LONG_MODULES.index(item.path.name) if item.path.name in LONG_MODULES
                       else len(LONG_MODULES))
  items.sort(key=rank)                   # stable: the order within a module stays


@pytest.fixture(scope="session")
def tiny_pretrain_run(tmp_path_factory):
  """The README's quick-start run, shared by every test that needs a pretrained model.

  `configs/pretrain.py:tiny` as shipped (3,000 steps, ~4-6 min on 2 cores), plus zero-shot
  retrieval on the first 16 eval images at the end (after training: the training and its
  eval metrics are those of the plain quick start). Under pytest-xdist the first worker to
  ask runs it, under a file lock in the session's temp root, and the others read its
  result. -> {"workdir", "steps", "step_dir", "stderr"}.
  """
  import json
  import filelock
  from configs.pretrain import get_config
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent                   # shared by this session's workers only
  result = root / "tiny_pretrain.json"
  with filelock.FileLock(str(result) + ".lock"):
    if result.is_file():
      return json.loads(result.read_text())
    steps = get_config("tiny").total_steps
    workdir = root / "tiny_pretrain" / "run"
    stderr = train("configs/pretrain.py:tiny", workdir,
                   f"--config.eval_retrieval_every_steps={steps}",
                   "--config.eval_retrieval_images=16")
    run = dict(workdir=str(workdir), steps=steps, stderr=stderr,
               step_dir=str(os.path.join(workdir, "checkpoints", str(steps))))
    result.write_text(json.dumps(run))
    return run
