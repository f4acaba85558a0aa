"""Train step: gradient accumulation equals the large batch; strided microbatch split.

Dropout is off here so that 1 x 32 examples and 2 x 16 examples see the same network.
Tolerance: float32, different summation order: rtol 1e-5 on metrics, atol 1e-6 on params.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import interbert_jax
import train_helpers
from configs.pretrain import get_config
from interbert_jax.data import pipeline
from interbert_jax.parallel import mesh as mesh_lib
from interbert_jax.parallel import partitioning
from interbert_jax.training import optimizer as optimizer_lib
from interbert_jax.training import state as state_lib
from interbert_jax.training import train_step as train_step_lib

NUM_STEPS = 2


def test_split_microbatches_is_strided():
  x = np.arange(12).reshape(6, 2)
  out = np.asarray(train_step_lib.split_microbatches({"x": jnp.asarray(x)}, 3)["x"])
  assert out.shape == (3, 2, 2)
  np.testing.assert_array_equal(out[0], x[[0, 3]])
  np.testing.assert_array_equal(out[2], x[[2, 5]])


def test_split_keeps_rows_on_their_devices():
  """The strided split of a batch-sharded array compiles to no communication at all."""
  mesh = mesh_lib.create_mesh(dict(data=8, fsdp=1, tensor=1))
  sharding = partitioning.batch_sharding(mesh)
  fn = jax.jit(lambda b: train_step_lib.split_microbatches(b, 2), in_shardings=(sharding,))
  x = jax.ShapeDtypeStruct((32, 5), jnp.float32)
  compiled = fn.lower({"x": x}).compile()
  hlo = compiled.as_text()
  for op in ("all-to-all", "all-gather", "collective-permute", "all-reduce"):
    assert op not in hlo, op
  assert compiled.output_shardings["x"].spec == P(None, "data")


def _config(microbatches):
  config = get_config("tiny")
  config.total_steps = 10
  config.microbatches = microbatches
  config.optimizer.warmup_fraction = 0.0
  m = config.model
  m.embedding_dropout = m.itm_dropout = 0.0
  for stream in ("single_stream", "text_stream", "image_stream"):
    m[stream].hidden_dropout = m[stream].attention_dropout = 0.0
  return config


def _mesh():
  # 2 data-parallel devices: the strided split runs on sharded rows; more devices would
  # only add compile time (the 8-device layouts are covered in test_parallel.py).
  return mesh_lib.create_mesh(dict(data=2, fsdp=1, tensor=1), jax.devices()[:2])


def _run(config, batches):
  return train_helpers.run_steps(config, _mesh(), batches)


@pytest.fixture(scope="module")
def batches():
  it = pipeline.train_iterator(_config(1))
  return [next(it) for _ in range(NUM_STEPS)]


def test_grad_accumulation_equals_large_batch(batches):
  big_history, big_state = _run(_config(1), batches)
  acc_history, acc_state = _run(_config(2), batches)
  # The tasks' denominators differ between the two halves (masked tokens/regions per
  # example vary), so equality here shows the global-denominator normalisation.
  for big, acc in zip(big_history, acc_history):
    for key in ("loss", "msm_loss", "mrm_loss", "itm_loss", "msm_acc", "mrm_acc", "itm_acc",
                "grad_norm", "dead_text_pooler", "dead_image_pooler", "itm_logit_std"):
      np.testing.assert_allclose(acc[key], big[key], rtol=1e-5, err_msg=key)
  assert big_history[1]["learning_rate"] == pytest.approx(1e-3 * (1 - 1 / 10), rel=1e-6)
  assert int(acc_state["step"]) == NUM_STEPS
  worst = max(jax.tree.leaves(jax.tree.map(
      lambda a, b: float(np.max(np.abs(a - b))), big_state["params"], acc_state["params"])))
  assert worst < 1e-6, worst
  moved = max(jax.tree.leaves(jax.tree.map(
      lambda a, b: float(np.max(np.abs(a - b))), big_state["params"],
      _initial_params(_config(1), batches))))
  assert moved > 1e-4     # The comparison is not between two untouched initialisations.


def _initial_params(config, batches):
  model = interbert_jax.build_model(config.model)
  opt = optimizer_lib.build_optimizer(config)
  mesh = _mesh()
  with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.logical_axis_rules()):
    _, sh = state_lib.abstract_state(model, opt.tx, mesh, jax.random.key(0))
    return jax.device_get(state_lib.create_state(model, opt.tx, sh, jax.random.key(0))["params"])
