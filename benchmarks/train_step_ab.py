r"""Interleaved in-process A/B of the real pretraining step: does a config change speed it up?

Builds the trainer's step (`training/train_step.py:compile_train_step`: mesh, shardings,
donation) on `benchmarks/train_step.py`'s random batch once
for the base config and once per `--variant`, then times them in turns: step of A, step of
B, step of A, ... so that load changes on a shared machine hit every variant alike. Prints
one JSON line: per variant the median / min step seconds, the change against the base
(`rel_median` < 1 = faster) and the last loss (equal losses = same numerics to print
precision).

  python benchmarks/train_step_ab.py --config=configs/pretrain.py:base --batch=8 \
      --variant=optimizer.fused_clipping=True --steps=10
  python benchmarks/train_step_ab.py --config=configs/pretrain.py:base \
      --variant=data.max_msm_targets=18 --variant=data.max_msm_targets=9

A variant is one or more KEY=VALUE overrides of the config, comma-separated (values parsed
as Python literals where they parse: True, 18, 1e-4, 'str'). --config, --batch, --steps,
--msm_span and --seed are those of benchmarks/train_step.py (--steps: timed steps per
variant, after one untimed step each).
"""
import ast
import json
import os
import statistics
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # pylint: disable=g-import-not-at-top

from benchmarks import train_step as bench  # pylint: disable=g-import-not-at-top

# --config, --batch, --steps, --msm_span and --seed are train_step.py's flags (imported above).
_CONFIG, _BATCH, _STEPS = bench._CONFIG, bench._BATCH, bench._STEPS  # pylint: disable=protected-access
_VARIANTS = flags.DEFINE_multi_string(
    "variant", [], "KEY=VALUE[,KEY=VALUE...] overrides of the base config: one B per flag.")


def _parse(text: str) -> dict:
  out = {}
  for item in filter(None, text.split(",")):
    if "=" not in item:
      raise app.UsageError(f"--variant={text!r}: {item!r} is not KEY=VALUE")
    key, value = item.split("=", 1)
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass
    out[key.strip()] = value
  return out


def _with(config, overrides: dict):
  config = config.copy_and_resolve_references()
  for key, value in overrides.items():
    node = config
    *path, leaf = key.split(".")
    for part in path:
      node = node[part]
    if leaf not in node:
      raise app.UsageError(f"--variant: {key} is not a config key")
    node[leaf] = value
  return config


def build(config, batch_size: int):
  """(compiled step, state, device batch, rng) for `config`: train_step.py's `build_step`
  (the trainer's own `compile_train_step`) on its random batch."""
  with config.unlocked():
    config.batch_size = batch_size
  return bench.build_step(config, batch_size, bench._SPAN.value, bench._SEED.value)[:4]  # pylint: disable=protected-access


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _VARIANTS.value:
    raise app.UsageError("give at least one --variant=KEY=VALUE to compare with the base")
  names = ["base"] + list(_VARIANTS.value)
  configs = [_CONFIG.value] + [_with(_CONFIG.value, _parse(v)) for v in _VARIANTS.value]
  runs = {}
  for name, config in zip(names, configs):
    print(f"compiling {name} ...", file=sys.stderr, flush=True)
    runs[name] = list(build(config, _BATCH.value))
  load_before = os.getloadavg()[0]
  times = {n: [] for n in names}
  last_loss = {}
  for i in range(_STEPS.value + 1):
    for name in names:
      compiled, state, batch, rng = runs[name]
      t = time.perf_counter()
      state, metrics = compiled(state, batch, rng)
      jax.block_until_ready(state)
      if i:                                          # step 0 of each variant is untimed
        times[name].append(time.perf_counter() - t)
      runs[name][1] = state
      last_loss[name] = float(metrics["loss"])
    print(f"round {i}/{_STEPS.value}", file=sys.stderr, flush=True)
  base = statistics.median(times["base"])
  print(json.dumps({
      "bench": "interbert-jax-train-step-ab", "variant": _CONFIG.value.variant,
      "batch": _BATCH.value, "steps": _STEPS.value,
      "results": [{"name": n, "step_s_median": round(statistics.median(times[n]), 4),
                   "step_s_min": round(min(times[n]), 4),
                   "rel_median": round(statistics.median(times[n]) / base, 4),
                   "loss": round(last_loss[n], 6)} for n in names],
      "loadavg_before": round(load_before, 2), "loadavg_after": round(os.getloadavg()[0], 2),
  }), flush=True)


if __name__ == "__main__":
  app.run(main)
