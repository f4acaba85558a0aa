"""Image-text retrieval: every image x every caption scored with P(match), then R@K.

  match_probability  pure: params, images [I, ...] x captions [C, ...] -> P(match) [I, C]
                     = softmax(itm_logits)[0] (class 0 = matched), as the reference ranks
  recall_metrics     pure: the score matrix [N, M] -> ir_r1/5/10, tr_r1/5/10, rsum (percent)
  BlockScorer        match_probability jitted over a mesh: the I*C pairs of a block are
                     sharded over the data (x fsdp) axis, images and captions replicated
  score_matrix       all blocks of a split, skipping those a BlockStore already holds,
                     with a progress line (pairs/s, ETA)
  RetrievalEvaluator the trainer's zero-shot retrieval on the first N eval images

Ranking (ViLBERT / InterBERT eval_retrieval, UNITER, SCAN): image retrieval ranks, for each
caption, all images by score; its rank is the position of its own image. Text retrieval
ranks, for each image, all captions; its rank is the best position of any of its captions.
Ties are broken by index (a stable descending sort), so the result is exact and
deterministic. R@K = percent of queries with rank < K; RSUM = the sum of the six.
"""
from __future__ import annotations

import functools
import logging
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from interbert_jax.evaluation import retrieval_data
from interbert_jax.parallel import partitioning
from interbert_jax.training import metrics as metrics_lib

KS = (1, 5, 10)
METRICS = tuple(f"{d}_r{k}" for d in ("ir", "tr") for k in KS) + ("rsum",)


# ----------------------------------------------------------------------------- pure

def match_probability(params, images: dict, captions: dict, *, model,
                      pair_sharding=None) -> jax.Array:
  """P(match) float32 [I, C] of every image of `images` with every caption of `captions`.

  Args:
    images: region_features [I, R, F], region_locations [I, R, 5], region_mask [I, R].
    captions: text_ids [C, T], text_mask [C, T].
    pair_sharding: optional sharding of the flattened [I*C, ...] pairs (inside jit).
  """
  num_i, num_c = images["region_mask"].shape[0], captions["text_ids"].shape[0]

  def pairs(x, of_images):
    x = jnp.repeat(x, num_c, axis=0) if of_images else jnp.tile(
        x, (num_i,) + (1,) * (x.ndim - 1))
    if pair_sharding is not None:
      x = jax.lax.with_sharding_constraint(x, pair_sharding)
    return x

  out = model.apply(
      {"params": params}, pairs(captions["text_ids"], False), pairs(captions["text_mask"], False),
      pairs(images["region_features"], True), pairs(images["region_locations"], True),
      pairs(images["region_mask"], True), deterministic=True)
  p = jax.nn.softmax(out["itm_logits"].astype(jnp.float32), axis=-1)[:, 0]
  return p.reshape(num_i, num_c)


def _positions(scores: np.ndarray) -> np.ndarray:
  """Position of each column in its row's stable descending order, int [Q, K]."""
  order = np.argsort(-scores, axis=1, kind="stable")
  pos = np.empty_like(order)
  np.put_along_axis(pos, order, np.arange(scores.shape[1])[None], axis=1)
  return pos


def ranks(scores: np.ndarray, caption_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(image-retrieval rank per caption [M], text-retrieval rank per image [N]; 0 = top).

  scores [N, M]: P(match) of image n and caption m; caption_image [M] its image. Images
  without a caption get text rank -1 (no query).
  """
  scores = np.asarray(scores)
  m = np.arange(scores.shape[1])
  ir = _positions(scores.T)[m, caption_image]
  caption_pos = _positions(scores)                    # [N, M]
  tr = np.full(scores.shape[0], np.iinfo(np.int64).max)
  np.minimum.at(tr, caption_image, caption_pos[caption_image, m])
  tr[tr == np.iinfo(np.int64).max] = -1
  return ir, tr


def recall_metrics(scores: np.ndarray, caption_image: np.ndarray) -> dict:
  """{ir_r1, ir_r5, ir_r10, tr_r1, tr_r5, tr_r10, rsum} in percent (float64)."""
  ir, tr = ranks(scores, caption_image)
  tr = tr[tr >= 0]
  out = {}
  for name, r in (("ir", ir), ("tr", tr)):
    for k in KS:
      out[f"{name}_r{k}"] = 100.0 * float(np.mean(r < k))
  out["rsum"] = float(sum(out[k] for k in METRICS[:-1]))
  return out


def chance(num_images: int, caption_image: np.ndarray) -> dict:
  """R@1 of random scores in percent: 1/N for images; |captions of i| / M for text."""
  per_image = np.bincount(caption_image, minlength=num_images)
  per_image = per_image[per_image > 0]
  return dict(chance_ir_r1=100.0 / num_images,
              chance_tr_r1=100.0 * float(np.mean(per_image / len(caption_image))))


# ----------------------------------------------------------------------------- sharded

class BlockScorer:
  """(params, image block, caption block) -> P(match) [bi, bc] numpy, on every device.

  Block shapes are fixed (one compilation): the last blocks are padded with empty images
  / captions and cut. block_captions is rounded up so that bi*bc pairs split evenly over
  the mesh's data x fsdp devices. Call it on every process (the arrays are global).
  """

  def __init__(self, model, mesh, params_sharding, *, block_images: int, block_captions: int):
    shards = int(np.prod([mesh.shape[a] for a in ("data", "fsdp")]))
    step = shards // math.gcd(block_images, shards)
    self.block_images = int(block_images)
    self.block_captions = int(-(-block_captions // step) * step)
    self.mesh = mesh
    self._score = jax.jit(
        functools.partial(match_probability, model=model,
                          pair_sharding=partitioning.batch_sharding(mesh)),
        in_shardings=(params_sharding, partitioning.replicated(mesh),
                      partitioning.replicated(mesh)),
        out_shardings=partitioning.replicated(mesh))

  @property
  def pairs_per_block(self) -> int:
    return self.block_images * self.block_captions

  def _padded(self, tree: dict, start: int, size: int) -> dict:
    def one(x):
      block = np.zeros((size,) + x.shape[1:], x.dtype)
      part = x[start:start + size]
      block[:len(part)] = part
      return partitioning.replicate(block, self.mesh)
    return {k: one(v) for k, v in tree.items()}

  def __call__(self, params, split, image_block: int, caption_block: int) -> np.ndarray:
    i0, c0 = image_block * self.block_images, caption_block * self.block_captions
    p = self._score(params, self._padded(split.images, i0, self.block_images),
                    self._padded(split.captions, c0, self.block_captions))
    p = np.asarray(jax.device_get(p))
    n_i = min(self.block_images, split.images["region_mask"].shape[0] - i0)
    n_c = min(self.block_captions, split.captions["text_ids"].shape[0] - c0)
    return p[:n_i, :n_c]

  def grid(self, split) -> tuple[int, int]:
    """(image blocks, caption blocks) of a split."""
    return (-(-split.images["region_mask"].shape[0] // self.block_images),
            -(-split.captions["text_ids"].shape[0] // self.block_captions))


def _eta(seconds: float) -> str:
  s = int(seconds)
  return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"


def score_matrix(scorer: BlockScorer, params, split, *, store=None,
                 log_every_seconds: float = 10.0) -> np.ndarray | None:
  """The full P(match) matrix float32 [N, M] (process 0; None on the others).

  `store` (a BlockStore or None) keeps finished blocks: those it holds are read, not
  computed, and new ones are written as they finish (resumable after kill -9).
  """
  gi, gc = scorer.grid(split)
  blocks = [(a, b) for a in range(gi) for b in range(gc)]
  done = store.done(blocks) if store is not None else np.zeros(len(blocks), bool)
  todo = [blk for blk, d in zip(blocks, done) if not d]
  n, m = split.images["region_mask"].shape[0], split.captions["text_ids"].shape[0]
  logging.info("retrieval: %d images x %d captions = %d pairs in %d blocks of %d x %d "
               "(%d already done)", n, m, n * m, len(blocks), scorer.block_images,
               scorer.block_captions, len(blocks) - len(todo))
  progress = metrics_lib.Progress(len(todo), 0, scorer.pairs_per_block)
  last = time.perf_counter()
  out = np.zeros((n, m), np.float32) if jax.process_index() == 0 else None
  for k, (a, b) in enumerate(todo):
    p = scorer(params, split, a, b)
    if store is not None:
      store.put((a, b), p)
    if out is not None:
      out[a * scorer.block_images:][:p.shape[0], b * scorer.block_captions:][:, :p.shape[1]] = p
    if time.perf_counter() - last >= log_every_seconds or k + 1 == len(todo):
      rates = progress.update(k + 1)
      logging.info("retrieval: %d/%d blocks | %.0f pairs/s | ETA %s", k + 1, len(todo),
                   rates["examples_per_sec"], _eta(rates["eta_seconds"]))
      last = time.perf_counter()
  if out is not None and store is not None:
    for (a, b), d in zip(blocks, done):
      if d:
        p = store.get((a, b))
        out[a * scorer.block_images:][:p.shape[0], b * scorer.block_captions:][:, :p.shape[1]] = p
  return out


# ----------------------------------------------------------------------------- trainer

class RetrievalEvaluator:
  """params -> {eval_ir_r1, ..., eval_tr_r10} on the first N images of the eval split.

  Built once by the trainer (loads the images and captions, compiles on first call);
  every process calls it; the scalars are the same on all.
  """

  def __init__(self, config, model, mesh, params_sharding, *, block_images: int = 16,
               block_captions: int = 64):
    from interbert_jax.data import pipeline
    self.split = retrieval_data.load_split(
        pipeline.data_dir(config), config.data.eval_split,
        max_images=int(config.eval_retrieval_images),
        max_regions=int(config.data.max_regions),
        max_text_len=int(config.model.max_position_embeddings))
    self.scorer = BlockScorer(model, mesh, params_sharding, block_images=block_images,
                              block_captions=block_captions)

  def __call__(self, params) -> dict:
    scores = score_matrix(self.scorer, params, self.split, log_every_seconds=math.inf)
    scores = multihost_broadcast(scores, self.split)
    metrics = recall_metrics(scores, self.split.caption_image)
    logging.info("retrieval eval (%d images x %d captions): %s", len(self.split.image_ids),
                 len(self.split.caption_image),
                 " ".join(f"{k}={v:.1f}" for k, v in metrics.items()))
    return {f"eval_{k}": v for k, v in metrics.items() if k != "rsum"}


def multihost_broadcast(scores, split) -> np.ndarray:
  """Process 0's score matrix on every process (identity on one process)."""
  if jax.process_count() == 1:
    return scores
  from jax.experimental import multihost_utils
  shape = (split.images["region_mask"].shape[0], split.captions["text_ids"].shape[0])
  local = scores if scores is not None else np.zeros(shape, np.float32)
  return np.asarray(multihost_utils.broadcast_one_to_all(local))
