r"""Pod scale on paper: per-device memory of the REAL train step under FSDP, compiled ahead
of time for N fake CPU devices (no parameter is ever materialised, no step runs).

For each (variant, N) a subprocess with N fake devices (XLA_FLAGS
--xla_force_host_platform_device_count=N) builds what interbert_jax.main builds (mesh from
config.mesh = data 1, fsdp N, tensor 1; task model; optimizer; abstract train state and its
shardings from the logical-axis rules) and calls the trainer's
`training/train_step.py:compile_train_step` on ShapeDtypeStructs: a global batch of N
examples (1 per device) in the batch contract (data/pipeline.py `batch_spec`, synthetic
feature/class sizes), raw replicated key data as the rng. One JSON line per case:

  state_bytes_total          params + Adam moments + step (sum of leaf nbytes), all devices
  state_bytes_per_device     sum over leaves of sharding.shard_shape(shape) bytes: exact
  ideal_bytes_per_device     state_bytes_total / N
  ratio                      state_bytes_per_device / ideal_bytes_per_device (target <= 1.1)
  argument/output/temp_bytes compiled.memory_analysis() per device; arguments = state +
                             batch + rng (batch_bytes_per_device, rng_bytes given apart)
  compile_s                  wall seconds of lower + compile (the trainer's function)
  vocab_rows                 word-table / MSM-bias rows: 30,522 padded to a multiple of
                             --vocab_pad_multiple (default N, as a pod config sets it)
  replicated_top             the largest leaves NOT split over the devices (ratio culprits)
  replicated_groups          the same summed per kind (over layers, params and Adam moments)

`--scan` adds scan-vs-unrolled cases: `large` compiled with model.scan_layers True and
False at each listed N, and their compile-time ratio. Then a summary JSON line.

  python benchmarks/pod_memory.py --quick                       # tiny, N=8, ~30 s
  python benchmarks/pod_memory.py --variants=base,large --devices=8,64,256 --scan=8
  python benchmarks/pod_memory.py --variants=base --devices=8 --scan=

Compile times are on whatever machine runs it (fake devices share its CPU cores); the
memory numbers do not depend on the machine.
"""
import argparse
import collections
import json
import os
import re
import subprocess
import sys
import time

_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
RATIO_TARGET = 1.1


def _leaf_bytes(shape, dtype) -> int:
  import numpy as np  # pylint: disable=g-import-not-at-top
  return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def state_bytes(abstract, shardings) -> tuple[int, int, list]:
  """(total bytes, exact per-device bytes, [(per-device bytes, path, shape)] of replicated
  leaves, largest first) of an abstract state and its NamedShardings."""
  import jax  # pylint: disable=g-import-not-at-top
  leaves = jax.tree_util.tree_flatten_with_path(abstract)[0]
  shs = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
  total = per_device = 0
  replicated = []
  for (path, leaf), sh in zip(leaves, shs, strict=True):
    full = _leaf_bytes(leaf.shape, leaf.dtype)
    local = _leaf_bytes(sh.shard_shape(leaf.shape), leaf.dtype)
    total += full
    per_device += local
    if local == full and full > 0:
      replicated.append((local, jax.tree_util.keystr(path), list(leaf.shape)))
  return total, per_device, sorted(replicated, reverse=True)


def replicated_groups(replicated: list, top: int = 5) -> list[dict]:
  """Replicated leaves summed over layers and over params / Adam mu / nu, largest first:
  e.g. "text_stream/layer_*/attention/query/bias [12, 64]"."""
  groups, counts = collections.Counter(), collections.Counter()
  for nbytes, path, shape in replicated:
    name = re.sub(r"^\['params'\]|^\['ema_params'\]|^\['opt'\]\[\d+\]\.(mu|nu)", "", path)
    name = re.sub(r"layer_\d+", "layer_*", name.replace("']['", "/").strip("[]'"))
    key = f"{name} {shape}"
    groups[key] += nbytes
    counts[key] += 1
  return [{"leaves": k, "count": counts[k], "bytes": b} for k, b in groups.most_common(top)]


def pod_config(variant: str, num_devices: int, scan_layers: bool | None, vocab_pad: int = 1):
  """configs/pretrain.py:<variant> on a pure-FSDP mesh, a global batch of 1 per device,
  model.vocab_pad_multiple = vocab_pad (0: the fsdp size N)."""
  sys.path.insert(0, _ROOT)
  from configs import pretrain  # pylint: disable=g-import-not-at-top
  config = pretrain.get_config(variant)
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, num_devices, 1
  config.batch_size = num_devices
  if scan_layers is not None:
    config.model.scan_layers = scan_layers
  config.model.vocab_pad_multiple = vocab_pad or num_devices
  return config


def batch_shapes(config, b: int) -> dict:
  """Global ShapeDtypeStructs of the pretraining batch contract (synthetic data sizes)."""
  import jax  # pylint: disable=g-import-not-at-top
  from interbert_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  spec = pipeline.batch_spec(config, b, feature_dim=int(config.model.feature_dim),
                             num_classes=int(config.model.num_region_classes))
  return {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in spec.items()}


def measure_case(variant: str, num_devices: int, scan_layers: bool | None,
                 vocab_pad: int) -> dict:
  """Runs in a process with `num_devices` fake devices: compiles, returns the JSON row."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from interbert_jax import tasks  # pylint: disable=g-import-not-at-top
  from interbert_jax.model import common  # pylint: disable=g-import-not-at-top
  from interbert_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from interbert_jax.parallel import partitioning  # pylint: disable=g-import-not-at-top
  from interbert_jax.training import config_validation  # pylint: disable=g-import-not-at-top
  from interbert_jax.training import optimizer as optimizer_lib  # pylint: disable=g-import-not-at-top
  from interbert_jax.training import state as state_lib  # pylint: disable=g-import-not-at-top
  from interbert_jax.training import train_step as train_step_lib  # pylint: disable=g-import-not-at-top

  assert jax.device_count() == num_devices, (jax.device_count(), num_devices)
  config = pod_config(variant, num_devices, scan_layers, vocab_pad)
  config_validation.validate_config(config, num_devices=num_devices, process_count=1)
  # The same construction as interbert_jax.main (train, _train_loop, init_or_restore).
  mesh = mesh_lib.create_mesh(config.mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.logical_axis_rules()):
    task = tasks.get_task(config)
    model = task.build_model(config)
    opt = optimizer_lib.build_optimizer(config, steps_per_epoch=task.steps_per_epoch(config))
    init_rng = jax.random.key_data(jax.random.key(config.seed))
    repl = partitioning.replicated(mesh)
    rng = jax.ShapeDtypeStruct(init_rng.shape, init_rng.dtype, sharding=repl)
    abstract, state_sh = state_lib.abstract_state(
        model, opt.tx, mesh, rng, inputs=task.init_inputs(config.model),
        ema=config.ema_decay > 0)
    shapes = batch_shapes(config, config.batch_size)
    t0 = time.perf_counter()
    compiled = train_step_lib.compile_train_step(config, model, opt, abstract, state_sh,
                                                 shapes, rng, mesh, task=task)
    compile_s = time.perf_counter() - t0
  memory = compiled.memory_analysis()
  total, per_device, replicated = state_bytes(abstract, state_sh)
  batch_sh = partitioning.batch_sharding(mesh)
  batch_local = sum(_leaf_bytes(batch_sh.shard_shape(s.shape), s.dtype) for s in shapes.values())
  ideal = total / num_devices
  return {
      "case": "memory", "variant": variant, "devices": num_devices,
      "mesh": dict(mesh.shape), "scan_layers": bool(config.model.scan_layers),
      "vocab_pad_multiple": int(config.model.vocab_pad_multiple),
      "vocab_rows": common.vocab_rows(config.model),
      "global_batch": config.batch_size, "examples_per_device": config.batch_size // num_devices,
      "state_bytes_total": total, "state_bytes_per_device": per_device,
      "ideal_bytes_per_device": round(ideal), "ratio": round(per_device / ideal, 4),
      "ratio_uses": "state_bytes_per_device (exact, from shard_shape)",
      "argument_bytes": int(memory.argument_size_in_bytes),
      "output_bytes": int(memory.output_size_in_bytes),
      "temp_bytes": int(memory.temp_size_in_bytes),
      "batch_bytes_per_device": batch_local, "rng_bytes": _leaf_bytes(rng.shape, rng.dtype),
      "compile_s": round(compile_s, 2),
      "replicated_leaves": len(replicated),
      "replicated_bytes_per_device": sum(r[0] for r in replicated),
      "replicated_top": [{"path": p, "shape": s, "bytes": b} for b, p, s in replicated[:5]],
      "replicated_groups": replicated_groups(replicated),
  }


def run_case(variant: str, num_devices: int, scan_layers: bool | None, timeout_s: float,
             vocab_pad: int):
  """One case in a fresh subprocess with `num_devices` fake CPU devices -> its JSON row."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=" ".join(flags + [f"--xla_force_host_platform_device_count={num_devices}"]),
             PYTHONPATH=os.pathsep.join([_ROOT, os.environ.get("PYTHONPATH", "")]))
  cmd = [sys.executable, os.path.abspath(__file__), "--_case",
         f"{variant},{num_devices},{'' if scan_layers is None else int(scan_layers)},"
         f"{vocab_pad}"]
  t0 = time.perf_counter()
  try:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s,
                          check=False)
  except subprocess.TimeoutExpired:
    return {"case": "memory", "variant": variant, "devices": num_devices,
            "error": f"timed out after {timeout_s:.0f} s"}
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode or not lines:
    return {"case": "memory", "variant": variant, "devices": num_devices,
            "error": f"exit {proc.returncode}: {proc.stderr.strip()[-600:]}"}
  row = json.loads(lines[-1])
  row["process_s"] = round(time.perf_counter() - t0, 1)
  return row


def _ints(text: str) -> list[int]:
  return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv):
  p = argparse.ArgumentParser(
      description="Per-device train-state memory and compile time of the real pretraining "
      "step under pure FSDP (mesh data=1, fsdp=N, tensor=1), compiled ahead of time for N "
      "fake CPU devices (abstract shapes: nothing is materialised). Prints one JSON line "
      "per case, then a summary line.",
      epilog="Examples: --quick | --variants=base,large --devices=8,64,256 --scan=8")
  p.add_argument("--variants", default="base,large",
                 help="configs/pretrain.py variants, comma-separated (tiny, base, large).")
  p.add_argument("--devices", default="8,64,256",
                 help="fake device counts N, comma-separated; global batch = N (1 per device).")
  p.add_argument("--scan_layers", choices=("config", "true", "false"), default="config",
                 help="model.scan_layers of the memory cases (config: the variant's, False).")
  p.add_argument("--scan", default="8",
                 help="device counts at which `large` is compiled with scan_layers True and "
                 "False to compare compile time ('' = skip).")
  p.add_argument("--scan_variant", default="large", help="variant of the scan comparison.")
  p.add_argument("--vocab_pad_multiple", type=int, default=0,
                 help="model.vocab_pad_multiple of every case: 0 (default) pads the "
                 "vocabulary to a multiple of the fsdp size N, as a pod config would; 1 = "
                 "the released 30,522 rows, which no fsdp size > 2 divides.")
  p.add_argument("--quick", action="store_true",
                 help="tiny variant, N=8, no scan comparison (~30 s): what tests/test_pod_memory.py runs.")
  p.add_argument("--timeout", type=float, default=1800,
                 help="seconds allowed per case (its subprocess is killed after).")
  p.add_argument("--_case", default="", help=argparse.SUPPRESS)
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  if args._case:   # pylint: disable=protected-access
    variant, n, scan, pad = args._case.split(",")   # pylint: disable=protected-access
    print(json.dumps(measure_case(variant, int(n), None if scan == "" else bool(int(scan)),
                                  int(pad))), flush=True)
    return
  if args.quick:
    args.variants, args.devices, args.scan = "tiny", "8", ""
  scan_layers = {"config": None, "true": True, "false": False}[args.scan_layers]
  rows, done = [], {}   # done: (variant, N, scan_layers) -> row, compiled once
  for variant in args.variants.split(","):
    for n in _ints(args.devices):
      rows.append(run_case(variant, n, scan_layers, args.timeout, args.vocab_pad_multiple))
      print(json.dumps(rows[-1]), flush=True)
      scan = pod_config(variant, n, scan_layers).model.scan_layers
      done[(variant, n, bool(scan))] = rows[-1]
  scans = []
  for n in _ints(args.scan):
    pair = {}
    for scan in (True, False):
      row = done.get((args.scan_variant, n, scan))
      if row is None:   # not already among the memory cases
        row = dict(run_case(args.scan_variant, n, scan, args.timeout,
                            args.vocab_pad_multiple), case="scan_vs_unrolled")
        print(json.dumps(row), flush=True)
      pair[scan] = row
    both = all("compile_s" in r for r in pair.values())
    scans.append({"variant": args.scan_variant, "devices": n,
                  "scan_compile_s": pair[True].get("compile_s"),
                  "unrolled_compile_s": pair[False].get("compile_s"),
                  "scan_over_unrolled": (round(pair[True]["compile_s"] /
                                               pair[False]["compile_s"], 3) if both else None)})
  ok = [r for r in rows if "ratio" in r]
  print(json.dumps({
      "summary": "pod_memory", "platform": "cpu (fake devices)", "cpu_count": os.cpu_count(),
      "cases": len(rows), "failed": [f"{r['variant']}/{r['devices']}" for r in rows
                                     if "ratio" not in r],
      "max_ratio": max((r["ratio"] for r in ok), default=None),
      "all_within_target": bool(ok) and all(r["ratio"] <= RATIO_TARGET for r in ok),
      "ratio_target": RATIO_TARGET,
      "table": [{k: r[k] for k in ("variant", "devices", "vocab_rows", "state_bytes_per_device",
                                   "ideal_bytes_per_device", "ratio", "argument_bytes",
                                   "temp_bytes", "compile_s")} for r in ok],
      "scan_vs_unrolled": scans}), flush=True)


if __name__ == "__main__":
  main()
