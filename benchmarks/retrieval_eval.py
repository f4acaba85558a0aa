r"""Throughput of retrieval scoring (evaluation/retrieval.py BlockScorer), one JSON line.

Scores blocks of `--block_images` images x `--block_captions` captions with the model of
--config (random init: the speed does not depend on the weights) exactly as
`python -m interbert_jax.evaluate retrieval` does (pairs sharded over all devices on the
data axis, images and captions replicated), and reports:

  pairs_per_s, block_s_median/min    pairs per block / median (min) wall time of one block
  flops_per_pair                     analytic forward matmul FLOPs to the ITM logits
                                     (training/flops.py itm_flops_per_pair)
  achieved_gflops, mfu               FLOPs/pair x pairs/s, over the measured peak x devices
  peak_gflops                        a 2048^3 (CPU) / 8192^3 matmul in the compute dtype
  compile_s, devices, loadavg        load average before/after (noisy shared machines)

  python benchmarks/retrieval_eval.py                                    # base, fp32, CPU
  python benchmarks/retrieval_eval.py --block_images=16 --block_captions=64 \
      --config.model.dtype=bfloat16                                      # an accelerator

Shapes: --text_len tokens per caption (Flickr30K captions padded to the longest are ~40),
--regions real regions + the global token per image (BUTD: 36).
"""
import json
import os
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
from interbert_jax.evaluation import common  # pylint: disable=g-import-not-at-top
from interbert_jax.evaluation import retrieval  # pylint: disable=g-import-not-at-top
from interbert_jax.evaluation import retrieval_data  # pylint: disable=g-import-not-at-top
from interbert_jax.model import dummy_inputs  # pylint: disable=g-import-not-at-top
from interbert_jax.parallel import partitioning  # pylint: disable=g-import-not-at-top
from interbert_jax.training import flops as flops_lib  # pylint: disable=g-import-not-at-top

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/pretrain.py:base", "Config file and variant (its model is scored).")
_BLOCK_IMAGES = flags.DEFINE_integer("block_images", 2, "Images per block.")
_BLOCK_CAPTIONS = flags.DEFINE_integer("block_captions", 8, "Captions per block.")
_BLOCKS = flags.DEFINE_integer("blocks", 3, "Timed blocks (the median is reported).")
_TEXT_LEN = flags.DEFINE_integer("text_len", 36, "Tokens per caption incl. [CLS]/[SEP].")
_REGIONS = flags.DEFINE_integer("regions", 36, "Real regions per image (+1 global token).")


def random_split(m, num_images, num_captions, text_len, regions, seed=0):
  """A RetrievalSplit of random features and full-length random captions."""
  rng = np.random.default_rng(seed)
  r = regions + 1
  locs = rng.random((num_images, r, 5), dtype=np.float32)
  locs[:, 0] = [0, 0, 1, 1, 1]
  return retrieval_data.RetrievalSplit(
      images=dict(region_features=rng.standard_normal(
                      (num_images, r, int(m.feature_dim))).astype(np.float16),
                  region_locations=locs, region_mask=np.ones((num_images, r), np.int32)),
      captions=dict(text_ids=rng.integers(1000 % int(m.vocab_size), int(m.vocab_size),
                                          (num_captions, text_len), dtype=np.int32),
                    text_mask=np.ones((num_captions, text_len), np.int32)),
      caption_image=(np.arange(num_captions) % num_images).astype(np.int32),
      image_ids=[str(i) for i in range(num_images)])


def main(argv):
  del argv
  config = _CONFIG.value
  m = config.model
  load_before = os.getloadavg()
  mesh = common.data_parallel_mesh()
  model = interbert_jax.build_model(m)
  params = nn.unbox(jax.jit(lambda: model.init(jax.random.key(0), **dummy_inputs(m)),
                            out_shardings=partitioning.replicated(mesh))()["params"])
  split = random_split(m, _BLOCK_IMAGES.value, _BLOCK_CAPTIONS.value, _TEXT_LEN.value,
                       _REGIONS.value)
  with jax.set_mesh(mesh):
    scorer = retrieval.BlockScorer(model, mesh, partitioning.replicated(mesh),
                                   block_images=_BLOCK_IMAGES.value,
                                   block_captions=_BLOCK_CAPTIONS.value)
    t0 = time.perf_counter()
    scorer(params, split, 0, 0)                       # compile + first block
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(_BLOCKS.value):
      t0 = time.perf_counter()
      scorer(params, split, 0, 0)
      times.append(time.perf_counter() - t0)
  pairs = scorer.pairs_per_block
  flops = flops_lib.itm_flops_per_pair(m, _TEXT_LEN.value, _REGIONS.value + 1)
  peak = flops_lib.measure_peak_flops(m.dtype, size=2048 if jax.devices()[0].platform == "cpu"
                                      else 8192)
  block_s = statistics.median(times)
  pairs_per_s = pairs / block_s
  print(json.dumps(dict(
      variant=config.variant, dtype=m.dtype, devices=jax.device_count(),
      platform=jax.devices()[0].platform, block_images=scorer.block_images,
      block_captions=scorer.block_captions, text_len=_TEXT_LEN.value,
      regions=_REGIONS.value + 1, pairs_per_s=round(pairs_per_s, 2),
      block_s_median=round(block_s, 4), block_s_min=round(min(times), 4),
      flops_per_pair=flops, achieved_gflops=round(flops * pairs_per_s / 1e9, 2),
      peak_gflops=round(peak / 1e9, 2),
      mfu=round(flops * pairs_per_s / (peak * jax.device_count()), 4),
      compile_s=round(compile_s, 1), loadavg_before=load_before[0],
      loadavg_after=os.getloadavg()[0])))


if __name__ == "__main__":
  app.run(main)
