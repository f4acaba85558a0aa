r"""A pretraining recipe on named synthetic worlds: eval ITM / MSM / MRM and wall time each.

Runs `python -m interbert_jax.main --config=configs/pretrain.py:VARIANT,preset=P` once per
preset, one after another (each run has the machine to itself, so its wall time is what a
user gets), and prints one JSON line per preset and a summary line. The recipe's issue-8
goal: `small` reaches eval ITM >= 0.85 within 20 minutes on presets it was not tuned on
(configs/synthetic_worlds.py lists the presets; docs/plateau.md records which were used to
tune `small` and which are held out).

  python benchmarks/presets.py --variant=small --presets=one_box,flat_detector,templates \
      --seed=1 [--workdir=workdirs/presets] [--config.total_steps=...]

--seed sets both the training seed and the synthetic world's seed (held-out seeds: the
recipe was tuned with seed 0). Flags after the known ones pass to the trainer unchanged.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL_KEYS = ("eval_itm_acc", "eval_msm_acc", "eval_mrm_acc")


def last_eval(workdir: str) -> dict:
  """The last eval record of workdir/metrics.jsonl ({} if none)."""
  from interbert_jax import run_dirs  # pylint: disable=g-import-not-at-top
  evals = [r for r in run_dirs.read_metrics(workdir) if "eval_itm_acc" in r]
  return evals[-1] if evals else {}


def run_preset(variant, preset, seed, workdir, extra):
  if os.path.exists(workdir):
    shutil.rmtree(workdir)
  cmd = [sys.executable, "-m", "interbert_jax.main",
         f"--config={REPO}/configs/pretrain.py:{variant},preset={preset}",
         f"--workdir={workdir}", f"--config.seed={seed}",
         f"--config.data.synthetic.seed={seed}", *extra]
  t0 = time.time()
  with open(workdir + ".log", "w") as log:
    rc = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
  wall = time.time() - t0
  ev = last_eval(workdir)
  return dict(variant=variant, preset=preset, seed=seed, rc=rc, step=ev.get("step"),
              wall_s=round(wall, 1), loadavg_after=round(os.getloadavg()[0], 2),
              **{k: round(ev[k], 4) for k in EVAL_KEYS if k in ev}, log=workdir + ".log")


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__)
  p.add_argument("--variant", default="small", help="configs/pretrain.py variant")
  p.add_argument("--presets", required=True, help="comma-separated preset names")
  p.add_argument("--seed", type=int, default=0, help="training and world seed")
  p.add_argument("--workdir", default=os.path.join(REPO, "workdirs", "presets"))
  p.add_argument("--itm_goal", type=float, default=0.85)
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
                     os.path.join(args.workdir, f"{args.variant}_{name}_s{args.seed}"), extra)
    rows.append(row)
    print(json.dumps(row), flush=True)
  reached = [r["preset"] for r in rows
             if r.get("eval_itm_acc", 0) >= args.itm_goal and r["wall_s"] <= 1200]
  print(json.dumps(dict(summary=True, variant=args.variant, seed=args.seed,
                        itm_goal=args.itm_goal, reached_within_20_min=reached,
                        presets=len(rows), cpu=_cpu())), flush=True)
  return 0 if all(r["rc"] == 0 for r in rows) else 1


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
