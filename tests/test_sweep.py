"""`python -m interbert_jax.sweep`: expansion and up-front validation, the printed commands,
and a real local sweep (a small tiny, 4 steps): a run selected with --only, then the whole
grid again, where the finished run is skipped and an interrupted one resumes."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from interbert_jax import run_dirs
from interbert_jax import sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/pretrain.py:tiny"
SWEEP_FILE = '''
def grid():
  return {"base": {}, "seed1": {"data.seed": 1}}

def bad():
  return {"ok": {}, "typo": {"model.fusoin": "sum"}, "value": {"model.fusion": "max"},
          "type": {"total_steps": "many"}}
'''
# A short, small run: compile time dominates, and the second run hits the compile cache
# (data.seed does not change the step).
SETS = ["total_steps=4", "log_every_steps=2", "checkpoint_every_steps=2",
        "eval_every_steps=0", "keep_checkpoints=5",
        "model.hidden_size=32", "model.pooler_dim=32", "model.single_stream.layers=1",
        "model.text_stream.layers=0", "model.image_stream.layers=0"]


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("sweeps") / "sweeps.py"
  path.write_text(SWEEP_FILE)
  return str(path)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  return dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="",
              TF_CPP_MIN_LOG_LEVEL="2",
              XLA_FLAGS="--xla_force_host_platform_device_count=1 "
                        "--xla_backend_optimization_level=0",
              JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


def _sweep(env, sweep_spec, root, *args, sets=SETS):
  cmd = [sys.executable, "-m", "interbert_jax.sweep", f"--config={CONFIG}",
         f"--sweep={sweep_spec}", f"--root={root}", *args]
  for s in sets:
    cmd += ["--set", s]
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_plan_expands_runs_in_order(sweep_file, tmp_path):
  runs = sweep.plan(CONFIG, f"{sweep_file}:grid", str(tmp_path), ["total_steps=7"])
  assert [r.name for r in runs] == ["base", "seed1"]
  assert runs[1].workdir == os.path.join(str(tmp_path), "seed1")
  assert runs[1].overrides == {"data.seed": 1} and runs[1].common == {"total_steps": 7}
  assert runs[1].total_steps == 7
  assert runs[1].flags() == ["--config.data.seed=1", "--config.total_steps=7"]
  only = sweep.plan(CONFIG, f"{sweep_file}:grid", str(tmp_path), only=["seed1"])
  assert [r.name for r in only] == ["seed1"] and only[0].total_steps == 3000


def test_bad_runs_fail_up_front_naming_run_and_key(sweep_file, tmp_path):
  with pytest.raises(sweep.SweepError) as e:
    sweep.plan(CONFIG, f"{sweep_file}:bad", str(tmp_path))
  msg = str(e.value)
  assert "3 problem(s)" in msg and "'ok'" not in msg
  assert "run 'typo': unknown key 'model.fusoin'" in msg
  assert "run 'value': invalid config" in msg and "config.model.fusion='max'" in msg
  assert "run 'type': total_steps='many'" in msg
  for bad, want in ((["--set", "no_such=1"], "--set 'no_such=1': unknown key 'no_such'"),
                    (["--set", "total_steps=x"], "'x' is not a int"),
                    (["--only=nope"], "--only: no run named ['nope']")):
    with pytest.raises(sweep.SweepError, match=None) as e:
      sweep.plan(CONFIG, f"{sweep_file}:grid", str(tmp_path),
                 sets=[bad[1]] if bad[0] == "--set" else (),
                 only=["nope"] if bad[0].startswith("--only") else ())
    assert want in str(e.value), str(e.value)
  with pytest.raises(sweep.SweepError, match="get_config\\('huge'\\) raised ValueError"):
    sweep.plan("configs/pretrain.py:huge", f"{sweep_file}:grid", str(tmp_path))
  with pytest.raises(sweep.SweepError, match="has no sweep function nope"):
    sweep.plan(CONFIG, f"{sweep_file}:nope", str(tmp_path))
  with pytest.raises(sweep.SweepError, match="local or mounted directory"):
    sweep.plan(CONFIG, f"{sweep_file}:grid", "gs://bucket/sweep")


def test_cli_usage_errors_exit_2_without_traceback(env, sweep_file, tmp_path):
  proc = _sweep(env, f"{sweep_file}:bad", tmp_path / "bad", sets=[])
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr and "run 'typo': unknown key" in proc.stderr
  assert not os.path.exists(tmp_path / "bad")            # nothing started, nothing written


def test_print_launcher_prints_exact_commands(env, sweep_file, tmp_path):
  root = tmp_path / "printed"
  proc = _sweep(env, f"{sweep_file}:grid", root, "--launcher=print", sets=["total_steps=5"])
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.strip().splitlines()
  assert lines == [
      f"mkdir -p {root}/base && {sys.executable} -m interbert_jax.main --config={CONFIG} "
      f"--workdir={root}/base --config.total_steps=5 >> {root}/base/train.log 2>&1",
      f"mkdir -p {root}/seed1 && {sys.executable} -m interbert_jax.main --config={CONFIG} "
      f"--workdir={root}/seed1 --config.data.seed=1 --config.total_steps=5 "
      f">> {root}/seed1/train.log 2>&1"]
  assert not os.path.exists(root)


@pytest.fixture(scope="module")
def swept(env, sweep_file, tmp_path_factory):
  """A sweep of `base` alone (the trainer's first compile fills the cache)."""
  root = str(tmp_path_factory.mktemp("swept"))
  proc = _sweep(env, f"{sweep_file}:grid", root, "--only=base")
  return root, proc


def _check_run(root, name, own, attempts):
  workdir = os.path.join(root, name)
  record = json.load(open(os.path.join(workdir, "overrides.json")))
  assert record["overrides"] == own and record["total_steps"] == 4
  assert record["set"]["model.text_stream.layers"] == 0
  assert json.load(open(os.path.join(workdir, "config.json")))["data"]["seed"] == own.get(
      "data.seed", 0)
  assert run_dirs.checkpoint_steps(workdir) == [2, 4]
  tries = run_dirs.attempts(workdir)
  assert [t["returncode"] for t in tries] == [0] * attempts and tries[-1]["wall_s"] > 0
  assert f"--workdir={workdir}" in tries[-1]["command"]
  log = open(os.path.join(workdir, "train.log")).read()
  assert log.startswith("[sweep] attempt 1") and "checkpoint 4 saving to" in log
  assert run_dirs.run_status(workdir, 4) == ("finished", "")
  return log


def test_local_sweep_runs_the_selected_run(swept):
  root, proc = swept
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "1 of 1 run(s) to go" in proc.stdout and "done: base finished" in proc.stdout
  _check_run(root, "base", {}, attempts=1)
  assert not os.path.exists(os.path.join(root, "seed1"))
  assert json.load(open(os.path.join(root, "sweep.json")))["runs"] == ["base", "seed1"]


def test_rerun_skips_finished_and_resumes_unfinished(env, sweep_file, swept):
  root, first = swept
  assert first.returncode == 0
  # seed1 as if interrupted after its step-2 checkpoint: it must resume there (the trainer
  # restores whatever checkpoint it finds); base must be skipped.
  shutil.copytree(os.path.join(root, "base", "checkpoints", "2"),
                  os.path.join(root, "seed1", "checkpoints", "2"))
  proc = _sweep(env, f"{sweep_file}:grid", root)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "base: finished (checkpoint 4 >= total_steps 4), skipped" in proc.stdout
  assert "seed1: unfinished, resumes from checkpoint 2" in proc.stdout
  assert "1 of 2 run(s) to go" in proc.stdout
  assert "done: base finished, seed1 finished" in proc.stdout
  _check_run(root, "base", {}, attempts=1)
  log = _check_run(root, "seed1", {"data.seed": 1}, attempts=1)
  assert "resumed from" in log
  # Everything finished: a third run starts nothing.
  again = _sweep(env, f"{sweep_file}:grid", root)
  assert again.returncode == 0 and "0 of 2 run(s) to go" in again.stdout
  # Other settings for an existing run directory: refused up front.
  changed = _sweep(env, f"{sweep_file}:grid", root, sets=SETS[1:] + ["total_steps=6"])
  assert changed.returncode == 2 and "was started with other settings" in changed.stderr
