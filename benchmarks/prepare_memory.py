r"""Peak memory of `interbert_jax.data.prepare` on a synthetic BUTD TSV.

  python benchmarks/prepare_memory.py [--images=10000] [--boxes=36] [--feature_dim=2048]
      [--num_classes=1601] [--workdir=workdirs/prepare_memory] [--keep]

Writes an --images-line BUTD TSV (base64 float32 boxes, features and cls_prob, written
streaming so the generator itself stays small) and a captions JSONL into a temp dir, runs
prepare in a subprocess, and prints one JSON line
{images, input_bytes, output_bytes, peak_rss_mb, seconds, images_per_s}.
peak_rss_mb is the child's maximum resident set (getrusage RUSAGE_CHILDREN ru_maxrss, and
psutil polling as a cross-check); prepare streams, so it must not grow with --images
(target: < 1 GB at 10,000 images of 36 x 2048 features).
"""
import argparse
import base64
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ["a", "man", "dog", "riding", "wave", "on", "top", "of", "the", "beach", "red",
         "car", "street", "two", "people", "sitting", "bench", "park"]


def write_inputs(workdir, images, boxes, feature_dim, num_classes, seed=0):
  """Streams the TSV, captions and a tiny vocab; returns (tsv, captions, vocab) paths."""
  rng = np.random.default_rng(seed)
  vocab = os.path.join(workdir, "vocab.txt")
  with open(vocab, "w") as f:
    f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + WORDS) + "\n")
  # A few random blocks reused with a per-image offset: realistic sizes without spending
  # minutes in the random generator.
  feats = rng.random((8, boxes, feature_dim), dtype=np.float32) * 10
  probs = rng.random((8, boxes, num_classes), dtype=np.float32)
  probs /= probs.sum(-1, keepdims=True)
  tsv = os.path.join(workdir, "features.tsv")
  caps = os.path.join(workdir, "captions.jsonl")
  with open(tsv, "w") as f, open(caps, "w") as c:
    for i in range(images):
      w, h = 640, 480
      xy = rng.uniform(0, 300, (boxes, 2)).astype(np.float32)
      wh = rng.uniform(10, 170, (boxes, 2)).astype(np.float32)
      b = np.concatenate([xy, xy + wh], 1)
      cols = [f"{i:08d}", str(w), str(h), str(boxes),
              base64.b64encode(b.tobytes()).decode(),
              base64.b64encode((feats[i % 8] + i * 1e-3).tobytes()).decode(),
              base64.b64encode(probs[i % 8].tobytes()).decode()]
      f.write("\t".join(cols) + "\n")
      text = " ".join(rng.choice(WORDS, rng.integers(5, 15)))
      c.write(json.dumps({"image_id": f"{i:08d}", "caption": text + "."}) + "\n")
  return tsv, caps, vocab


def run_prepare(tsv, caps, vocab, out_dir):
  """Runs prepare as a subprocess; returns (seconds, peak RSS MB, polled RSS MB, stdout)."""
  import psutil
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
  cmd = [sys.executable, "-m", "interbert_jax.data.prepare", "--format=butd_tsv",
         f"--features={tsv}", f"--captions={caps}", f"--output_dir={out_dir}",
         f"--vocab={vocab}", "--log_every=2000"]
  start = time.time()
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  ps = psutil.Process(proc.pid)
  polled = 0
  while proc.poll() is None:
    try:
      polled = max(polled, ps.memory_info().rss)
    except psutil.Error:
      pass
    time.sleep(0.05)
  out = proc.stdout.read()
  seconds = time.time() - start
  if proc.returncode:
    raise SystemExit(f"prepare failed ({proc.returncode}):\n{out}")
  # Linux reports ru_maxrss in KiB.
  peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
  return seconds, peak, polled / 2**20, out


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--images", type=int, default=10_000)
  p.add_argument("--boxes", type=int, default=36)
  p.add_argument("--feature_dim", type=int, default=2048)
  p.add_argument("--num_classes", type=int, default=1601)
  p.add_argument("--workdir", default="", help="Where to write (default: a temp dir).")
  p.add_argument("--keep", action="store_true", help="Keep the input and output files.")
  args = p.parse_args()
  workdir = args.workdir or tempfile.mkdtemp(prefix="prepare_memory_")
  os.makedirs(workdir, exist_ok=True)
  try:
    t = time.time()
    tsv, caps, vocab = write_inputs(workdir, args.images, args.boxes, args.feature_dim,
                                    args.num_classes)
    gen_seconds = time.time() - t
    out_dir = os.path.join(workdir, "prepared")
    seconds, peak, polled, log = run_prepare(tsv, caps, vocab, out_dir)
    sys.stderr.write(log)
    output_bytes = sum(os.path.getsize(os.path.join(d, f))
                       for d, _, fs in os.walk(out_dir) for f in fs)
    print(json.dumps({
        "images": args.images, "input_bytes": os.path.getsize(tsv),
        "output_bytes": output_bytes, "peak_rss_mb": round(peak, 1),
        "peak_rss_polled_mb": round(polled, 1), "seconds": round(seconds, 1),
        "images_per_s": round(args.images / seconds, 1),
        "input_write_seconds": round(gen_seconds, 1)}))
  finally:
    if not args.keep:
      shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
  main()
