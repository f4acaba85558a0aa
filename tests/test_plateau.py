"""ITM plateau (docs/plateau.md): the detector, the diagnostics, and one stalled trainer run."""
import functools
import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import interbert_jax
from configs.pretrain import get_config
from tests.conftest import train
from interbert_jax.data import pipeline
from interbert_jax.objectives import losses
from interbert_jax.parallel import mesh as mesh_lib
from interbert_jax.parallel import partitioning
from interbert_jax.training import optimizer as optimizer_lib
from interbert_jax.training import plateau
from interbert_jax.training import train_step as train_step_lib
from train_helpers import FAST_COMPILE

LN2 = math.log(2.0)


# ------------------------------------------------------------------ detector

def _feed(detector, losses_by_step):
  """-> the steps at which update() returned True."""
  return [s for s, l in losses_by_step if detector.update(s, l)]


def test_fires_once_after_the_window():
  d = plateau.PlateauDetector(window_steps=20, tolerance=0.01, warmup_steps=0)
  fired = _feed(d, [(s, LN2 + 0.001) for s in range(5, 101, 5)])
  assert fired == [20]          # steps (0, 20] in the band; never again after


def test_warmup_steps_do_not_count():
  d = plateau.PlateauDetector(window_steps=20, tolerance=0.01, warmup_steps=30)
  fired = _feed(d, [(s, LN2) for s in range(5, 101, 5)])
  assert fired == [50]          # counting starts at step 30, the end of the warm-up


def test_leaving_the_band_resets_the_count():
  d = plateau.PlateauDetector(window_steps=20, tolerance=0.01, warmup_steps=0)
  values = [LN2] * 3 + [0.6] + [LN2] * 3 + [LN2 * 1.02] + [LN2] * 3
  assert _feed(d, list(zip(range(5, 5 * len(values) + 1, 5), values))) == []
  # Within 1% on either side of ln 2 stays in the band.
  d = plateau.PlateauDetector(window_steps=10, tolerance=0.01)
  assert _feed(d, [(5, LN2 * 0.995), (10, LN2 * 1.009)]) == [10]


def test_window_zero_disables():
  d = plateau.PlateauDetector(window_steps=0, tolerance=0.01)
  assert _feed(d, [(s, LN2) for s in range(1, 1000)]) == []


def test_resumed_detector_counts_from_the_resumed_step():
  d = plateau.PlateauDetector(window_steps=20, tolerance=0.01, warmup_steps=4,
                              start_step=100)
  assert _feed(d, [(s, LN2) for s in range(105, 200, 5)]) == [120]


def test_warning_names_step_values_reason_and_doc():
  msg = plateau.warning_message(
      25, dict(itm_loss=0.6929, dead_text_pooler=0.5, dead_image_pooler=0.25,
               itm_logit_std=0.007), "band: itm_loss ~ ln 2 for >= 20 steps after warm-up")
  for part in ("step 25", "(band: itm_loss", "0.6929", "dead_text_pooler 0.500",
               "dead_image_pooler 0.250", "itm_logit_std 0.007", "docs/plateau.md"):
    assert part in msg, part
  assert "taking off" not in msg
  early = plateau.warning_message(
      300, dict(itm_loss=0.6991, dead_text_pooler=0.0, dead_image_pooler=0.109,
                itm_logit_std=0.054), "collapse: for >= 100 steps after warm-up, ...")
  assert "(collapse: for >= 100 steps" in early and "grows again within ~100 steps" in early
  assert early.endswith("See docs/plateau.md for what to check and try.")


def _feed_spread(detector, rows):
  """rows: (step, itm_loss, itm_logit_std, dead_image_pooler) -> [(step, reason)] where
  update() fired."""
  return [(s, r) for s, l, std, dead in rows if (r := detector.update(s, l, std, dead))]


def _small_detector():
  """small's defaults: warm-up 100 of 1,000 steps, band 500, collapse 100."""
  return plateau.PlateauDetector(window_steps=500, tolerance=0.01, warmup_steps=100,
                                 collapse_steps=100)


# Logged (step, itm_loss, itm_logit_std, dead_image_pooler) of real `small` runs
# (docs/plateau.md "The warning"), 1,000 steps each.
STALLED_STANDARDISED = [   # the shared detector world, standardised features: stalled
    (100, 0.7466, 0.231, 0.001), (200, 0.7237, 0.119, 0.032), (300, 0.6991, 0.054, 0.109),
    (400, 0.7033, 0.021, 0.213)]
LEARNED_AFTER_ONE_BAD_WINDOW = [   # detector_scale, seed 11: eval ITM 0.820 at 500, 0.891
    (50, 0.717, 0.273, 0.0), (100, 0.735, 0.349, 0.0), (150, 0.744, 0.123, 0.033),
    (200, 0.735, 0.055, 0.055), (250, 0.696, 0.174, 0.065), (300, 0.701, 0.027, 0.212),
    (350, 0.689, 0.18, 0.115), (400, 0.628, 0.776, 0.017), (450, 0.519, 1.606, 0.0)]
LEARNED_CLUTTER = [        # detector_clutter, seed 7: eval ITM 0.605 at 500, 0.863 at 1,000
    (50, 0.7205, 0.24, 0.0), (100, 0.7216, 0.178, 0.0), (150, 0.7245, 0.242, 0.0),
    (200, 0.7219, 0.171, 0.024), (250, 0.7079, 0.072, 0.037), (300, 0.7033, 0.057, 0.043),
    (350, 0.6995, 0.117, 0.031), (400, 0.7012, 0.073, 0.053), (450, 0.6834, 0.192, 0.027),
    (500, 0.6699, 0.453, 0.011), (550, 0.6412, 0.728, 0.002), (600, 0.6323, 0.72, 0.005)]


def test_a_collapsing_head_with_a_dying_image_pooler_warns_early():
  fired = _feed_spread(_small_detector(), STALLED_STANDARDISED)
  assert [s for s, _ in fired] == [300], fired     # 30% of the run; the band rule: >= 600
  reason = fired[0][1]
  assert reason.startswith("collapse") and "from 0.231 at step 100" in reason, reason
  assert "dead_image_pooler 0.109 >= 0.1" in reason, reason
  # Logged every 50 steps, the same windows warn once two in a row (100 steps) collapse.
  rows = [(50 * i, LN2, 0.3 if i < 4 else 0.05, 0.0 if i < 4 else 0.2) for i in range(1, 9)]
  assert [s for s, _ in _feed_spread(_small_detector(), rows)] == [250]


def test_runs_that_learn_after_a_dip_do_not_warn():
  # The spread fell to 0.24 x its peak at step 300 while at chance, the image pooler
  # alive (<= 5.3% dead): a spread-only rule fired here at step 250.
  assert _feed_spread(_small_detector(), LEARNED_CLUTTER) == []
  # One window (step 300) with everything collapsed, then the head took off.
  assert _feed_spread(_small_detector(), LEARNED_AFTER_ONE_BAD_WINDOW) == []


def test_a_shrinking_spread_alone_or_a_dying_pooler_alone_does_not_warn_early():
  rows = [(50 * i, LN2, 0.3 if i < 3 else 0.02, 0.0) for i in range(1, 12)]
  assert _feed_spread(_small_detector(), rows) == []            # spread only
  rows = [(50 * i, LN2, 0.3, 0.5) for i in range(1, 12)]
  assert _feed_spread(_small_detector(), rows) == []            # dead pooler only
  # Without dead_image_pooler the early rule cannot trip; the band still does.
  rows = [(50 * i, LN2, 0.004, None) for i in range(1, 14)]
  fired = _feed_spread(_small_detector(), rows)
  assert [s for s, _ in fired] == [600] and fired[0][1].startswith("band"), fired


def test_a_growing_spread_does_not_warn_early():
  # At ln 2 but the head is starting to separate pairs: only the band rule may fire.
  rows = [(50 * i, LN2, 0.1 + 0.02 * i, 0.3) for i in range(1, 14)]
  fired = _feed_spread(_small_detector(), rows)
  assert [s for s, _ in fired] == [600] and fired[0][1].startswith("band"), fired


def test_a_constant_head_warns_early_below_the_floor():
  # `tiny` on the shared detector world: spread ~0.002 from the start, pooler dying.
  fired = _feed_spread(_small_detector(), [(100 * i, LN2, 0.002, 0.4 + 0.05 * i)
                                           for i in range(1, 11)])
  assert [s for s, _ in fired] == [200] and "< 0.01 (a constant head)" in fired[0][1]


def test_leaving_the_band_resets_the_early_count_too():
  d = plateau.PlateauDetector(window_steps=500, tolerance=0.01, warmup_steps=0,
                              collapse_steps=100)
  rows = [(50, LN2, 0.2, 0.2), (100, 0.65, 0.05, 0.2), (150, LN2, 0.05, 0.2),
          (200, LN2, 0.05, 0.2), (250, LN2, 0.05, 0.2)]
  assert [s for s, _ in _feed_spread(d, rows)] == [200]   # the band holds from step 100


# ------------------------------------------------------------------ diagnostics

def _outputs():
  # 4 examples, 3 pooler units. Text: unit 0 fires on example 2 only, unit 1 never,
  # unit 2 always. Image: unit 1 never. Margins: 1, -1, 3, -3 -> std sqrt(5).
  text = np.array([[0, 0, 1], [0, 0, 2], [0.5, 0, 1], [0, 0, 1]], np.float32)
  image = np.array([[1, 0, 1], [1, 0, 0], [1, 0, 0], [0, 0, 2]], np.float32)
  logits = np.array([[1, 0], [0, 1], [2, -1], [-1, 2]], np.float32)
  return dict(text_pooled=jnp.asarray(text), image_pooled=jnp.asarray(image),
              itm_logits=jnp.asarray(logits))


def test_diagnostics_on_a_hand_made_batch():
  stats = losses.itm_diagnostic_stats(_outputs())
  np.testing.assert_array_equal(stats["text_pooler_alive"], [1, 0, 1])
  np.testing.assert_array_equal(stats["itm_margin"], [1, -1, 3, -3])
  d = losses.itm_diagnostics(jax.tree.map(lambda x: x[None], stats))
  assert float(d["dead_text_pooler"]) == pytest.approx(1 / 3)
  assert float(d["dead_image_pooler"]) == pytest.approx(1 / 3)
  assert float(d["itm_logit_std"]) == pytest.approx(math.sqrt(5.0))


def test_diagnostics_of_microbatches_are_the_whole_batch_s():
  """A unit alive in one microbatch only is alive; the std is over every example."""
  out = _outputs()
  halves = [losses.itm_diagnostic_stats({k: v[i::2] for k, v in out.items()})
            for i in range(2)]
  stacked = jax.tree.map(lambda *x: jnp.stack(x), *halves)
  whole = losses.itm_diagnostics(
      jax.tree.map(lambda x: x[None], losses.itm_diagnostic_stats(out)))
  split = losses.itm_diagnostics(stacked)
  assert float(halves[1]["text_pooler_alive"][0]) == 0.0   # the split matters here
  for k in losses.DIAGNOSTICS:
    assert float(split[k]) == pytest.approx(float(whole[k])), k


def test_train_step_diagnostics_change_nothing_else():
  """A tiny model's step with and without the diagnostics: bitwise the same loss and new
  parameters; the diagnostics equal those of a plain forward pass (no dropout)."""
  config = get_config("tiny")
  config.batch_size = 8
  m = config.model
  m.hidden_size, m.pooler_dim = 32, 16
  m.single_stream.layers = 0        # compile time: one layer per stream is enough here
  for s in ("text_stream", "image_stream"):
    m[s].layers, m[s].heads, m[s].mlp_dim = 1, 2, 32
  batch = next(pipeline.train_iterator(config))
  model = interbert_jax.build_model(m)
  opt = optimizer_lib.build_optimizer(config)
  mesh = mesh_lib.create_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.logical_axis_rules()):
    params = jax.jit(model.init)(jax.random.key(0),
                                 **interbert_jax.model.dummy_inputs(m))["params"]
    state = dict(params=params, opt=opt.tx.init(params), step=jnp.int32(0))
    step = functools.partial(train_step_lib.train_step, model=model, tx=opt.tx,
                             schedule=opt.schedule, config=config,
                             terms_fn=losses.pretraining_terms, combine_fn=losses.combine)

    def run(fn):
      compiled = jax.jit(fn).lower(state, batch, jax.random.key(1)).compile(FAST_COMPILE)
      return compiled(state, batch, jax.random.key(1))

    plain_state, plain = run(step)
    diag_state, diag = run(functools.partial(
        step, stats_fn=lambda o, b: losses.itm_diagnostic_stats(o),
        diagnostics_fn=losses.itm_diagnostics))
    outputs = jax.jit(lambda p: train_step_lib.apply_model(model, p, batch,
                                                           deterministic=True))(params)
  assert set(diag) == set(plain) | set(losses.DIAGNOSTICS)
  for k in plain:
    np.testing.assert_array_equal(diag[k], plain[k], err_msg=k)
  jax.tree.map(np.testing.assert_array_equal, diag_state["params"], plain_state["params"])
  direct = losses.itm_diagnostics(
      jax.tree.map(lambda x: x[None], losses.itm_diagnostic_stats(outputs)))
  for k in losses.DIAGNOSTICS:
    assert float(diag[k]) == pytest.approx(float(direct[k]), abs=1e-5), k


# ------------------------------------------------------------------ the trainer

def test_stalled_run_warns_once(tmp_path):
  """LR 1e-8: nothing moves, ITM stays at ln 2. Warm-up = 4 steps, window 20 steps."""
  stderr = train("configs/pretrain.py:tiny", tmp_path, "--config.total_steps=40",
                 "--config.log_every_steps=5", "--config.eval_every_steps=40",
                 "--config.eval_batches=1", "--config.checkpoint_every_steps=40",
                 "--config.optimizer.learning_rate=1e-8", "--config.plateau.window_steps=20")
  warnings = [l for l in stderr.splitlines() if "docs/plateau.md" in l]
  assert len(warnings) == 1, stderr[-3000:]
  assert warnings[0].startswith("W") and "ITM plateau at step 25" in warnings[0], warnings
  with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
    records = [json.loads(l) for l in f]
  train_records = [r for r in records if "itm_loss" in r]
  assert len(train_records) == 8
  for r in train_records:
    assert abs(r["itm_loss"] - LN2) < 0.01 * LN2
    assert 0.0 <= r["dead_text_pooler"] <= 1.0 and 0.0 <= r["dead_image_pooler"] <= 1.0
    assert 0.0 <= r["itm_logit_std"] < 0.1
