"""Training checkpoints: restore onto another mesh (8 devices -> 1 -> 8), keep-N, the
layout load_checkpoint reads, and init_from merging."""
import os

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import interbert_jax
from configs.pretrain import get_config
from interbert_jax.model.interbert import dummy_inputs
from interbert_jax.parallel import mesh as mesh_lib
from interbert_jax.parallel import partitioning
from interbert_jax.checkpoints import init_from, run_state
from interbert_jax.training import optimizer as optimizer_lib
from interbert_jax.training import state as state_lib


@pytest.fixture(scope="module")
def setup():
  config = get_config("tiny")
  config.total_steps = 10
  model = interbert_jax.build_model(config.model)
  opt = optimizer_lib.build_optimizer(config)
  b = dummy_inputs(config.model, batch_size=8, text_len=config.data.text_len,
                   num_regions=config.data.max_regions + 1)
  shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in b.items()}
  shapes["segment_ids"] = shapes["text_ids"]
  shapes["msm_positions"] = shapes["text_ids"]
  return config, model, opt, shapes


def _abstract(setup, mesh):
  config, model, opt, shapes = setup
  with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.logical_axis_rules()):
    return state_lib.abstract_state(model, opt.tx, mesh, jax.random.key(0))


def _random_state(setup, mesh):
  """A state whose every leaf (moments included) is distinct, so a mix-up would show."""
  config, model, opt, shapes = setup
  abstract, sh = _abstract(setup, mesh)
  leaves, treedef = jax.tree.flatten(abstract)
  keys = jax.random.split(jax.random.key(7), len(leaves))
  values = [jax.device_put(jax.random.normal(k, a.shape).astype(a.dtype)
                           if jnp.issubdtype(a.dtype, jnp.floating) else jnp.full(a.shape, 3, a.dtype),
                           a.sharding) for k, a in zip(keys, leaves)]
  return jax.tree.unflatten(treedef, values)


def _assert_equal(a, b):
  chex.assert_trees_all_equal(jax.device_get(a), jax.device_get(b))


def test_restore_onto_other_meshes(setup, tmp_path):
  config = setup[0]
  mesh8 = mesh_lib.create_mesh(dict(data=2, fsdp=2, tensor=2))
  state = _random_state(setup, mesh8)
  rng = partitioning.replicate(jax.random.key_data(jax.random.key(42)), mesh8)
  ckpt = run_state.Checkpointer(str(tmp_path), keep=2)
  assert ckpt.save(3, state, rng, data_state={"epoch_hint": 0})
  ckpt.close()                                          # waits for the async save
  host = jax.device_get(state)
  ckpt = run_state.Checkpointer(str(tmp_path), keep=2)

  mesh1 = mesh_lib.create_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  abstract1, _ = _abstract(setup, mesh1)
  restored, rng1, data = ckpt.restore(3, abstract1, partitioning.replicated(mesh1))
  _assert_equal(host, restored)
  leaf = restored["params"]["single_stream"]["layer_0"]["attention"]["query"]["kernel"]
  assert leaf.sharding.mesh.devices.size == 1
  assert data == {"epoch_hint": 0, "step": 3}
  np.testing.assert_array_equal(rng1, jax.random.key_data(jax.random.key(42)))

  # ... and back onto 8 devices with a different layout (pure FSDP).
  mesh8b = mesh_lib.create_mesh(dict(data=1, fsdp=8, tensor=1))
  abstract8b, _ = _abstract(setup, mesh8b)
  again, _, _ = ckpt.restore(3, abstract8b, partitioning.replicated(mesh8b))
  _assert_equal(host, again)
  leaf = again["params"]["single_stream"]["layer_0"]["attention"]["query"]["kernel"]
  assert leaf.sharding.spec == P("fsdp", "tensor")
  assert leaf.addressable_shards[0].data.shape[0] == leaf.shape[0] // 8     # really FSDP
  ckpt.close()

  # The params item is what interbert_jax.load_checkpoint reads (with the run's config).
  with open(tmp_path / "config.json", "w") as f:
    f.write(config.to_json_best_effort())
  _, params, model_config = interbert_jax.load_checkpoint(str(tmp_path / "checkpoints" / "3"))
  assert model_config.hidden_size == config.model.hidden_size
  _assert_equal(host["params"], params)


def test_keep_n_and_skip_existing(setup, tmp_path):
  mesh1 = mesh_lib.create_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  state = _random_state(setup, mesh1)
  ckpt = run_state.Checkpointer(str(tmp_path), keep=2)
  rng = partitioning.replicate(jax.random.key_data(jax.random.key(0)), mesh1)
  for step in (1, 2, 3, 4):
    assert ckpt.save(step, dict(state, step=jnp.asarray(step, jnp.int32)), rng)
  assert not ckpt.save(4, state, rng)
  ckpt.close()
  ckpt = run_state.Checkpointer(str(tmp_path), keep=2)
  assert ckpt.all_steps() == [3, 4]
  assert ckpt.latest_step() == 4
  ckpt.close()
  assert {"params", "train_state", "data"} <= set(os.listdir(tmp_path / "checkpoints" / "4"))


# ----------------------------------------------------------------------------- init_from

def _params_like():
  return {"embeddings": {"word": jnp.zeros((4, 2))}, "image_stream": {"k": jnp.ones(3)}}


def test_init_from_merges_partial_checkpoints():
  merged = init_from.merge_params(_params_like(), {"embeddings": {"word": np.full((4, 2), 5.0)}})
  np.testing.assert_array_equal(merged["embeddings"]["word"], np.full((4, 2), 5.0))
  np.testing.assert_array_equal(merged["image_stream"]["k"], np.ones(3))   # kept


def test_init_from_shape_mismatch_names_the_parameter():
  with pytest.raises(ValueError, match=r"embeddings/word has shape \(5, 2\)"):
    init_from.merge_params(_params_like(), {"embeddings": {"word": np.zeros((5, 2))}})


def test_init_from_unknown_parameter():
  with pytest.raises(ValueError, match=r"'text_stream/layer_0/x' is not in the model.*scan_layers"):
    init_from.merge_params(_params_like(), {"text_stream": {"layer_0": {"x": np.zeros(1)}}})


def test_relative_workdir_gives_absolute_checkpoint_dir(tmp_path, monkeypatch):
  # The README's quick start passes --workdir=workdirs/tiny; orbax needs absolute paths.
  monkeypatch.chdir(tmp_path)
  assert run_state.checkpoint_dir("workdirs/tiny") == str(tmp_path / "workdirs/tiny/checkpoints")
  assert run_state.checkpoint_dir("gs://bucket/run") == "gs://bucket/run/checkpoints"
