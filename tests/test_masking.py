"""InterBERT masking (docs/reference_notes.md, Model facts 2) checked by its statistics and on hand-made boxes."""
import types

import numpy as np
import pytest

from interbert_jax.data import masking


def _msm_cfg(**kw):
  cfg = dict(strategy="span", min_caption_len=4, num_spans=1, max_span_frac=0.0,
             token_prob=0.15, mask_prob=0.8, random_prob=0.1)
  cfg.update(kw)
  return types.SimpleNamespace(**cfg)


def _spans(n, draws, seed=0, **kw):
  rng = np.random.default_rng(seed)
  return np.stack([masking.msm_target_mask(rng, n, _msm_cfg(**kw)) for _ in range(draws)])


def _runs(mask):
  """(start, length) of each run of True in a bool vector."""
  padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
  d = np.diff(padded)
  starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
  return list(zip(starts, ends - starts))


def test_span_start_and_length_distribution():
  n, draws = 10, 22_000
  masks = _spans(n, draws)
  # Start uniform in [0, n] inclusive: start = n masks nothing (probability 1/(n+1)).
  empty = ~masks.any(axis=1)
  assert abs(empty.mean() - 1 / (n + 1)) < 0.008
  starts = np.array([_runs(m)[0][0] for m in masks[~empty]])
  counts = np.bincount(starts, minlength=n)
  expected = len(starts) / n
  chi2 = ((counts - expected) ** 2 / expected).sum()
  assert chi2 < 27.9                       # 9 dof, p = 0.001.
  # Length uniform in [1, n], clipped at the end: E[targets] = sum over s, l of min(l, n - s).
  exact = np.mean([[min(l, n - s) for l in range(1, n + 1)] for s in range(n + 1)])
  assert abs(masks.sum(1).mean() - exact) < 0.06
  assert abs(exact / n - 0.35) < 0.03      # Model facts 2: about 35% of the tokens.
  # A run never wraps: exactly one contiguous span when not empty.
  assert all(len(_runs(m)) == 1 for m in masks[~empty][:2000])
  # Unclipped lengths (start 0) are uniform over 1..n.
  lengths0 = np.array([_runs(m)[0][1] for m in masks[~empty] if m[0]])
  assert abs(lengths0.mean() - (n + 1) / 2) < 0.25


def test_short_captions_are_not_masked():
  for n in range(4):
    assert not _spans(n, 500).any()
    assert not _spans(n, 500, strategy="token").any()
  assert _spans(4, 500).any(axis=1).mean() > 0.7     # n = 4 is masked (1 - 1/5 of the time).


def test_span_cap_and_several_spans():
  capped = _spans(20, 3000, max_span_frac=0.3)
  sizes = capped.sum(1)
  assert sizes.max() == 6 and sizes.min() == 0      # floor(0.3 * 20) = 6.
  uncapped = _spans(20, 3000)
  assert uncapped.sum(1).max() > 6
  two = _spans(20, 4000, num_spans=2)
  runs = [_runs(m) for m in two]
  # Span i starts in [10 i, 10 (i+1)] with length <= 10: two runs unless they touch.
  assert np.mean([len(r) == 2 for r in runs]) > 0.6
  assert max(len(r) for r in runs) <= 2
  assert two.sum(1).max() <= 20
  firsts = [r[0][0] for r in runs if r]
  assert max(firsts) <= 10
  # Expected targets: twice the one-span expectation on a 10-token segment, minus overlap
  # and clipping, so strictly between one and two segments' worth.
  one_segment = np.mean([[min(l, 10 - s) for l in range(1, 11)] for s in range(11)])
  assert one_segment * 1.5 < two.sum(1).mean() < one_segment * 2 + 1.5


def test_token_strategy_rate():
  masks = _spans(30, 4000, strategy="token")
  assert abs(masks.mean() - 0.15) < 0.004


def test_80_10_10_corruption():
  rng = np.random.default_rng(1)
  n, vocab, mask_id, tok = 200_000, 1000, 4, 7
  tokens = np.full((n,), tok, np.int32)
  targets = np.ones((n,), bool)
  targets[::10] = False                                # Non-targets are never touched.
  out = masking.corrupt_targets(rng, tokens, targets, mask_id=mask_id, vocab_size=vocab)
  assert np.all(out[~targets] == tok)
  t = out[targets]
  assert abs((t == mask_id).mean() - 0.8) < 0.004
  assert abs((t == tok).mean() - (0.1 + 0.1 / vocab)) < 0.003
  rand = t[(t != mask_id) & (t != tok)]
  assert abs(len(rand) / len(t) - 0.1 * (1 - 2 / vocab)) < 0.003
  assert rand.min() >= 0 and rand.max() < vocab
  assert len(np.unique(rand)) > 900                    # Uniform over the vocabulary.


BOXES = np.array([[0, 0, 99, 99],       # A
                  [5, 5, 104, 104],     # B: IoU(A) = 9025 / 10975
                  [200, 200, 299, 299],  # C: far away
                  [0, 0, 49, 99]],      # D: IoU(A) = 0.5, IoU(B) = 4275 / 10725 < 0.4
                 np.float32)


def test_box_iou_exact():
  iou = masking.box_iou(BOXES)
  np.testing.assert_allclose(np.diag(iou), 1.0)
  np.testing.assert_allclose(iou[0, 1], 9025 / 10975, rtol=1e-6)
  np.testing.assert_allclose(iou[0, 3], 0.5, rtol=1e-6)
  np.testing.assert_allclose(iou[1, 3], 4275 / 10725, rtol=1e-6)
  assert iou[0, 2] == 0 and iou[2, 3] == 0
  np.testing.assert_allclose(iou, iou.T)


@pytest.mark.parametrize("anchors,expected", [
    ([1, 0, 0, 0], [1, 1, 0, 1]),
    ([0, 1, 0, 0], [1, 1, 0, 0]),
    ([0, 0, 1, 0], [0, 0, 1, 0]),
    ([0, 0, 0, 1], [1, 0, 0, 1]),
    ([0, 0, 0, 0], [0, 0, 0, 0]),
    ([0, 1, 1, 1], [1, 1, 1, 1]),
])
def test_iou_grouping_exact(anchors, expected):
  got = masking.iou_group_mask(masking.box_iou(BOXES), np.array(anchors, bool), 0.4)
  np.testing.assert_array_equal(got, np.array(expected, bool))


def test_mrm_iou_anchor_rate_and_independent_rate():
  far = np.array([[100 * i, 0, 100 * i + 50, 50] for i in range(20)], np.float32)
  cfg = types.SimpleNamespace(strategy="iou", anchor_prob=0.1, iou_threshold=0.4,
                              independent_prob=0.15, independent_zero_prob=0.9)
  rng = np.random.default_rng(2)
  got = np.stack([masking.mrm_masks(rng, far, cfg)[0] for _ in range(3000)])
  assert abs(got.mean() - 0.1) < 0.005            # Disjoint boxes: only the anchors.
  cfg.strategy = "independent"
  targets, zeroed = zip(*[masking.mrm_masks(rng, far, cfg) for _ in range(3000)])
  targets, zeroed = np.stack(targets), np.stack(zeroed)
  assert abs(targets.mean() - 0.15) < 0.005
  assert not (zeroed & ~targets).any()
  assert abs(zeroed.sum() / targets.sum() - 0.9) < 0.015


def test_region_locations_exact():
  loc = masking.region_locations(np.array([[10, 20, 110, 70]], np.float32), 200, 100)
  np.testing.assert_allclose(loc, [[0.05, 0.2, 0.55, 0.7, 100 * 50 / 20000]], rtol=1e-6)
  np.testing.assert_array_equal(masking.GLOBAL_LOCATION, [0, 0, 1, 1, 1])


def test_global_feature_is_mean():
  f = np.array([[1, 2], [3, 0], [0, 0]], np.float16)
  np.testing.assert_allclose(masking.global_feature(f), [4 / 3, 2 / 3], rtol=1e-6)
  assert masking.global_feature(np.zeros((0, 2), np.float16)).tolist() == [0, 0]


def test_global_feature_is_bitwise_numpys_float32_mean():
  """The float16 fast path gives exactly features.mean(0, dtype=float32): batches (and so
  trajectories) do not move with it. Zeroed rows, extreme values, and strided views."""
  rng = np.random.default_rng(0)
  for _ in range(50):
    n = int(rng.integers(1, 37))
    f = (rng.standard_normal((n, 64)) * rng.uniform(1e-3, 3e3)).astype(np.float16)
    f[rng.random(n) < 0.2] = 0
    f[0, :3] = [np.finfo(np.float16).max, np.finfo(np.float16).tiny, -0.0]
    for x in (f, np.zeros((n + 1, 64), np.float16)[1:] + f, f[:, ::2]):
      want = x.mean(axis=0, dtype=np.float32)
      got = masking.global_feature(x)
      assert got.dtype == np.float32
      np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_select_regions():
  conf = np.array([0.1, 0.9, 0.3, 0.05, 0.5, 0.25], np.float32)
  np.testing.assert_array_equal(masking.select_regions(conf, max_regions=4), [0, 1, 2, 3])
  np.testing.assert_array_equal(masking.select_regions(conf, max_regions=10), np.arange(6))
  sel = lambda **kw: masking.select_regions(conf, adaptive=True, **kw).tolist()
  assert sel(max_regions=10, min_regions=1, threshold=0.2) == [1, 4, 2, 5]
  assert sel(max_regions=10, min_regions=5, threshold=0.2) == [1, 4, 2, 5, 0]  # >= min.
  assert sel(max_regions=2, min_regions=1, threshold=0.2) == [1, 4]           # <= max.
  assert sel(max_regions=10, min_regions=10, threshold=0.2) == [1, 4, 2, 5, 0, 3]


def test_detector_confidence_leaves_out_background():
  """BUTD ranks boxes by their best non-background class: a box that is 90% background is
  not a confident one, and adaptive selection keeps the objects before it."""
  p = np.array([[0.9, 0.05, 0.05],      # background clutter
                [0.2, 0.7, 0.1],        # an object
                [0.5, 0.1, 0.4]], np.float32)
  conf = masking.detector_confidence(p)
  np.testing.assert_allclose(conf, [0.05, 0.7, 0.4])
  assert masking.select_regions(conf, max_regions=2, adaptive=True, min_regions=2,
                                threshold=0.2).tolist() == [1, 2]
