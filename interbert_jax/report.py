r"""A sweep's results: one markdown table, the same as CSV, and a PNG of the eval curves.

  python -m interbert_jax.report workdirs/paper [--output=workdirs/paper/report.md]

writes report.md, report.csv and report.png (the names of --output with .csv / .png) and
prints the table. One row per run, every run of DIR/sweep.json and every other directory of
DIR holding a metrics.jsonl or overrides.json; unstarted, unfinished and failed runs are
rows too (interbert_jax/run_dirs.py says how each state is detected). Columns:

  run, overrides that differ from the base config (the sweep's config with its --set keys),
  steps done / total, status, final train loss (mean of the last log window), eval MSM /
  MRM / ITM accuracy and zero-shot retrieval R@1/5/10 (eval_ir_r*, eval_tr_r*) of the
  last eval record, the step of that eval, median examples/s of the log windows, wall time
  (sum of the sweep's attempts). --at_step=N takes loss and evals at step N instead.

A value a run did not log is "—"; the report lists the metrics no run logged.
"""
import csv
import json
import math
import os
import statistics

from absl import app
from absl import flags

from interbert_jax import cli
from interbert_jax import config_files
from interbert_jax import errors
from interbert_jax import overrides as overrides_lib
from interbert_jax import run_dirs

DASH = "—"
EVAL_KEYS = ("eval_msm_acc", "eval_mrm_acc", "eval_itm_acc")
RETRIEVAL_KEYS = ("eval_ir_r1", "eval_ir_r5", "eval_ir_r10",
                  "eval_tr_r1", "eval_tr_r5", "eval_tr_r10")
CURVES = (("eval_itm_acc", "eval ITM accuracy"), ("eval_msm_acc", "eval MSM accuracy"),
          ("eval_mrm_acc", "eval MRM accuracy"), ("loss", "train loss"))
CSV_FIELDS = ("run", "status", "status_reason", "overrides", "steps_done", "total_steps",
              "final_train_loss", "eval_step", *EVAL_KEYS, *RETRIEVAL_KEYS,
              "examples_per_sec", "wall_s")


class ReportError(errors.UserError, ValueError):
  pass


# ----------------------------------------------------------------------------- collect

def run_names(root: str) -> list[str]:
  """The sweep's runs in its order, then any other run directories of root, sorted."""
  if not os.path.isdir(root):
    raise ReportError(f"{root}: no such directory")
  names = list(run_dirs.read_json(os.path.join(root, run_dirs.MANIFEST_FILE), {})
               .get("runs", []))
  for n in sorted(os.listdir(root)):
    d = os.path.join(root, n)
    if n not in names and os.path.isdir(d) and any(
        os.path.exists(os.path.join(d, f))
        for f in ("metrics.jsonl", run_dirs.OVERRIDES_FILE, "config.json")):
      names.append(n)
  if not names:
    raise ReportError(f"{root}: no runs (no sweep.json and no directory with metrics.jsonl)")
  return names


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


_BASES = {}


def _base(spec: str, common: dict):
  key = (spec, json.dumps(common, sort_keys=True))
  if key not in _BASES:
    try:
      _BASES[key] = overrides_lib.apply(config_files.load_config(spec), common)
    except Exception:  # pylint: disable=broad-except  (a config file we cannot load here)
      _BASES[key] = None
  return _BASES[key]


def _overrides(workdir: str, base_spec: str | None) -> dict | None:
  record = run_dirs.read_json(os.path.join(workdir, run_dirs.OVERRIDES_FILE))
  if record is not None:
    base = _base(record["config"], record.get("set", {}))
    own = record.get("overrides", {})
    return overrides_lib.differing(own, base) if base is not None else own
  config = run_dirs.read_json(os.path.join(workdir, "config.json"))
  if config is None or not base_spec:
    return None
  base = _base(base_spec, {})
  return None if base is None else overrides_lib.differing(_flatten(config), base)


def collect(root: str, base_spec: str | None = None, at_step: int = 0) -> list[dict]:
  """One dict per run (the CSV fields, numbers as floats or None).

  at_step > 0: the train loss and eval values are those logged at exactly that step.
  """
  rows = []
  for name in run_names(root):
    workdir = os.path.join(root, name)
    record = run_dirs.read_json(os.path.join(workdir, run_dirs.OVERRIDES_FILE), {})
    config = run_dirs.read_json(os.path.join(workdir, "config.json"), {})
    total = record.get("total_steps") or config.get("total_steps")
    metrics = run_dirs.read_metrics(workdir)
    train = [r for r in metrics if "loss" in r]
    evals = [r for r in metrics if any(k.startswith("eval_") for k in r)]
    ckpts = run_dirs.checkpoint_steps(workdir)
    done = max([r["step"] for r in train] + ckpts[-1:] + [0])
    if not os.path.isdir(workdir):
      status, reason = run_dirs.UNFINISHED, "not started"
    elif total is None:
      status, reason = run_dirs.UNFINISHED, "no total_steps (no overrides.json/config.json)"
    else:
      status, reason = run_dirs.run_status(workdir, total)
    if at_step:
      evals = [r for r in evals if r["step"] == at_step]
      train_at = [r for r in train if r["step"] == at_step]
    else:
      train_at = train
    last_eval = evals[-1] if evals else {}
    rates = [r["examples_per_sec"] for r in train if r.get("examples_per_sec")]
    walls = [a["wall_s"] for a in run_dirs.attempts(workdir) if a.get("wall_s") is not None]
    row = dict(run=name, status=status, status_reason=reason,
               overrides=_overrides(workdir, base_spec), steps_done=done, total_steps=total,
               final_train_loss=train_at[-1].get("loss") if train_at else None,
               eval_step=last_eval.get("step"),
               examples_per_sec=statistics.median(rates) if rates else None,
               wall_s=sum(walls) if walls else None, curves=metrics)
    for k in EVAL_KEYS + RETRIEVAL_KEYS:
      row[k] = last_eval.get(k)
    rows.append(row)
  return rows


# ----------------------------------------------------------------------------- write

def _num(v, digits=3) -> str:
  if v is None or (isinstance(v, float) and not math.isfinite(v)):
    return DASH
  return f"{v:.{digits}f}"


def _wall(s) -> str:
  if s is None:
    return DASH
  s = int(round(s))
  return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _overrides_text(o) -> str:
  if o is None:
    return DASH
  if not o:
    return "(base)"
  return ", ".join(f"{k}={overrides_lib.flag_value(v)}" for k, v in o.items())


def _triple(row, prefix) -> str:
  vals = [row[f"{prefix}{k}"] for k in ("1", "5", "10")]
  return DASH if all(v is None for v in vals) else "/".join(_num(v) for v in vals)


def markdown_table(rows: list[dict]) -> str:
  head = ("run", "overrides", "steps", "status", "train loss", "eval MSM", "eval MRM",
          "eval ITM", "IR R@1/5/10", "TR R@1/5/10", "eval at", "ex/s", "wall")
  lines = ["| " + " | ".join(head) + " |",
           "|" + "|".join(["---"] * 4 + ["---:"] * 4 + ["---", "---", "---:", "---:", "---:"])
           + "|"]
  for r in rows:
    status = r["status"] + (f" ({r['status_reason']})" if r["status_reason"] else "")
    steps = f"{r['steps_done']}/{r['total_steps'] if r['total_steps'] is not None else '?'}"
    cells = (r["run"], _overrides_text(r["overrides"]).replace("|", "\\|"), steps,
             status.replace("|", "\\|"), _num(r["final_train_loss"]),
             *(_num(r[k]) for k in EVAL_KEYS), _triple(r, "eval_ir_r"),
             _triple(r, "eval_tr_r"), DASH if r["eval_step"] is None else str(r["eval_step"]),
             _num(r["examples_per_sec"], 0), _wall(r["wall_s"]))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def missing_metrics(rows: list[dict]) -> list[str]:
  return [k for k in EVAL_KEYS + RETRIEVAL_KEYS if all(r[k] is None for r in rows)]


def write_csv(rows: list[dict], path: str) -> None:
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
      out = {k: ("" if r[k] is None else r[k]) for k in CSV_FIELDS}
      out["overrides"] = "" if r["overrides"] is None else json.dumps(r["overrides"],
                                                                      sort_keys=True)
      w.writerow(out)


def write_figure(rows: list[dict], path: str, title: str) -> None:
  """One panel per curve (eval ITM / MSM / MRM accuracy, train loss), one line per run."""
  import matplotlib  # pylint: disable=g-import-not-at-top  (slow; only the figure needs it)
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
  colors = plt.get_cmap("tab10" if len(rows) <= 10 else "tab20").colors
  for ax, (key, label) in zip(axes.flat, CURVES):
    for i, r in enumerate(rows):
      pts = [(m["step"], m[key]) for m in r["curves"] if m.get(key) is not None]
      if not pts:
        continue
      style = "-" if r["status"] == run_dirs.FINISHED else "--"
      name = r["run"] + ("" if r["status"] == run_dirs.FINISHED else f" ({r['status']})")
      ax.plot(*zip(*pts), style, color=colors[i % len(colors)], marker="." if len(pts) < 30
              else None, label=name)
    ax.set_title(label)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  handles, labels = [], []
  for ax in axes.flat:
    for h, l in zip(*ax.get_legend_handles_labels()):
      if l not in labels:
        handles.append(h)
        labels.append(l)
  if handles:
    fig.legend(handles, labels, loc="outside right center", fontsize=9)
  fig.suptitle(title)
  fig.savefig(path, dpi=100)
  plt.close(fig)


def report(root: str, output: str | None = None, base_spec: str | None = None,
           at_step: int = 0) -> dict:
  """Writes the markdown, CSV and PNG; returns {"rows", "markdown", "paths"}."""
  rows = collect(root, base_spec, at_step)
  output = output or os.path.join(root, "report.md")
  stem = output[:-3] if output.endswith(".md") else output
  paths = {"md": output, "csv": stem + ".csv", "png": stem + ".png"}
  manifest = run_dirs.read_json(os.path.join(root, run_dirs.MANIFEST_FILE), {})
  records = [run_dirs.read_json(os.path.join(root, r["run"], run_dirs.OVERRIDES_FILE))
             for r in rows]
  commons = {json.dumps(rec.get("set", {}), sort_keys=True) for rec in records if rec}
  text = [f"# Sweep report: {root}", ""]
  if manifest:
    text += [f"Base config `{manifest.get('config')}`, sweep `{manifest.get('sweep')}`.", ""]
  if len(commons) == 1 and commons != {"{}"}:
    common = json.loads(commons.pop())
    text.append("Every run also sets (`--set`): " + ", ".join(
        f"`{k}={overrides_lib.flag_value(v)}`" for k, v in common.items()) + ".")
    text.append("")
  counts = {s: sum(r["status"] == s for r in rows)
            for s in (run_dirs.FINISHED, run_dirs.UNFINISHED, run_dirs.FAILED)}
  text += [f"{len(rows)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + ".", ""]
  if at_step:
    text += [f"Train loss and evals at step {at_step} (`--at_step`); steps and status are "
             "each run's own.", ""]
  text.append(markdown_table(rows))
  missing = missing_metrics(rows)
  if missing:
    text.append("Not logged by any run (shown as —): " + ", ".join(f"`{k}`" for k in missing)
                + ".")
  text += ["", f"Eval curves: `{os.path.basename(paths['png'])}`; table as CSV: "
           f"`{os.path.basename(paths['csv'])}`.", ""]
  markdown = "\n".join(text)
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  with open(paths["md"], "w") as f:
    f.write(markdown)
  write_csv(rows, paths["csv"])
  write_figure(rows, paths["png"], f"{os.path.basename(os.path.normpath(root))}: {len(rows)} "
               "runs (dashed: not finished)")
  return {"rows": rows, "markdown": markdown, "paths": paths}


def _define_flags():
  """The CLI's flags, defined only when run as a program (the module is also a library,
  and absl flags are process-global)."""
  flags.DEFINE_string("output", None, "Markdown file; default DIR/report.md. The "
                      "CSV and PNG go beside it (.csv, .png).")
  flags.DEFINE_integer(
      "at_step", 0, "Compare the runs at this step: train loss and eval of the records at "
      "exactly this step (an eval step, e.g. 500) instead of each run's last ones. Runs that "
      "share total_steps share the learning-rate schedule, so their evals at one step compare "
      "even while some are unfinished.")
  flags.DEFINE_string("base", None, "Base config (e.g. configs/pretrain.py:tiny) for "
                      "runs without overrides.json: the overrides column then lists "
                      "how their config.json differs from it.")


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: python -m interbert_jax.report DIR [--output=FILE.md]")
  # ReportError (a UserError): one line, exit 2 (cli.run).
  out = report(argv[1], flags.FLAGS.output, flags.FLAGS.base, flags.FLAGS.at_step)
  print(out["markdown"])
  print("wrote " + ", ".join(out["paths"].values()))


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
