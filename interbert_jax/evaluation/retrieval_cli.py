"""`python -m interbert_jax.evaluate retrieval`: zero-shot or fine-tuned image-text retrieval.

Scores every image x every caption of --split (or the first --max_images images and
--max_captions of their captions), sharded over all devices of all processes. With
--output=FILE.json the finished blocks of the score matrix are kept in FILE.json.blocks/,
so the same command after a kill -9 continues where it stopped and prints the same JSON,
bit for bit (same devices and flags; a different run there is an error).
"""
from __future__ import annotations

import os

from interbert_jax.evaluation import block_store
from interbert_jax.evaluation import common
from interbert_jax.evaluation import retrieval
from interbert_jax.evaluation import retrieval_data


def add_arguments(parser) -> None:
  parser.add_argument("--max_images", type=int, default=0,
                      help="Rank only the first N images of the split (0 = all).")
  parser.add_argument("--max_captions", type=int, default=0,
                      help="... and the first M of their captions (0 = all).")
  parser.add_argument("--max_regions", type=int, default=0,
                      help="Regions kept per image, in stored order (0 = all).")
  parser.add_argument("--block_images", type=int, default=16,
                      help="Images per scored block (pairs per block = images x captions).")
  parser.add_argument("--block_captions", type=int, default=64,
                      help="Captions per scored block (rounded up to fill the devices).")


def run(args) -> dict:
  """-> the result dict (metrics in percent, chance, sizes); None-free, deterministic."""
  import jax
  for flag in ("max_images", "max_captions", "max_regions"):
    if getattr(args, flag) < 0:
      raise common.EvaluationError(f"--{flag}={getattr(args, flag)}: must be >= 0")
  if not args.data:
    raise common.EvaluationError("--data=DIR is required for retrieval (a prepared dataset, "
                                 "e.g. python -m interbert_jax.data.synthetic --task=retrieval)")
  if args.block_images < 1 or args.block_captions < 1:
    raise common.EvaluationError("--block_images and --block_captions must be >= 1")
  mesh = common.data_parallel_mesh()
  model, params, model_config = common.load_for_eval(args.checkpoint, mesh, args.dtype)
  split = retrieval_data.load_split(
      args.data, args.split, max_images=args.max_images, max_captions=args.max_captions,
      max_regions=args.max_regions, max_text_len=int(model_config.max_position_embeddings))
  with jax.set_mesh(mesh):
    scorer = retrieval.BlockScorer(model, mesh, jax.tree.map(lambda x: x.sharding, params),
                                   block_images=args.block_images,
                                   block_captions=args.block_captions)
    n, m = len(split.image_ids), len(split.caption_image)
    store = None
    if args.output:
      store = block_store.BlockStore(args.output + ".blocks", dict(
          checkpoint=os.path.abspath(args.checkpoint), params_sha256=common.fingerprint(params),
          data=os.path.abspath(args.data), split=args.split, images=n, captions=m,
          text_len=split.captions["text_ids"].shape[1],
          regions=split.images["region_mask"].shape[1], dtype=args.dtype,
          block_images=scorer.block_images, block_captions=scorer.block_captions,
          devices=jax.device_count()))
    scores = retrieval.score_matrix(scorer, params, split, store=store)
  if scores is None:   # Not process 0.
    return {}
  result = dict(task="retrieval", checkpoint=args.checkpoint, data=args.data,
                split=args.split, dtype=args.dtype, images=n, captions=m)
  result.update(retrieval.recall_metrics(scores, split.caption_image))
  result.update(retrieval.chance(n, split.caption_image))
  return result
