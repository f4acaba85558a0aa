r"""One check of a machine, accelerator or not, printed as one JSON line (ok: true | false).

  bash benchmarks/accelerator_check.sh            # what a new GPU / TPU host should run first
  python benchmarks/accelerator_check.py --small  # the CPU form CI runs (tests/)

In order, each part a subprocess of the project's own commands:
  devices      platform, device kind and count, the datasheet peak when the chip is known
               (training/flops.py DATASHEET_BF16_PEAK)
  train_step   benchmarks/train_step.py: the real jitted `base` step in bf16 -> examples/s,
               step time, peak memory, MFU against the datasheet peak (CPU: against the
               measured matmul)
  input        benchmarks/input_pipeline.py at the same batch (base shapes: 36 regions x
               2048 features, 1601 classes, text 36) -> examples/s
  resume       the trainer on synthetic data (200 steps) with an early checkpoint, `kill -9`
               once it is committed, the same command again: it must resume at the
               checkpoint, and the losses both runs logged after it must be equal
               (deterministic GPU ops)
  retrieval    benchmarks/retrieval_eval.py -> scored pairs/s
On an accelerator the model is `base`; on CPU (or --small) `tiny` and fewer steps, so the
whole check stays within a few minutes on 2 cores. Exit 0 when every part passed.
"""
import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, env=None, timeout=600):
  """Runs `python args...` in the repo -> (the JSON of its last stdout line, seconds)."""
  t0 = time.perf_counter()
  proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env or _env(),
                        capture_output=True, text=True, timeout=timeout)
  seconds = round(time.perf_counter() - t0, 1)
  if proc.returncode != 0:
    raise RuntimeError(f"{' '.join(args[:3])} exited {proc.returncode}: "
                       f"{proc.stderr.strip().splitlines()[-1:] or ['']}")
  lines = [l for l in proc.stdout.strip().splitlines() if l.startswith("{")]
  return (json.loads(lines[-1]) if lines else {}), seconds


def _env(**extra):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
  env.update(extra)
  return env


def devices() -> dict:
  code = ("import json, jax; from interbert_jax.training import flops; d = jax.devices(); "
          "k = getattr(d[0], 'device_kind', ''); print(json.dumps(dict(platform=d[0].platform, "
          "device_kind=k, count=len(d), processes=jax.process_count(), "
          "datasheet_bf16_peak=flops.datasheet_peak(k))))")
  return _run(["-c", code])[0]


def train_step(variant: str, batch: int, steps: int, peak) -> dict:
  out, seconds = _run(["benchmarks/train_step.py", f"--config=configs/pretrain.py:{variant}",
                       f"--batch={batch}", f"--steps={steps}", "--warmup=2",
                       "--config.model.dtype=bfloat16"])
  keep = ("variant", "dtype", "batch", "examples_per_s", "step_s_median", "compile_s",
          "achieved_gflops", "peak_mem_bytes", "peak_mem_kind", "params", "loss")
  result = {k: out[k] for k in keep if k in out}
  if peak:
    result["mfu_datasheet"] = round(out["achieved_gflops"] * 1e9 / peak, 4)
  else:   # CPU: no datasheet; the matmul measured in the same run
    result["mfu_measured_matmul"] = out["mfu"]
    result["peak_gflops_measured"] = out["peak_gflops"]
  result["seconds"] = seconds
  return result


def input_pipeline(batch: int, images: int, batches: int) -> dict:
  out, seconds = _run(["benchmarks/input_pipeline.py", f"--batch={batch}",
                       f"--images={images}", f"--batches={batches}", "--warmup=2"])
  keep = ("examples_per_s", "examples_per_cpu_s", "cores", "batch", "regions", "feature_dim")
  return dict({k: out[k] for k in keep if k in out}, seconds=seconds)


def _losses(workdir: str) -> list[tuple[int, float]]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = [json.loads(l) for l in f if l.strip()]
  return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def resume(variant: str, steps: int, ckpt_step: int, log_every: int, batch: int,
           timeout: float = 400) -> dict:
  """kill -9 once the step-`ckpt_step` checkpoint is committed (and a later step logged),
  then the same command: it must resume there and log the same losses as the killed run."""
  env = _env(XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                        " --xla_gpu_deterministic_ops=true").strip())
  with tempfile.TemporaryDirectory(prefix="accelerator_check_") as tmp:
    workdir = os.path.join(tmp, "run")
    committed = os.path.join(workdir, "checkpoints", str(ckpt_step))   # orbax renames on commit
    cmd = [sys.executable, "-m", "interbert_jax.main",
           f"--config=configs/pretrain.py:{variant}", f"--workdir={workdir}",
           f"--config.total_steps={steps}", f"--config.checkpoint_every_steps={ckpt_step}",
           f"--config.log_every_steps={log_every}", "--config.eval_every_steps=0",
           "--config.model.dtype=bfloat16", f"--config.batch_size={batch}",
           # A small synthetic world of the variant's shapes (base: 2,000 images, ~0.5 GB).
           "--config.data.synthetic.num_train_images=2000",
           "--config.data.synthetic.num_validation_images=16",
           "--config.data.synthetic.num_test_images=16",
           f"--config.data.synthetic.dir={os.path.join(tmp, 'data')}"]
    t0 = time.perf_counter()
    with open(os.path.join(tmp, "first.log"), "w") as log:
      first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log)
      # The checkpoint is saved asynchronously: wait for its commit, and for two logged
      # steps after it (both runs then log them), leaving most of the run to be killed.
      while not (os.path.isdir(committed)
                 and any(s >= ckpt_step + 2 * log_every for s, _ in _losses(workdir))):
        if first.poll() is not None or time.perf_counter() - t0 > timeout:
          first.kill()
          raise RuntimeError(f"the first run ended (rc {first.returncode}) or timed out "
                             f"before checkpoint {ckpt_step} was committed and a later step "
                             f"logged: {open(log.name).read()[-500:]}")
        time.sleep(0.05)
      first.send_signal(signal.SIGKILL)
      first.wait()
    before = dict(_losses(workdir))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
      raise RuntimeError(f"the resumed run exited {proc.returncode}: {proc.stderr[-500:]}")
    rows = _losses(workdir)
    after = dict(rows[len(before):])   # the resumed run's rows, appended
    common = sorted(set(before) & set(after))
    # Resumed, not restarted: its first logged step follows the checkpoint (a restart from 0
    # would log the same, deterministic losses from the start).
    resumed = bool(after) and min(after) == ckpt_step + log_every
    equal = resumed and bool(common) and all(before[s] == after[s] for s in common)
    return dict(variant=variant, steps=steps, checkpoint_step=ckpt_step,
                killed_after_step=max(before), resumed_at_step=min(after) if after else None,
                compared_steps=common, losses_equal=equal,
                seconds=round(time.perf_counter() - t0, 1))


def retrieval(variant: str, blocks: int, block_images: int, block_captions: int) -> dict:
  out, seconds = _run(["benchmarks/retrieval_eval.py", f"--config=configs/pretrain.py:{variant}",
                       "--config.model.dtype=bfloat16", f"--blocks={blocks}",
                       f"--block_images={block_images}", f"--block_captions={block_captions}"])
  keep = ("pairs_per_s", "block_s_median", "block_images", "block_captions", "compile_s")
  return dict({k: out[k] for k in keep if k in out}, seconds=seconds)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--small", action="store_true",
                 help="the CPU form (tiny model, few steps) even on an accelerator")
  args = p.parse_args(argv)
  t0 = time.perf_counter()
  report = {"check": "interbert-jax-accelerator-check", "host": platform.node(),
            "cpu": platform.processor() or platform.machine(),
            "loadavg_before": round(os.getloadavg()[0], 2)}
  ok = True
  try:
    report["devices"] = devices()
  except Exception as e:  # pylint: disable=broad-except
    report["devices"] = {"error": str(e)}
    print(json.dumps(dict(report, ok=False)), flush=True)
    return 1
  small = args.small or report["devices"]["platform"] == "cpu"
  peak = report["devices"].get("datasheet_bf16_peak")
  parts = {
      "train_step": lambda: train_step("tiny", 32, 5, peak) if small
      else train_step("base", 256, 20, peak),
      "input": lambda: input_pipeline(32, 128, 4) if small else input_pipeline(256, 4096, 20),
      "resume": lambda: (resume("tiny", 200, 20, 5, 32) if small
                         else resume("base", 200, 50, 10, 64)),
      "retrieval": lambda: retrieval("tiny", 3, 4, 16) if small else retrieval("base", 5, 16, 64),
  }
  for name, part in parts.items():
    try:
      report[name] = part()
      if name == "resume" and not report[name]["losses_equal"]:
        ok = False
    except Exception as e:  # pylint: disable=broad-except  (reported, the check goes on)
      report[name] = {"error": str(e)[-600:]}
      ok = False
  report.update(mode="small" if small else "full", ok=ok,
                seconds=round(time.perf_counter() - t0, 1),
                loadavg_after=round(os.getloadavg()[0], 2))
  print(json.dumps(report), flush=True)
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
