"""`python -m interbert_jax.report` on hand-written run directories: a finished run, a run
that exited non-zero, one whose log ends in a traceback, an interrupted one and one that
never started. Every run is a row; missing metrics are — and named."""
import csv
import json
import os
import subprocess
import sys

from interbert_jax import report
from interbert_jax import run_dirs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/pretrain.py:tiny"


def _train(step, loss, eps=100.0):
  return {"step": step, "loss": loss, "itm_acc": 0.5, "learning_rate": 1e-3,
          "examples_per_sec": eps}


def _eval(step, itm, **extra):
  return {"step": step, "eval_loss": 1.0, "eval_msm_acc": 0.7, "eval_mrm_acc": 0.6,
          "eval_itm_acc": itm, **extra}


def _make_run(root, name, *, own=None, metrics=(), ckpts=(), attempts=(), log=None):
  d = os.path.join(root, name)
  os.makedirs(d)
  run_dirs.write_json(os.path.join(d, "overrides.json"), {
      "config": CONFIG, "overrides": own or {}, "set": {"total_steps": 4}, "total_steps": 4})
  with open(os.path.join(d, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(m) + "\n" for m in metrics)
  for s in ckpts:
    os.makedirs(os.path.join(d, "checkpoints", str(s)))
  if attempts:
    run_dirs.write_json(os.path.join(d, "sweep_status.json"), {"attempts": list(attempts)})
  if log is not None:
    with open(os.path.join(d, "train.log"), "w") as f:
      f.write(log)


def _sweep_dir(root):
  run_dirs.write_json(os.path.join(root, "sweep.json"), {
      "config": CONFIG, "sweep": "s.py:grid",
      "runs": ["good", "crashed", "traceback", "stopped", "never"]})
  _make_run(root, "good", own={"model.fusion": "sum", "data.seed": 0},   # seed 0 = base
            metrics=[_train(2, 3.0, 90.0), _eval(2, 0.6), _train(4, 2.5, 110.0),
                     _eval(4, 0.75, eval_ir_r1=0.1, eval_ir_r5=0.3, eval_ir_r10=0.5)],
            ckpts=(2, 4), attempts=[{"returncode": 0, "wall_s": 61.0}],
            log="[sweep] attempt 1\nI... checkpoint 4 started (final)\n")
  _make_run(root, "crashed", own={"optimizer.learning_rate": 1e30},
            metrics=[_train(2, 3.0), {"step": 3, "loss": None}], ckpts=(2,),
            attempts=[{"returncode": 1, "wall_s": 20.0}],
            log="[sweep] attempt 1\nerror: non-finite loss (nan) at step 3: stopping.\n")
  _make_run(root, "traceback", metrics=[_train(2, 3.1)],
            log="[sweep] attempt 1\nTraceback (most recent call last):\n  File x\n"
                "ValueError: boom\n")
  _make_run(root, "stopped", metrics=[_train(2, 3.2)], ckpts=(2,),
            attempts=[{"returncode": None, "wall_s": None}],
            log="[sweep] attempt 1\nI... step 2/4\n")


def test_report_rows_statuses_and_files(tmp_path):
  root = str(tmp_path / "sweep")
  os.makedirs(root)
  _sweep_dir(root)
  out = report.report(root)
  rows = {r["run"]: r for r in out["rows"]}
  assert list(rows) == ["good", "crashed", "traceback", "stopped", "never"]   # none dropped
  assert rows["good"]["status"] == "finished"
  assert rows["crashed"]["status"] == "failed" and rows["crashed"]["status_reason"] == "exit code 1"
  assert (rows["traceback"]["status"], rows["traceback"]["status_reason"]) == (
      "failed", "ValueError: boom")
  assert rows["stopped"]["status"] == "unfinished"
  assert (rows["never"]["status"], rows["never"]["status_reason"]) == ("unfinished",
                                                                       "not started")
  assert rows["good"]["overrides"] == {"model.fusion": "sum"}   # data.seed=0 is the base
  assert rows["good"]["final_train_loss"] == 2.5 and rows["good"]["eval_itm_acc"] == 0.75
  assert rows["good"]["examples_per_sec"] == 100.0 and rows["good"]["wall_s"] == 61.0

  md = out["markdown"]
  assert ("| good | model.fusion=sum | 4/4 | finished | 2.500 | 0.700 | 0.600 | 0.750 | "
          "0.100/0.300/0.500 | — | 4 | 100 | 1m01s |") in md
  assert "| crashed | optimizer.learning_rate=1e+30 | 3/4 | failed (exit code 1) | — |" in md
  assert "| never | — | 0/? | unfinished (not started) |" in md
  assert "| traceback | (base) | 2/4 | failed (ValueError: boom) | 3.100 | — |" in md
  assert "Every run also sets (`--set`): `total_steps=4`." in md
  assert "5 runs: 1 finished, 2 unfinished, 2 failed." in md
  assert ("Not logged by any run (shown as —): `eval_tr_r1`, `eval_tr_r5`, `eval_tr_r10`."
          in md)
  assert open(os.path.join(root, "report.md")).read() == md

  with open(os.path.join(root, "report.csv")) as f:
    table = list(csv.DictReader(f))
  assert [r["run"] for r in table] == list(rows)
  assert table[0]["eval_ir_r5"] == "0.3" and table[0]["eval_tr_r1"] == ""
  assert json.loads(table[0]["overrides"]) == {"model.fusion": "sum"}
  at2 = {r["run"]: r for r in report.report(root, str(tmp_path / "at2.md"), at_step=2)["rows"]}
  assert at2["good"]["eval_itm_acc"] == 0.6 and at2["good"]["final_train_loss"] == 3.0
  assert at2["good"]["eval_ir_r1"] is None and at2["stopped"]["final_train_loss"] == 3.2
  assert at2["good"]["steps_done"] == 4 and at2["good"]["eval_step"] == 2
  with open(os.path.join(root, "report.png"), "rb") as f:
    png = f.read()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_cli_writes_to_output_and_fails_cleanly(tmp_path):
  root = str(tmp_path / "sweep")
  os.makedirs(root)
  _sweep_dir(root)
  env = dict(os.environ, PYTHONPATH=REPO)
  out = str(tmp_path / "out" / "r.md")
  proc = subprocess.run([sys.executable, "-m", "interbert_jax.report", root,
                         f"--output={out}"], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "| good | model.fusion=sum | 4/4 | finished |" in proc.stdout
  assert all(os.path.exists(str(tmp_path / "out" / f)) for f in ("r.md", "r.csv", "r.png"))
  proc = subprocess.run([sys.executable, "-m", "interbert_jax.report", str(tmp_path / "no")],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and "no such directory" in proc.stderr
  assert "Traceback" not in proc.stderr
