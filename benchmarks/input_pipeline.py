"""Input-pipeline throughput at the base shapes, printed as one JSON line.

Generates a synthetic dataset with the released model's shapes (36 regions x 2048 float16
features, 1601-way cls_prob, text length 36, MSM and MRM masking on) in a temporary
directory (or --data_dir, reused), runs `train_iterator` for the warm-up batches (by
default enough to fill every worker's ring of shared-memory slots once: their first use
pays for fresh pages), then times --batches batches. Prints one JSON line with the CPU
model and the load average.

  python benchmarks/input_pipeline.py --workers=1     # one Grain worker process
  python benchmarks/input_pipeline.py --workers=2     # two
  python benchmarks/input_pipeline.py --threads=2     # no workers: 2 Grain read threads
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")      # the input pipeline runs on the host.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from configs import pretrain  # pylint: disable=g-import-not-at-top
from interbert_jax.data import grain_loader  # pylint: disable=g-import-not-at-top
from interbert_jax.data import pipeline  # pylint: disable=g-import-not-at-top
from interbert_jax.data import synthetic  # pylint: disable=g-import-not-at-top


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--images", type=int, default=2000,
                 help="training images of the synthetic dataset (2 captions each)")
  p.add_argument("--batch", type=int, default=256, help="host batch size (examples)")
  p.add_argument("--warmup", type=int, default=-1,
                 help="batches before timing starts (default: each worker's slot ring "
                      "once, plus 2)")
  p.add_argument("--batches", type=int, default=40, help="timed batches")
  p.add_argument("--threads", type=int, default=0,
                 help="loader threads (config.data.num_threads); 0 = CPU count")
  p.add_argument("--workers", type=int, default=0,
                 help="Grain worker processes (config.data.num_workers); 0 = read threads "
                      "in this process")
  p.add_argument("--prefetch", type=int, default=2, help="config.data.prefetch")
  p.add_argument("--adaptive", action="store_true", help="config.data.adaptive_regions")
  p.add_argument("--data_dir", default="",
                 help="where to write/reuse the dataset (default: a temp dir, removed after)")
  return p.parse_args(argv)


def cpu_seconds():
  """CPU time (user + system) of this process and its live children (loader workers).

  Examples per CPU-second is the per-core throughput even when other jobs share the
  machine, where wall-clock examples/s only measures what the scheduler gave us.
  """
  tick = os.sysconf("SC_CLK_TCK")
  me = os.getpid()

  def stat(pid):
    with open(f"/proc/{pid}/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / tick  # ppid, utime+stime

  total = stat(me)[1]
  for name in os.listdir("/proc"):
    if name.isdigit() and int(name) != me:
      try:
        ppid, t = stat(name)
      except (OSError, IndexError, ValueError):
        continue
      if ppid == me:
        total += t
  return total


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  import platform  # pylint: disable=g-import-not-at-top
  return platform.processor() or platform.machine()


def base_config(args, data_dir):
  c = pretrain.get_config("base")
  c.batch_size = args.batch
  c.data.num_threads = args.threads
  c.data.num_workers = args.workers
  c.data.prefetch = args.prefetch
  c.data.adaptive_regions = args.adaptive
  s = c.data.synthetic
  s.num_train_images = args.images
  s.num_validation_images = 2
  s.num_test_images = 2
  s.fill_regions = c.data.max_regions        # BUTD-style fixed 36 boxes per image.
  s.dir = data_dir
  return c


def main(argv=None):
  args = parse_args(argv)
  tmp = None
  data_dir = args.data_dir
  if not data_dir:
    tmp = tempfile.mkdtemp(prefix="interbert_bench_")
    data_dir = os.path.join(tmp, "data")
  try:
    config = base_config(args, data_dir)
    t0 = time.perf_counter()
    synthetic.ensure_synthetic(config)
    gen_s = time.perf_counter() - t0
    it = pipeline.train_iterator(config)
    warmup = args.warmup
    if warmup < 0:
      warmup = grain_loader.ring_slots(args.prefetch) * max(args.workers, 1) + 2
    load_before = os.getloadavg()[0]
    for _ in range(warmup):
      next(it)
    t0, c0 = time.perf_counter(), cpu_seconds()
    nbytes = 0
    for _ in range(args.batches):
      batch = next(it)
      nbytes += sum(v.nbytes for v in batch.values())
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds() - c0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    eps = args.batches * args.batch / elapsed
    print(json.dumps(dict(
        examples_per_s=round(eps, 1), examples_per_s_per_core=round(eps / cores, 1),
        examples_per_cpu_s=round(args.batches * args.batch / cpu, 1),
        cpu_utilisation=round(cpu / elapsed, 2), cpu_model=cpu_model(),
        load_average_before=round(load_before, 2),
        load_average=round(os.getloadavg()[0], 2), cores=cores, batch=args.batch, batches=args.batches, warmup_batches=warmup,
        threads=0 if args.workers else (args.threads or os.cpu_count()),
        workers=args.workers, batch_mb=round(nbytes / args.batches / 2**20, 1),
        output_mb_per_s=round(nbytes / elapsed / 2**20, 1), images=args.images,
        regions=config.data.max_regions, feature_dim=config.model.feature_dim,
        num_classes=config.model.num_region_classes, text_len=config.data.text_len,
        adaptive_regions=args.adaptive, dataset_generation_s=round(gen_s, 1))))
  finally:
    if tmp:
      shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main()
