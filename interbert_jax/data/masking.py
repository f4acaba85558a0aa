"""InterBERT's masking and region preprocessing as pure numpy functions
(docs/reference_notes.md, Model facts 2).

Every function takes an explicit `np.random.Generator`; the pipeline derives one per
example from (data.seed, epoch, global position), so masks are reproducible and do not
depend on thread scheduling.

Facts from the reference loader (black4321/InterBERT,
`bertmodel/datasets/concept_cap_dataset.py`, `random_word` / `random_region` / `iou_numpy`),
which these functions follow:
- Span MSM: the caption (already truncated to text_len - 2) is masked only when
  int(0.3 n) > 0, i.e. n >= 4. With k spans the caption is cut into k segments of
  r = n // k tokens; span i starts uniformly in [i r, (i+1) r] (INCLUSIVE, so with one span
  the start can be n, which masks nothing: probability 1/(n+1)), its length is uniform in
  [1, r] (inclusive) and it is clipped at the caption's end.
- Every target token: 80% [MASK], 10% a token drawn uniformly from the whole vocabulary,
  10% unchanged; all targets are predicted.
- Token MSM (the non-span path): each token independently with p = 0.15, then 80/10/10.
- IoU MRM: IoU of the boxes with the "+1 pixel" convention (areas (x2-x1+1)(y2-y1+1)),
  each real region is an anchor with p = 0.1 and every region with IoU >= 0.4 to an anchor
  (the anchor itself included) has its feature zeroed; locations are kept; the zeroed
  regions are the targets.
- Independent MRM (non-span path): each region with p = 0.15 is a target; 90% of targets
  are zeroed, 10% kept unchanged.
- Location: [x1/W, y1/H, x2/W, y2/H, (x2-x1)(y2-y1)/(W H)] (no +1 here).
- Global image token: sum of the (already MRM-masked) region features / number of real
  regions, location [0, 0, 1, 1, 1], always attended, never masked.
"""
from __future__ import annotations

import numpy as np

GLOBAL_LOCATION = np.array([0.0, 0.0, 1.0, 1.0, 1.0], np.float32)

MSM_STRATEGIES = ("span", "token")              # allowed config.data.msm.strategy
MRM_STRATEGIES = ("iou", "independent")         # allowed config.data.mrm.strategy


# ----------------------------------------------------------------------------- text (MSM)

def span_target_mask(rng: np.random.Generator, n: int, *, num_spans: int = 1,
                     max_span_frac: float = 0.0, min_len: int = 4) -> np.ndarray:
  """Reference span masking of a caption of n tokens.

  Returns bool [n]: True where the token is an MSM target. Captions with n < min_len are
  not masked. `max_span_frac` > 0 caps every span's length at max(1, floor(frac * n)).
  """
  targets = np.zeros((n,), bool)
  if n < max(min_len, 1) or num_spans < 1:
    return targets
  r = n // num_spans
  if r < 1:
    return targets
  max_len = r
  if max_span_frac > 0:
    max_len = min(r, max(1, int(max_span_frac * n)))
  for i in range(num_spans):
    start = int(rng.integers(r * i, r * (i + 1) + 1))       # inclusive upper end.
    length = int(rng.integers(1, max_len + 1))
    targets[start:min(start + length, n)] = True
  return targets


def token_target_mask(rng: np.random.Generator, n: int, *, prob: float = 0.15,
                      min_len: int = 0) -> np.ndarray:
  """BERT token masking: each of the n tokens independently with `prob`. bool [n]."""
  if n < min_len:
    return np.zeros((n,), bool)
  return rng.random(n) < prob


def corrupt_targets(rng: np.random.Generator, tokens: np.ndarray, targets: np.ndarray, *,
                    mask_id: int, vocab_size: int, mask_prob: float = 0.8,
                    random_prob: float = 0.1) -> np.ndarray:
  """80/10/10 corruption of the target tokens.

  Args: tokens int [n]; targets bool [n]. Returns the corrupted copy, int32 [n]: a target
  becomes [MASK] with `mask_prob`, a uniform vocabulary id with `random_prob`, else stays.
  """
  out = np.asarray(tokens, np.int32).copy()
  n = out.shape[0]
  u = rng.random(n)
  rand_ids = rng.integers(0, vocab_size, size=n, dtype=np.int32)
  to_mask = targets & (u < mask_prob)
  to_rand = targets & (u >= mask_prob) & (u < mask_prob + random_prob)
  out[to_mask] = mask_id
  out[to_rand] = rand_ids[to_rand]
  return out


def msm_target_mask(rng: np.random.Generator, n: int, msm_cfg) -> np.ndarray:
  """Targets of one caption per `config.data.msm` (strategy: one of MSM_STRATEGIES). bool [n]."""
  if msm_cfg.strategy == "span":
    return span_target_mask(rng, n, num_spans=msm_cfg.num_spans,
                            max_span_frac=msm_cfg.max_span_frac,
                            min_len=msm_cfg.min_caption_len)
  return token_target_mask(rng, n, prob=msm_cfg.token_prob,   # "token"
                           min_len=msm_cfg.min_caption_len)


# ----------------------------------------------------------------------------- regions (MRM)

def box_iou(boxes: np.ndarray) -> np.ndarray:
  """Pairwise IoU of pixel boxes [N, 4] (x1, y1, x2, y2) -> [N, N] float32.

  Uses the reference's "+1 pixel" convention for widths and heights, so a box's IoU with
  itself is exactly 1.
  """
  b = np.asarray(boxes, np.float64)
  w = b[:, 2] - b[:, 0] + 1.0
  h = b[:, 3] - b[:, 1] + 1.0
  area = w * h
  iw = np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]) + 1.0
  ih = np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]) + 1.0
  inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
  union = area[:, None] + area[None, :] - inter
  return (inter / np.maximum(union, 1e-12)).astype(np.float32)


def iou_group_mask(iou: np.ndarray, anchors: np.ndarray, threshold: float) -> np.ndarray:
  """Regions with IoU >= threshold to any anchor (anchors included). bool [N]."""
  if not anchors.any():
    return np.zeros(anchors.shape, bool)
  return (iou[anchors] >= threshold).any(axis=0) | anchors


def mrm_masks(rng: np.random.Generator, boxes: np.ndarray, mrm_cfg):
  """MRM for the N real regions of one image per `config.data.mrm`.

  Returns (targets, zeroed), both bool [N]: targets are predicted by the MRM head, zeroed
  have their feature set to 0 (iou: identical; independent: 90% of the targets).
  """
  n = boxes.shape[0]
  if mrm_cfg.strategy == "iou":
    anchors = rng.random(n) < mrm_cfg.anchor_prob
    masked = iou_group_mask(box_iou(boxes), anchors, mrm_cfg.iou_threshold)
    return masked, masked
  u = rng.random(n)                                                 # "independent"
  targets = u < mrm_cfg.independent_prob
  zeroed = targets & (u < mrm_cfg.independent_prob * mrm_cfg.independent_zero_prob)
  return targets, zeroed


def region_locations(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
  """[N, 4] pixel boxes -> [N, 5] float32 [x1/W, y1/H, x2/W, y2/H, area/(W H)]."""
  b = np.asarray(boxes, np.float32)
  w, h = np.float32(width), np.float32(height)
  loc = np.empty((b.shape[0], 5), np.float32)
  loc[:, 0] = b[:, 0] / w
  loc[:, 1] = b[:, 1] / h
  loc[:, 2] = b[:, 2] / w
  loc[:, 3] = b[:, 3] / h
  loc[:, 4] = (b[:, 3] - b[:, 1]) * (b[:, 2] - b[:, 0]) / (w * h)
  return loc


def detector_confidence(cls_prob: np.ndarray) -> np.ndarray:
  """[N, C] detector class distributions -> [N] float32 confidences: each region's largest
  non-background probability. Class 0 is background: BUTD's extractor ranks and keeps
  boxes by the best of classes 1.., so a box that is surely background is not confident."""
  p = np.asarray(cls_prob)
  if p.shape[-1] < 2:
    return np.zeros(p.shape[:-1], np.float32)
  return p[..., 1:].max(-1).astype(np.float32)


def global_feature(features: np.ndarray) -> np.ndarray:
  """Mean over the N real regions [N, F] -> [F] float32 (zeros when N = 0).

  The reference averages the features after MRM masking (zeroed regions count in the
  denominator); the pipeline passes the masked or unmasked features per
  `config.data.global_from_masked`.
  """
  n = features.shape[0]
  if n == 0:
    return np.zeros(features.shape[1:], np.float32)
  if features.dtype != np.float16:
    return features.mean(axis=0, dtype=np.float32)
  # Bitwise what features.mean(axis=0, dtype=float32) gives (the same exact conversion,
  # the same row-by-row float32 sum, the same division), in half the time: numpy's own
  # float16 cast is the input pipeline's costliest per-element step (docs/data_pipeline.md).
  total = np.take(_float16_to_float32(), features.view(np.uint16)).sum(axis=0)
  total /= n
  return total


_F16_TABLE = []


def _float16_to_float32() -> np.ndarray:
  """float32 [65536]: the value of every float16 bit pattern (exact)."""
  if not _F16_TABLE:
    _F16_TABLE.append(np.arange(65536, dtype=np.uint32).astype(np.uint16)
                      .view(np.float16).astype(np.float32))
  return _F16_TABLE[0]


def select_regions(conf: np.ndarray, *, max_regions: int, adaptive: bool = False,
                   min_regions: int = 10, threshold: float = 0.2) -> np.ndarray:
  """Indices of the regions an example keeps, int64 [K], K <= max_regions.

  Fixed mode keeps the first max_regions (BUTD files are 36 boxes sorted by the detector).
  Adaptive mode keeps the regions with conf >= threshold, at least min_regions and at most
  max_regions (never more than exist), in descending confidence order.
  """
  n = conf.shape[0]
  if not adaptive:
    return np.arange(min(n, max_regions))
  order = np.argsort(-np.asarray(conf, np.float32), kind="stable")
  k = int((conf >= threshold).sum())
  k = min(max(k, min_regions), max_regions, n)
  return order[:k]
