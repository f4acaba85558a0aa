r"""Runs a grid of pretraining runs: one trainer workdir per named override set.

  python -m interbert_jax.sweep --config=configs/pretrain.py:tiny \
      --sweep=configs/sweeps.py:paper --root=workdirs/paper --set total_steps=1500
  python -m interbert_jax.sweep ... --launcher=print          # the exact commands, runs nothing
  python -m interbert_jax.sweep ... --parallel=2 --only=interbert,fusion_sum
  python -m interbert_jax.sweep ... --launcher=tpu_pod        # one after another on the pod
  python -m interbert_jax.sweep ... --launcher=slurm          # one sbatch job per run
  python -m interbert_jax.report workdirs/paper               # the table and the curves

A sweep is a function in a Python file (`configs/sweeps.py:paper` is `paper()` there) that
returns {run name: {dotted config key: value}}. Run NAME trains in ROOT/NAME/ with
  base config  <-  the run's overrides  <-  every --set KEY=VALUE (so --set wins),
passed to `python -m interbert_jax.main` as --config.KEY=VALUE flags. Before anything
starts, every run's config is built and checked by the trainer's own validation
(training/config_validation.py); a problem names the run and the key and exits 2.

ROOT/NAME/ gets overrides.json (what was applied), train.log (trainer output, appended per
attempt) and sweep_status.json (command, wall time and exit code of every attempt), beside
the trainer's config.json, metrics.jsonl and checkpoints/. Running the same sweep again
skips finished runs (a checkpoint at total_steps) and restarts the others, which resume
from their latest checkpoint through the trainer's auto-resume. A run directory made with
different overrides is an error, not a silent resume. `interbert_jax/run_dirs.py` defines
finished / failed / unfinished.

Launchers: local (subprocesses on this machine, --parallel at a time; Ctrl-C / SIGTERM is
passed on, so every running trainer saves a checkpoint), print, tpu_pod
(launch/tpu_pod.sh with CONFIG/WORKDIR set; TPU_NAME and ZONE from the environment), slurm
(`sbatch launch/gpu_slurm.sh`, job output in ROOT/NAME/train.log). --dry_run makes tpu_pod
and slurm print what they would run (the scripts' own --dry_run) without gcloud or sbatch.
Exit code: 0 when every selected run finished (or was submitted / printed), 1 when one
failed, 2 for a usage or config error.
"""
import dataclasses
import datetime
import math
import os
import shlex
import signal
import subprocess
import sys
import time

from absl import flags

from interbert_jax import cli
from interbert_jax import config_files
from interbert_jax import errors
from interbert_jax import overrides as overrides_lib
from interbert_jax import run_dirs
from interbert_jax.checkpoints import workdir_lock
from interbert_jax.parallel import mesh as mesh_lib
from interbert_jax.training import config_validation

_CONFIG = flags.DEFINE_string("config", None, "Base config, e.g. configs/pretrain.py:tiny.")
_SWEEP = flags.DEFINE_string("sweep", None, "Sweep function, e.g. configs/sweeps.py:paper.")
_ROOT = flags.DEFINE_string("root", None, "Directory of the runs: ROOT/<run name>/.")
_LAUNCHER = flags.DEFINE_enum("launcher", "local", ["local", "print", "tpu_pod", "slurm"],
                              "How runs start: local subprocesses, print the commands, "
                              "launch/tpu_pod.sh, or sbatch launch/gpu_slurm.sh.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "local: runs at a time.", lower_bound=1)
_ONLY = flags.DEFINE_list("only", [], "Run only these runs (comma-separated names).")
_SET = flags.DEFINE_multi_string("set", [], "KEY=VALUE applied to every run after its own "
                                 "overrides, e.g. --set total_steps=1500 (repeatable).")
_NUM_DEVICES = flags.DEFINE_integer(
    "num_devices", 0, "Devices per run for the up-front mesh/batch checks; 0 = the smallest "
    "count the mesh allows (the trainer checks again against the real devices).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "tpu_pod/slurm: print what the launch scripts "
                             "would run (their --dry_run) instead of running it.")
_PROGRESS_EVERY = flags.DEFINE_integer("progress_every", 60, "local: seconds between progress "
                                       "lines of the running runs.")

LAUNCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "launch")


class SweepError(errors.UserError, ValueError):
  """A sweep that cannot start; the message names the run and the key."""


@dataclasses.dataclass
class Run:
  name: str
  workdir: str
  overrides: dict        # the run's own, from the sweep file
  common: dict           # --set, every run
  total_steps: int

  def record(self, config_spec: str) -> dict:
    return {"config": config_spec, "overrides": self.overrides, "set": self.common,
            "total_steps": self.total_steps}

  def flags(self) -> list[str]:
    return overrides_lib.to_flags({**self.overrides, **self.common})


# ----------------------------------------------------------------------------- plan

def _device_count(mesh_config, num_devices: int) -> int:
  if num_devices:
    return num_devices
  sizes = [int(mesh_config[a]) for a in mesh_lib.MESH_AXES]
  return max(1, math.prod(s for s in sizes if s != -1))


def plan(config_spec: str, sweep_spec: str, root: str, sets=(), only=(),
         num_devices: int = 0) -> list[Run]:
  """The selected runs, each config built and validated; raises SweepError listing all problems."""
  if "://" in root:
    raise SweepError(f"--root={root}: the sweep keeps train.log and its status files with "
                     "local paths; use a local or mounted directory (e.g. a gcsfuse mount "
                     "of the bucket) that every host sees")
  try:
    base = config_files.load_config(config_spec)
    runs = config_files.load_sweep(sweep_spec)
  except config_files.ConfigFileError as e:
    raise SweepError(str(e)) from None
  unknown = [n for n in only if n not in runs]
  if unknown:
    raise SweepError(f"--only: no run named {unknown} in {sweep_spec}; it has {list(runs)}")
  try:
    common = dict(overrides_lib.parse_assignment(s, base) for s in sets)
  except overrides_lib.OverrideError as e:
    raise SweepError(str(e)) from None
  problems, out = [], []
  for name, run_overrides in runs.items():
    if only and name not in only:
      continue
    try:
      errors.check_name(name, "run name")   # it becomes ROOT/<name>
    except errors.UserError as e:
      problems.append(f"run {name!r}: {e}")
      continue
    try:
      config = overrides_lib.apply(base, {**run_overrides, **common})
    except overrides_lib.OverrideError as e:
      problems.append(f"run {name!r}: {e}")
      continue
    try:
      config_validation.validate_config(
          config, num_devices=_device_count(config.mesh, num_devices))
    except config_validation.ConfigError as e:
      problems.append(f"run {name!r}: {e}")
      continue
    run = Run(name, os.path.join(root, name), dict(run_overrides), common, config.total_steps)
    previous = run_dirs.read_json(os.path.join(run.workdir, run_dirs.OVERRIDES_FILE))
    if previous is not None and previous != run.record(config_spec):
      problems.append(f"run {name!r}: {run.workdir} was started with other settings "
                      f"({previous}); use another --root or delete it")
      continue
    out.append(run)
  if problems:
    raise SweepError(f"{sweep_spec}: {len(problems)} problem(s), nothing started: " +
                     "; ".join(problems))
  return out


def trainer_command(run: Run, config_spec: str) -> list[str]:
  return [sys.executable, "-m", "interbert_jax.main", f"--config={config_spec}",
          f"--workdir={run.workdir}", *run.flags()]


def launch_command(run: Run, config_spec: str, launcher: str, dry_run: bool):
  """(argv, extra environment) of one run for tpu_pod / slurm."""
  env = {"CONFIG": config_spec, "WORKDIR": run.workdir}
  if launcher == "tpu_pod":
    return ["bash", os.path.join(LAUNCH_DIR, "tpu_pod.sh"),
            *(["--dry_run"] if dry_run else []), *run.flags()], env
  script = os.path.join(LAUNCH_DIR, "gpu_slurm.sh")
  if dry_run:
    return ["bash", script, "--dry_run", *run.flags()], env
  return ["sbatch", f"--job-name=interbert-{run.name}",
          f"--output={os.path.join(run.workdir, run_dirs.LOG_FILE)}", script, *run.flags()], env


# ----------------------------------------------------------------------------- run

def _now() -> str:
  return datetime.datetime.now().isoformat(timespec="seconds")


def _say(msg: str) -> None:
  print(f"[sweep] {msg}", flush=True)


class _Attempt:
  """One started process of a run: its log, its sweep_status.json entry."""

  def __init__(self, run: Run, config_spec: str, launcher: str, argv, env=None):
    self.run = run
    os.makedirs(run.workdir, exist_ok=True)
    run_dirs.write_json(os.path.join(run.workdir, run_dirs.OVERRIDES_FILE),
                        run.record(config_spec))
    self.status_path = os.path.join(run.workdir, run_dirs.STATUS_FILE)
    self.history = run_dirs.attempts(run.workdir)
    self.entry = {"launcher": launcher, "command": shlex.join(argv), "started": _now(),
                  "returncode": None, "wall_s": None}
    self.history.append(self.entry)
    run_dirs.write_json(self.status_path, {"attempts": self.history})
    self.log = open(os.path.join(run.workdir, run_dirs.LOG_FILE), "a")
    self.log.write(f"[sweep] attempt {len(self.history)} at {self.entry['started']}: "
                   f"{self.entry['command']}\n")
    self.log.flush()
    self.t0 = time.time()
    self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                 env={**os.environ, **(env or {})})

  def finish(self, returncode: int) -> None:
    self.entry["returncode"] = returncode
    self.entry["wall_s"] = round(time.time() - self.t0, 1)
    run_dirs.write_json(self.status_path, {"attempts": self.history})
    self.log.close()


def _step(run: Run) -> int:
  records = run_dirs.read_metrics(run.workdir)
  return max((r["step"] for r in records if "loss" in r), default=0)


def run_local(runs: list[Run], config_spec: str, parallel: int, progress_every: int) -> dict:
  """Runs `runs` as subprocesses, `parallel` at a time; returns name -> return code."""
  pending, running, codes = list(runs), [], {}
  stop = {"signal": None}

  def on_signal(signum, _):
    stop["signal"] = signum
    _say(f"signal {signum}: passing SIGTERM to {len(running)} running trainer(s) (they "
         "save a checkpoint); not starting more")
    for a in running:
      a.proc.send_signal(signal.SIGTERM)

  old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
  last_progress = time.time()
  try:
    while running or (pending and stop["signal"] is None):
      while pending and len(running) < parallel and stop["signal"] is None:
        run = pending.pop(0)
        holder = workdir_lock.WorkdirLock.held_by_other(run.workdir)
        if holder is not None:   # another sweep (or a hand-started trainer) runs it now
          _say(f"{run.name}: running elsewhere (pid {holder.get('pid', '?')} on host "
               f"{holder.get('host', '?')}), skipped")
          continue
        a = _Attempt(run, config_spec, "local", trainer_command(run, config_spec))
        running.append(a)
        _say(f"started {run.name} (step {_step(run)}/{run.total_steps}; log "
             f"{os.path.join(run.workdir, run_dirs.LOG_FILE)})")
      time.sleep(0.5)
      for a in list(running):
        rc = a.proc.poll()
        if rc is None:
          continue
        a.finish(rc)
        running.remove(a)
        codes[a.run.name] = rc
        status, why = run_dirs.run_status(a.run.workdir, a.run.total_steps)
        _say(f"{a.run.name}: exit {rc} after {a.entry['wall_s']:.0f}s, step "
             f"{_step(a.run)}/{a.run.total_steps}: {status}{' (' + why + ')' if why else ''}")
      if running and time.time() - last_progress >= progress_every:
        last_progress = time.time()
        _say("running: " + ", ".join(
            f"{a.run.name} {_step(a.run)}/{a.run.total_steps} ({time.time() - a.t0:.0f}s)"
            for a in running) + f"; {len(pending)} waiting")
  finally:
    for s, h in old.items():
      signal.signal(s, h)
  return codes


def run_remote(runs: list[Run], config_spec: str, launcher: str, dry_run: bool) -> dict:
  """tpu_pod: one run after the other; slurm: one sbatch per run. name -> return code."""
  codes = {}
  for run in runs:
    argv, env = launch_command(run, config_spec, launcher, dry_run)
    if dry_run:
      if launcher == "slurm":
        print(" ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()),
              shlex.join(launch_command(run, config_spec, launcher, False)[0]), flush=True)
      codes[run.name] = subprocess.run(argv, env={**os.environ, **env}).returncode
      continue
    _say(f"{launcher}: {run.name}")
    a = _Attempt(run, config_spec, launcher, argv, env)
    codes[run.name] = a.proc.wait()
    a.finish(codes[run.name])
    _say(f"{run.name}: {launcher} exit {codes[run.name]}")
  return codes


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f"unexpected arguments: {argv[1:]}")
  for name, flag in (("--config", _CONFIG), ("--sweep", _SWEEP), ("--root", _ROOT)):
    if not flag.value:
      raise errors.UserError(f"{name} is required (see --help)")
  runs = plan(_CONFIG.value, _SWEEP.value, _ROOT.value, _SET.value, _ONLY.value,
              _NUM_DEVICES.value)   # SweepError (a UserError): one line, exit 2

  todo = []
  for run in runs:
    steps = run_dirs.checkpoint_steps(run.workdir)
    if run_dirs.is_finished(run.workdir, run.total_steps):
      _say(f"{run.name}: finished (checkpoint {steps[-1] if steps else '-'} >= total_steps "
           f"{run.total_steps}), skipped")
    else:
      todo.append(run)
      if steps:
        _say(f"{run.name}: unfinished, resumes from checkpoint {steps[-1]}")
  launcher = _LAUNCHER.value
  if launcher == "print":
    for run in todo:
      log = os.path.join(run.workdir, run_dirs.LOG_FILE)
      print(f"mkdir -p {shlex.quote(run.workdir)} && "
            f"{shlex.join(trainer_command(run, _CONFIG.value))} >> {shlex.quote(log)} 2>&1")
    return
  if not _DRY_RUN.value:
    _write_manifest(_ROOT.value, _CONFIG.value, _SWEEP.value)
  _say(f"{len(todo)} of {len(runs)} run(s) to go with launcher={launcher}")
  if launcher == "local":
    codes = run_local(todo, _CONFIG.value, _PARALLEL.value, _PROGRESS_EVERY.value)
  else:
    codes = run_remote(todo, _CONFIG.value, launcher, _DRY_RUN.value)
  failed = sorted(n for n, rc in codes.items() if rc != 0)
  if launcher == "local":
    states = {r.name: run_dirs.run_status(r.workdir, r.total_steps)[0] for r in runs}
    _say("done: " + ", ".join(f"{n} {s}" for n, s in states.items()))
  if failed:
    _say(f"failed: {failed} (see ROOT/<name>/train.log)")
    sys.exit(1)


def _write_manifest(root: str, config_spec: str, sweep_spec: str) -> None:
  """ROOT/sweep.json: every run of the sweep in order (so the report lists unstarted ones)."""
  path = os.path.join(root, run_dirs.MANIFEST_FILE)
  names = list(config_files.load_sweep(sweep_spec))
  old = run_dirs.read_json(path, {})
  names += [n for n in old.get("runs", []) if n not in names]
  os.makedirs(root, exist_ok=True)
  run_dirs.write_json(path, {"config": config_spec, "sweep": sweep_spec, "runs": names})


if __name__ == "__main__":
  cli.run(main)
