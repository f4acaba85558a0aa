"""The launch scripts: --dry_run prints exactly the command they run (checked against fake
gcloud / srun executables that record their argv), the sweep goes through them, and
launch/local.sh trains the tiny model as 2 jax.distributed processes (gloo on 127.0.0.1)."""
import json
import os
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch")
# Small shapes and few steps; every start-up path a user takes (the MFU matmul included).
SMALL = ["--config.total_steps=4", "--config.log_every_steps=2",
         "--config.checkpoint_every_steps=4", "--config.eval_every_steps=0",
         "--config.model.hidden_size=32",
         "--config.model.pooler_dim=32", "--config.model.single_stream.layers=1",
         "--config.model.text_stream.layers=0", "--config.model.image_stream.layers=0"]


@pytest.fixture
def fake_bin(tmp_path):
  """A PATH dir whose gcloud and srun write their argv (JSON) to $FAKE_LOG."""
  d = tmp_path / "bin"
  d.mkdir()
  for name in ("gcloud", "srun"):
    exe = d / name
    exe.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                   "open(os.environ['FAKE_LOG'], 'w').write(json.dumps(sys.argv))\n")
    exe.chmod(0o755)
  return d


def _script(name, args, env, cwd=REPO):
  return subprocess.run(["bash", os.path.join(LAUNCH, name), *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script,extra_env", [
    ("tpu_pod.sh", dict(TPU_NAME="v4-32", ZONE="us-central2-b", PROJECT="proj",
                        WORKDIR="gs://bucket/run 1")),
    ("gpu_slurm.sh", dict(WORKDIR="/shared/runs/r1", DATA_DIR="/shared/cc")),
])
def test_dry_run_prints_the_command_it_runs(script, extra_env, fake_bin, tmp_path):
  log = tmp_path / "argv.json"
  env = dict(os.environ, PATH=f"{fake_bin}:{os.environ['PATH']}", FAKE_LOG=str(log),
             **extra_env)
  args = ["--config.mesh.fsdp=4", "--config.data.dir=/data/with space"]
  dry = _script(script, ["--dry_run", *args], env)
  assert dry.returncode == 0, dry.stderr
  assert not log.exists()                                    # nothing was run
  real = _script(script, args, env)
  assert real.returncode == 0, real.stderr
  ran = json.loads(log.read_text())
  printed = shlex.split(dry.stdout.strip().splitlines()[-1])
  assert [os.path.basename(printed[0])] + printed[1:] == [os.path.basename(ran[0])] + ran[1:]
  if script == "tpu_pod.sh":
    assert ran[1:6] == ["compute", "tpus", "tpu-vm", "ssh", "v4-32"]
    assert "--project=proj" in ran and "--worker=all" in ran
    remote = ran[-1].removeprefix("--command=")
    assert remote.startswith("cd ~/interbert-jax && pip install")   # ~ expands on the VM
    assert ("python3 -m interbert_jax.main '--config=configs/pretrain.py:base' "
            "'--workdir=gs://bucket/run 1' '--distributed=true' '--config.mesh.fsdp=4' "
            "'--config.data.dir=/data/with space'") in remote
  else:
    assert ran[1:3] == ["--gpus-per-task=1", "--kill-on-bad-exit=1"]
    assert ran[4:] == ["-m", "interbert_jax.main", "--distributed=auto",
                       "--config=configs/pretrain.py:base", "--workdir=/shared/runs/r1",
                       "--config.data.dir=/shared/cc", *args]
    assert "export JAX_COMPILATION_CACHE_DIR=/shared/runs/r1/jax_cache" in dry.stdout


def test_missing_variables_fail(tmp_path):
  env = {k: v for k, v in os.environ.items() if k not in ("TPU_NAME", "WORKDIR")}
  proc = _script("tpu_pod.sh", ["--dry_run"], env)
  assert proc.returncode != 0 and "set TPU_NAME" in proc.stderr
  proc = _script("local.sh", ["two"], env)
  assert proc.returncode == 2 and "usage: launch/local.sh NPROC" in proc.stderr


def test_sweep_goes_through_the_launch_scripts(tmp_path, capfd):
  from interbert_jax import sweep   # pylint: disable=g-import-not-at-top
  sweeps = tmp_path / "sweeps.py"
  sweeps.write_text("def grid():\n  return {'a': {}, 'b': {'model.fusion': 'sum'}}\n")
  root = str(tmp_path / "root")
  runs = sweep.plan("configs/pretrain.py:tiny", f"{sweeps}:grid", root, ["total_steps=10"])
  os.environ.update(TPU_NAME="pod", ZONE="z")
  try:
    outs = {}
    for launcher in ("tpu_pod", "slurm"):
      codes = sweep.run_remote(runs, "configs/pretrain.py:tiny", launcher, dry_run=True)
      assert codes == {"a": 0, "b": 0}
      outs[launcher] = capfd.readouterr().out
  finally:
    del os.environ["TPU_NAME"], os.environ["ZONE"]
  assert not os.path.exists(root)                            # a dry run writes nothing
  pod = [l for l in outs["tpu_pod"].splitlines() if l.startswith("gcloud")]
  assert len(pod) == 2 and "pod" in pod[0]
  assert f"\\'--workdir={root}/b\\'" in pod[1] and "\\'--config.model.fusion=sum\\'" in pod[1]
  assert "\\'--config.total_steps=10\\'" in pod[1]
  slurm = outs["slurm"].splitlines()
  sbatch = [l for l in slurm if "sbatch" in l]
  assert len(sbatch) == 2
  assert sbatch[1].startswith(f"CONFIG=configs/pretrain.py:tiny WORKDIR={root}/b sbatch "
                              "--job-name=interbert-b")
  assert f"--output={root}/b/train.log" in sbatch[1]
  srun = [l for l in slurm if l.startswith("srun") and "interbert_jax.main" in l]
  assert srun[1].endswith(f"--workdir={root}/b --config.model.fusion=sum "
                          "--config.total_steps=10 ")


def test_local_sh_runs_two_processes(tmp_path):
  workdir = tmp_path / "run"
  logs = tmp_path / "logs"
  env = dict(os.environ, PYTHONPATH=REPO, PYTHON=sys.executable, LOG_DIR=str(logs),
             TF_CPP_MIN_LOG_LEVEL="2", XLA_FLAGS="--xla_backend_optimization_level=0")
  args = ["2", "--config=configs/pretrain.py:tiny", f"--workdir={workdir}", *SMALL]
  dry = _script("local.sh", [*args, "--dry_run"], env)
  lines = dry.stdout.strip().splitlines()
  assert len(lines) == 2 and "JAX_PROCESS_ID=1" in lines[1] and "JAX_NUM_PROCESSES=2" in lines[0]
  assert "JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo" in lines[0]
  proc = _script("local.sh", args, env)
  other = (logs / "process_1.log").read_text()
  assert proc.returncode == 0, proc.stderr[-3000:] + other[-3000:]
  assert "process 0 of 2, 1 local / 2 global devices" in proc.stderr
  assert "process 1 of 2, 1 local / 2 global devices" in other
  with open(workdir / "metrics.jsonl") as f:
    steps = [json.loads(l)["step"] for l in f]
  assert steps == [2, 4]                                     # process 0 alone writes
  assert os.listdir(workdir / "checkpoints") == ["4"]


def test_local_sh_names_the_process_that_failed(tmp_path):
  """A config both processes refuse (batch 3 over 2 hosts): the script exits with their
  code and says which process failed and where its log is."""
  logs = tmp_path / "logs"
  env = dict(os.environ, PYTHONPATH=REPO, PYTHON=sys.executable, LOG_DIR=str(logs),
             TF_CPP_MIN_LOG_LEVEL="2")
  proc = _script("local.sh", ["2", "--config=configs/pretrain.py:tiny",
                              f"--workdir={tmp_path / 'run'}", "--config.batch_size=3"], env)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "no such job" not in proc.stderr
  line = [l for l in proc.stderr.splitlines() if " exited with " in l]
  assert len(line) == 1 and " of 2 (pid " in line[0] and "exited with 2" in line[0], line
  assert "must be divisible by the process count 2" in proc.stderr
