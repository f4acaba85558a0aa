"""The packed MSM head (training/packed_msm.py, loss.msm_packing): which slots it keeps, and
that its loss numerators and training equal those of the head at every [B, P] slot.

The mesh layouts (the packing per batch shard on data x fsdp x tensor) are in
test_parallel.py; here one device, and 2 data-parallel devices with 2 microbatches at a
packed size that some microbatches overflow (the lax.cond fallback).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import interbert_jax
from interbert_jax.objectives import losses
from interbert_jax.parallel import mesh as mesh_lib
from interbert_jax.training import packed_msm
from interbert_jax.training import train_step as train_step_lib
import train_helpers
from test_train_step import _config, _run, batches  # noqa: F401  (module fixture)


def test_pack_group_keeps_the_target_slots_in_order():
  text = jnp.arange(2 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 1)   # value = row * 4 + pos
  positions = jnp.array([[1, 2, 3], [3, 1, 0]])
  targets = jnp.array([[10, 11, 12], [20, 21, 22]])
  weights = jnp.array([[0, 1, 0], [1, 0, 1]], jnp.float32)
  hidden, tgt, w, count = packed_msm.pack_group(text, positions, targets, weights, n=4)
  np.testing.assert_array_equal(hidden[:3, 0], [2, 7, 4])   # (0, pos 2), (1, 3), (1, 0)
  np.testing.assert_array_equal(tgt[:3], [11, 20, 22])
  np.testing.assert_array_equal(w, [1, 1, 1, 0])             # the 4th slot is padding
  assert count.tolist() == [3]
  _, _, w2, count2 = packed_msm.pack_group(text, positions, targets, weights, n=2)
  np.testing.assert_array_equal(w2, [1, 1])
  assert count2.tolist() == [3]                              # > n: the caller falls back


def test_packed_slots():
  assert packed_msm.packed_slots(8, 36, 0.5) == 144
  assert packed_msm.packed_slots(1, 3, 0.1) == 1
  assert packed_msm.packed_slots(2, 5, 1.0) == 10


@pytest.mark.parametrize("fraction", [0.5, 0.05, 1.0])
def test_numerators_equal_the_head_at_every_slot(fraction):
  """With room (0.5), when the targets do not fit (0.05: every slot, under lax.cond), and
  with no packing at all (1.0)."""
  rng = np.random.default_rng(0)
  b, t, p, h, v = 4, 7, 5, 3, 11
  text = jnp.asarray(rng.standard_normal((b, t, h)), jnp.float32)
  table = jnp.asarray(rng.standard_normal((v, h)), jnp.float32)
  head = lambda x: jnp.einsum("gnh,vh->gnv", x, table)
  weights = np.zeros((b, p), np.float32)
  weights[0, :2] = weights[1, :1] = weights[3, :3] = 1.0    # 6 targets in 20 slots
  batch = dict(msm_positions=jnp.asarray(rng.integers(0, t, (b, p)), jnp.int32),
               msm_targets=jnp.asarray(rng.integers(0, v, (b, p)), jnp.int32),
               msm_weights=jnp.asarray(weights))
  want = losses.msm_terms(head(jnp.take_along_axis(text, batch["msm_positions"][..., None], 1)),
                          batch["msm_targets"], batch["msm_weights"])
  got = jax.jit(lambda x: packed_msm.msm_numerators(head, x, batch, fraction))(text)
  np.testing.assert_allclose(got[0], want["msm"][0], rtol=1e-6)
  np.testing.assert_allclose(got[1], want["msm_acc"][0], rtol=1e-6)
  assert float(got[2]) == (1.0 if fraction == 0.05 else 0.0)   # 0.05: 1 slot, 6 targets
  grad = lambda f: jax.grad(lambda x: f(x)[0])(text)
  np.testing.assert_allclose(
      grad(lambda x: packed_msm.msm_numerators(head, x, batch, fraction)),
      grad(lambda x: [losses.msm_terms(head(jnp.take_along_axis(
          x, batch["msm_positions"][..., None], 1)), batch["msm_targets"],
          batch["msm_weights"])["msm"][0]]), rtol=1e-5, atol=1e-6)


def _largest_shard_counts(batches, microbatches, shards):
  """Per (step, microbatch): the most MSM targets any batch shard holds (host-side replay
  of the strided microbatch split and the block sharding of its rows)."""
  out = []
  for b in batches:
    live = np.asarray(b["msm_weights"]) > 0
    for j in range(microbatches):
      rows = live[j::microbatches]
      out.append(max(int(r.sum()) for r in np.split(rows, shards)))
  return out


def test_packed_training_equals_the_unpacked_head(batches):  # noqa: F811
  """2 steps of the tiny model on 2 data-parallel devices, 2 microbatches, packed vs not,
  at a packed size that some microbatches overflow (the lax.cond fallback) and some fit."""
  config = _config(2)
  rows, p = config.batch_size // 2 // 2, batches[0]["msm_positions"].shape[1]
  largest = _largest_shard_counts(batches, 2, 2)
  n = min(largest)
  assert max(largest) > n, largest                    # both branches of the cond run
  config.loss.msm_packing = n / (rows * p)
  assert packed_msm.packed_slots(rows, p, config.loss.msm_packing) == n
  full_history, full_state = _run(_config(2), batches)
  packed_history, packed_state = _run(config, batches)
  for full, packed in zip(full_history, packed_history):
    for key in ("loss", "msm_loss", "msm_acc", "grad_norm"):
      np.testing.assert_allclose(packed[key], full[key], rtol=1e-5, err_msg=key)
  # The logged fallback rate: the fraction of each step's microbatches that overflowed.
  want = np.mean(np.reshape(largest, (len(batches), 2)) > n, axis=1)
  np.testing.assert_array_equal([h["msm_packing_fallback"] for h in packed_history], want)
  assert "msm_packing_fallback" not in full_history[0]
  worst = max(jax.tree.leaves(jax.tree.map(
      lambda a, b: float(np.max(np.abs(a - b))), full_state["params"], packed_state["params"])))
  assert worst < 1e-6, worst


def test_the_trainer_step_packs_only_when_asked(batches):  # noqa: F811
  """compile_train_step binds loss.msm_packing: the packed step holds the fallback's
  conditional and the default step none; apply_model returns the packed numerators
  instead of the [B, P, V] logits."""
  mesh = mesh_lib.create_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  texts = {}
  for packing in (0.0, 0.5):
    config = _config(1)
    config.loss.msm_packing = packing
    compiled, state = train_helpers.compile_step(config, mesh, batches[0])
    texts[packing] = compiled.as_text()
  assert "conditional" not in texts[0.0]
  assert "conditional" in texts[0.5]
  model = interbert_jax.build_model(config.model)
  for packing, key, absent in ((0.0, "msm_logits", "msm_numerators"),
                               (0.5, "msm_numerators", "msm_logits")):
    out = train_step_lib.apply_model(model, state["params"], batches[0], deterministic=True,
                                     msm_packing=packing)
    assert key in out and absent not in out, (packing, sorted(out))
