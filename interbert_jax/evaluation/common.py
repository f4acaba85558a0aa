"""What every evaluation task shares: loading a checkpoint onto a data-parallel mesh."""
from __future__ import annotations

import hashlib
import json
import os

import ml_collections

from interbert_jax import errors
from interbert_jax.checkpoints import model_files
from interbert_jax.model import build_model
from interbert_jax.parallel import mesh as mesh_lib
from interbert_jax.parallel import partitioning

DTYPES = ("float32", "bfloat16")


class EvaluationError(errors.UserError, ValueError):
  """A user mistake (bad checkpoint, data, split or flag); the CLI exits 2 with it."""


def data_parallel_mesh():
  """Every device of every process on the data axis."""
  return mesh_lib.create_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)))


def load_for_eval(checkpoint: str, mesh, dtype: str = "float32"):
  """-> (model computing in `dtype`, params replicated on `mesh`, model_config).

  `checkpoint`: an export (native or safetensors) or a training step directory
  `<workdir>/checkpoints/<step>`.
  """
  if dtype not in DTYPES:
    raise EvaluationError(f"--dtype={dtype}: choose from {DTYPES}")
  if not os.path.exists(checkpoint):
    raise EvaluationError(f"--checkpoint={checkpoint}: does not exist")
  try:
    _, params, model_config = model_files.load_checkpoint(
        checkpoint, sharding=partitioning.replicated(mesh))
  except (FileNotFoundError, ValueError) as e:
    raise EvaluationError(f"--checkpoint={checkpoint}: {e}") from None
  model_config = ml_collections.ConfigDict(model_config.to_dict())
  model_config.dtype = dtype
  return build_model(model_config), params, model_config


def fingerprint(params) -> str:
  """sha256 over the per-tensor checksums: which weights an evaluation used."""
  return hashlib.sha256(json.dumps(model_files.checksums(params)).encode()).hexdigest()
