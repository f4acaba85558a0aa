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


def _feed_spread(detector, rows):
  """rows: (step, itm_loss, itm_logit_std) -> [(step, reason)] where update() fired."""
  return [(s, r) for s, l, std in rows if (r := detector.update(s, l, std))]


def test_collapsing_spread_warns_early():
  # The shape of a stalled detector-feature run (docs/plateau.md): at ln 2 from the
  # start, the logit spread shrinking from 0.23 after the warm-up.
  d = plateau.PlateauDetector(window_steps=500, tolerance=0.01, warmup_steps=100,
                              collapse_steps=100)
  spreads = [0.15, 0.23, 0.17, 0.12, 0.08, 0.05, 0.03]
  rows = [(50 * (i + 1), LN2, v) for i, v in enumerate(spreads)]
  fired = _feed_spread(d, rows)
  assert [s for s, _ in fired] == [250], fired      # 0.08 <= 0.5 x 0.23, band since 100
  assert fired[0][1].startswith("spread collapse") and "from 0.23 at step 100" in fired[0][1]


def test_a_confidently_wrong_head_above_the_band_warns_early_too():
  # The stalled `small` run on the shared detector world without MRM (docs/plateau.md):
  # the loss above ln 2, the spread falling from 0.293 at step 50.
  d = plateau.PlateauDetector(window_steps=500, tolerance=0.01, warmup_steps=100,
                              collapse_steps=100)
  rows = [(50, 0.7588, 0.293), (100, 0.7335, 0.236), (150, 0.7367, 0.204),
          (200, 0.7276, 0.111), (250, 0.7131, 0.042)]
  fired = _feed_spread(d, rows)
  assert [s for s, _ in fired] == [200] and "from 0.293 at step 50" in fired[0][1], fired


def test_a_learning_run_does_not_warn():
  # The development run with standardised detector features (docs/plateau.md): the spread
  # dips to 0.64 x its peak before the loss leaves ln 2 at step 450.
  d = plateau.PlateauDetector(window_steps=500, tolerance=0.01, warmup_steps=100,
                              collapse_steps=100)
  rows = [(50, 0.7159, 0.224), (100, 0.713, 0.308), (150, 0.7175, 0.197),
          (200, 0.7092, 0.21), (250, 0.7081, 0.277), (300, 0.7057, 0.283),
          (350, 0.6929, 0.279), (400, 0.7008, 0.21), (450, 0.6804, 0.348),
          (500, 0.6372, 0.605)]
  assert _feed_spread(d, rows) == []


def test_a_growing_spread_does_not_warn_early():
  # At ln 2 but the head is starting to separate pairs: only the band rule may fire.
  d = plateau.PlateauDetector(window_steps=500, tolerance=0.01, warmup_steps=100,
                              collapse_steps=100)
  rows = [(50 * i, LN2, 0.1 + 0.02 * i) for i in range(1, 14)]
  fired = _feed_spread(d, rows)
  assert [s for s, _ in fired] == [600] and fired[0][1].startswith("band"), fired


def test_a_constant_head_warns_early_below_the_floor():
  d = plateau.PlateauDetector(window_steps=500, tolerance=0.01, warmup_steps=100,
                              collapse_steps=100)
  fired = _feed_spread(d, [(50 * i, LN2, 0.004) for i in range(1, 14)])
  assert [s for s, _ in fired] == [200] and "< 0.01 (a constant head)" in fired[0][1]


def test_leaving_the_band_resets_the_early_count_too():
  d = plateau.PlateauDetector(window_steps=500, tolerance=0.01, warmup_steps=0,
                              collapse_steps=100)
  rows = [(50, LN2, 0.2), (100, 0.65, 0.05), (150, LN2, 0.05), (200, LN2, 0.05),
          (250, LN2, 0.05)]
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
