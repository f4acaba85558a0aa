r"""Throughput of the REAL pretraining step, printed as one JSON line.

Runs `interbert_jax.training.train_step.train_step` exactly as `interbert_jax.main` jits it
(mesh from config.mesh, logical-axis rules, state shardings, donation of the state), on a
random batch in the batch contract of docs/design.md, and reports:

  examples_per_s, step_s_median/min   batch / median (min) wall time of one step
  flops_per_example                   matmul FLOPs of forward + backward = 3x forward, heads
                                      as actually computed: MSM at the P = max_msm_targets
                                      positions, or f * P with loss.msm_packing = f
                                      (training/flops.py), MRM at all R regions
  flops_per_example_ref_heads         the same with MSM on all T text positions, as the
                                      PyTorch reference computes it (its "43 GFLOP")
  achieved_gflops, mfu                FLOPs/example x examples/s, over the measured peak
  peak_gflops                         a 2048^3 matmul in the compute dtype, same run/device
  compiled_flops_per_example          XLA's cost_analysis of the compiled step / batch
  peak_mem_bytes                      host RSS high-water mark on CPU, device peak on GPU/TPU
  cpu_s_per_step                      process CPU seconds per step (all threads): less
                                      sensitive than wall time to other jobs on the machine
  params, compile_s, loadavg          load average before/after (noisy shared machines)

  python benchmarks/train_step.py --config=configs/pretrain.py:base --batch=8
  python benchmarks/train_step.py --config=configs/pretrain.py:base --batch=8 --steps=10 \
      --config.model.dtype=bfloat16 --config.data.max_msm_targets=12
  python benchmarks/train_step.py --config=configs/pretrain.py:tiny --batch=8 --steps=3

The batch mirrors the PyTorch peers (benchmarks/peers.sh): full-length captions (all T
tokens real), one MSM span of 9 tokens at text positions 3..11, MRM on regions 1, 9, 17, ..
(every 8th real region), every region real, ITM negatives on every other example.
"""
import json
import os
import resource
import statistics
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import flax.linen as nn  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

import interbert_jax  # pylint: disable=g-import-not-at-top
from interbert_jax.model import count_params  # pylint: disable=g-import-not-at-top
from interbert_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
from interbert_jax.parallel import partitioning  # pylint: disable=g-import-not-at-top
from interbert_jax.training import flops as flops_lib  # pylint: disable=g-import-not-at-top
from interbert_jax.training import optimizer as optimizer_lib  # pylint: disable=g-import-not-at-top
from interbert_jax.training import state as state_lib  # pylint: disable=g-import-not-at-top
from interbert_jax.training import train_step as train_step_lib  # pylint: disable=g-import-not-at-top

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/pretrain.py:base",
    "Config file and variant; override keys with --config.KEY=VALUE "
    "(e.g. --config.model.dtype=bfloat16, --config.data.max_msm_targets=12).")
_BATCH = flags.DEFINE_integer("batch", 8, "Global batch size (examples per step).")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps (the median is reported).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
_PEAK_SIZE = flags.DEFINE_integer(
    "peak_size", 0, "Side of the square matmul that measures the MFU peak; 0 = 2048 on CPU "
    "(the size the peers' README quotes), 8192 on accelerators.")
_SPAN = flags.DEFINE_integer("msm_span", 9, "MSM targets per example (one span at text "
                             "positions 3..3+span-1, as the reference peer).")
_PROFILE_DIR = flags.DEFINE_string(
    "profile_dir", "", "If set, writes a jax.profiler trace of the timed steps there "
    "(open with TensorBoard / Perfetto).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random batch and the init.")

_CLS, _SEP, _MASK = 101, 102, 103


def random_batch(config, batch_size, span, seed=0):
  """A batch-contract dict (docs/design.md) of numpy arrays with the config's shapes."""
  m, d = config.model, config.data
  b, t, r = batch_size, int(d.text_len), int(d.max_regions) + 1
  p = int(d.max_msm_targets) or t
  span = min(span, p, t - 5)
  if span < 1:
    raise ValueError(f"--msm_span={span}: needs text_len >= 6 and max_msm_targets >= 1")
  rng = np.random.default_rng(seed)
  vocab = int(m.vocab_size)
  words = rng.integers(min(1000, vocab // 2), vocab, size=(b, t), dtype=np.int32)
  words[:, 0], words[:, -1] = _CLS % vocab, _SEP % vocab
  text_ids = words.copy()
  msm_positions = np.zeros((b, p), np.int32)
  msm_targets = np.zeros((b, p), np.int32)
  msm_weights = np.zeros((b, p), np.float32)
  pos = np.arange(3, 3 + span)
  msm_positions[:, :span] = pos
  msm_targets[:, :span] = words[:, pos]
  msm_weights[:, :span] = 1.0
  text_ids[:, pos] = _MASK % vocab

  feats = rng.standard_normal((b, r, int(m.feature_dim)), dtype=np.float32)
  mrm_weights = np.zeros((b, r), np.float32)
  mrm_weights[:, 1::8] = 1.0
  feats[mrm_weights > 0] = 0.0
  feats[:, 0] = feats[:, 1:].mean(axis=1)
  locs = rng.random((b, r, 5), dtype=np.float32)
  locs[:, 0] = [0, 0, 1, 1, 1]
  classes = int(m.num_region_classes)
  logits = rng.standard_normal((b, r, classes), dtype=np.float32)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  batch = dict(
      text_ids=text_ids, text_mask=np.ones((b, t), np.int32),
      segment_ids=np.zeros((b, t), np.int32),
      region_features=feats.astype(np.float16), region_locations=locs,
      region_mask=np.ones((b, r), np.int32),
      msm_positions=msm_positions, msm_targets=msm_targets, msm_weights=msm_weights,
      mrm_weights=mrm_weights, mrm_target_probs=probs.astype(np.float16),
      mrm_target_classes=probs.argmax(-1).astype(np.int32),
      itm_labels=(np.arange(b) % 2).astype(np.int32))
  if m.mrm_target == "regress":
    batch["mrm_target_features"] = rng.standard_normal(
        (b, r, int(m.feature_dim)), dtype=np.float32).astype(np.float16)
  return batch


def peak_memory_bytes():
  """Device peak bytes in use where the backend reports it, else the host RSS peak."""
  stats = None
  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    pass
  if stats and "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device_peak_bytes_in_use"
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "host_max_rss"


def _number(x: float):
  return int(x) if float(x).is_integer() else round(x, 2)


def build_step(config, batch_size: int, span: int, seed: int):
  """The trainer's construction on `random_batch`: sharded state from `seed`, then
  training/train_step.py:compile_train_step (donated state, shardings pinned,
  config.loss.msm_packing bound), as interbert_jax.main builds it.

  Returns (compiled step, state, device batch, step rng, compile seconds)."""
  mesh = mesh_lib.create_mesh(config.mesh)
  model = interbert_jax.build_model(config.model)
  opt = optimizer_lib.build_optimizer(config)
  host_batch = random_batch(config, batch_size, span, seed)
  shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in host_batch.items()}
  init_rng, train_rng = jax.random.split(jax.random.key(seed))
  with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.logical_axis_rules()):
    abstract, state_sh = state_lib.abstract_state(model, opt.tx, mesh, init_rng)
    state = state_lib.create_state(model, opt.tx, state_sh, init_rng)
    t0 = time.perf_counter()
    compiled = train_step_lib.compile_train_step(config, model, opt, abstract, state_sh,
                                                 shapes, train_rng, mesh)
    compile_s = time.perf_counter() - t0
  return compiled, state, partitioning.global_batch(host_batch, mesh), train_rng, compile_s


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  with config.unlocked():
    config.batch_size = _BATCH.value
  load_before = os.getloadavg()[0]

  compiled, state, batch, train_rng, compile_s = build_step(config, _BATCH.value,
                                                             _SPAN.value, _SEED.value)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  compiled_flops = float((cost or {}).get("flops", float("nan")))

  def run_step(state):
    state, metrics = compiled(state, batch, train_rng)
    jax.block_until_ready((state, metrics))
    return state, metrics

  for _ in range(_WARMUP.value):
    state, metrics = run_step(state)
  times, cpu_times = [], []
  if _PROFILE_DIR.value:
    jax.profiler.start_trace(_PROFILE_DIR.value, create_perfetto_trace=True)
  for _ in range(_STEPS.value):
    t, c = time.perf_counter(), time.process_time()
    state, metrics = run_step(state)
    times.append(time.perf_counter() - t)
    cpu_times.append(time.process_time() - c)
  if _PROFILE_DIR.value:
    jax.profiler.stop_trace()
  loss = float(metrics["loss"])
  if not np.isfinite(loss):
    raise RuntimeError(f"non-finite loss {loss} in the benchmark step")
  mem, mem_kind = peak_memory_bytes()

  device = jax.local_devices()[0]
  peak_size = _PEAK_SIZE.value or (2048 if device.platform == "cpu" else 8192)
  peak = flops_lib.measure_peak_flops(config.model.dtype, size=peak_size, repeats=10)

  med = statistics.median(times)
  eps = _BATCH.value / med
  fpe = flops_lib.train_flops_per_example(config)
  ref_cfg = config.copy_and_resolve_references()
  with ref_cfg.unlocked():
    ref_cfg.data.max_msm_targets = 0
    ref_cfg.loss.msm_packing = 0.0
  fpe_ref = flops_lib.train_flops_per_example(ref_cfg)
  n_params = count_params(state["params"])
  print(json.dumps({
      "bench": "interbert-jax-train-step", "variant": config.variant,
      "platform": device.platform, "devices": jax.device_count(),
      "dtype": config.model.dtype, "batch": _BATCH.value,
      "text_len": int(config.data.text_len), "regions": int(config.data.max_regions) + 1,
      "msm_positions": _number(flops_lib.msm_head_positions(config)),
      "params": n_params, "loss": round(loss, 4),
      "compile_s": round(compile_s, 2), "steps": _STEPS.value,
      "step_s_median": round(med, 4), "step_s_min": round(min(times), 4),
      "examples_per_s": round(eps, 3),
      "cpu_s_per_step": round(statistics.median(cpu_times), 3),
      "flops_per_example": fpe, "flops_per_example_ref_heads": fpe_ref,
      "compiled_flops_per_example": compiled_flops / _BATCH.value,
      "achieved_gflops": round(fpe * eps / 1e9, 1),
      "peak_gflops": round(peak / 1e9, 1), "peak_matmul": peak_size,
      "mfu": round(fpe * eps / peak, 4),
      "peak_mem_bytes": mem, "peak_mem_kind": mem_kind,
      "loadavg_before": round(load_before, 2), "loadavg_after": round(os.getloadavg()[0], 2),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }), flush=True)


if __name__ == "__main__":
  app.run(main)
