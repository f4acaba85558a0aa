r"""A pretraining recipe on named synthetic worlds: eval ITM / MSM / MRM and wall time each.

Runs `python -m interbert_jax.main --config=configs/pretrain.py:VARIANT,preset=P` once per
preset, one after another (each run has the machine to itself, so its wall time is what a
user gets), and prints one JSON line per preset and a summary line. The recipe's goal:
`small` reaches eval ITM >= 0.85 within its 1,000 steps on presets it was not tuned on
(configs/synthetic_worlds.py lists the presets; docs/plateau.md records which were used to
tune `small` and which are held out).

  python benchmarks/presets.py --variant=small --presets=detector,detector_scale \
      --seed=7 --stop_at_goal [--workdir=workdirs/presets] [--config.total_steps=...]

--seed sets both the training seed and the synthetic world's seed (held-out seeds: never
one used in tuning, docs/plateau.md). --stop_at_goal ends a run at its first eval (every
config.eval_every_steps) that reaches --itm_goal. Flags after the known ones pass to the
trainer unchanged.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL_KEYS = ("eval_itm_acc", "eval_msm_acc", "eval_mrm_acc")


def evals(workdir: str) -> list:
  """The eval records of workdir/metrics.jsonl, in step order ([] if none)."""
  from interbert_jax import run_dirs  # pylint: disable=g-import-not-at-top
  if not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
    return []
  return [r for r in run_dirs.read_metrics(workdir) if "eval_itm_acc" in r]


def run_preset(variant, preset, seed, workdir, extra, stop_at=None):
  """One run; with stop_at, it is stopped (SIGTERM: a clean exit) at the first eval whose
  ITM accuracy reaches it. -> its JSON row."""
  if os.path.exists(workdir):
    shutil.rmtree(workdir)
  cmd = [sys.executable, "-m", "interbert_jax.main",
         f"--config={REPO}/configs/pretrain.py:{variant},preset={preset}",
         f"--workdir={workdir}", f"--config.seed={seed}",
         f"--config.data.synthetic.seed={seed}", *extra]
  t0 = time.time()
  goal_step = None
  with open(workdir + ".log", "w") as log:
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    while proc.poll() is None:
      time.sleep(2)
      if stop_at is not None and goal_step is None:
        hit = [r["step"] for r in evals(workdir) if r["eval_itm_acc"] >= stop_at]
        if hit:
          goal_step = hit[0]
          proc.send_signal(signal.SIGTERM)
    rc = proc.returncode
  wall = time.time() - t0
  history = evals(workdir)
  ev = history[-1] if history else {}
  with open(workdir + ".log") as log:
    plateau = [l.strip() for l in log if "ITM plateau" in l]
  return dict(variant=variant, preset=preset, seed=seed, rc=rc, step=ev.get("step"),
              wall_s=round(wall, 1), loadavg_after=round(os.getloadavg()[0], 2),
              **{k: round(ev[k], 4) for k in EVAL_KEYS if k in ev},
              evals=[[r["step"]] + [round(r[k], 4) for k in EVAL_KEYS] for r in history],
              stopped_at_goal=goal_step, plateau_warning=plateau[0] if plateau else None,
              log=workdir + ".log")


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__)
  p.add_argument("--variant", default="small", help="configs/pretrain.py variant")
  p.add_argument("--presets", required=True, help="comma-separated preset names")
  p.add_argument("--seed", type=int, default=0, help="training and world seed")
  p.add_argument("--workdir", default=os.path.join(REPO, "workdirs", "presets"))
  p.add_argument("--itm_goal", type=float, default=0.85)
  p.add_argument("--stop_at_goal", action="store_true",
                 help="stop each run at its first eval with ITM >= --itm_goal (the row "
                      "then holds that eval; `evals` lists every eval as [step, ITM, MSM, "
                      "MRM])")
  args, extra = p.parse_known_args()
  from configs import synthetic_worlds  # pylint: disable=g-import-not-at-top
  presets = args.presets.split(",")
  for name in presets:
    synthetic_worlds.preset_overrides(name)        # unknown names fail before any run
  os.makedirs(args.workdir, exist_ok=True)
  rows = []
  for name in presets:
    print(f"presets: {args.variant} on {name} (seed {args.seed}) ...", file=sys.stderr,
          flush=True)
    row = run_preset(args.variant, name, args.seed,
                     os.path.join(args.workdir, f"{args.variant}_{name}_s{args.seed}"), extra,
                     stop_at=args.itm_goal if args.stop_at_goal else None)
    rows.append(row)
    print(json.dumps(row), flush=True)
  reached = [r["preset"] for r in rows if r.get("eval_itm_acc", 0) >= args.itm_goal]
  print(json.dumps(dict(summary=True, variant=args.variant, seed=args.seed,
                        itm_goal=args.itm_goal, reached_goal=reached,
                        missed_goal=[r["preset"] for r in rows if r["preset"] not in reached],
                        presets=len(rows), cpu=_cpu())), flush=True)
  # A run stopped at its goal exits by SIGTERM (rc -15): a success.
  return 0 if all(r["rc"] == 0 or r["stopped_at_goal"] for r in rows) else 1


def _cpu() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      names = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
    return f"{names[0]} x {len(names)}"
  except (OSError, IndexError):
    return "unknown"


if __name__ == "__main__":
  sys.path.insert(0, REPO)
  sys.exit(main())
