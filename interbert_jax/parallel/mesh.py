"""The device mesh from `config.mesh` (axes data, fsdp, tensor; one may be -1)."""
from typing import Sequence

import jax
import numpy as np

from interbert_jax.errors import BadValueError

MESH_AXES = ("data", "fsdp", "tensor")


def resolve_mesh_shape(mesh_config, num_devices: int) -> tuple[int, int, int]:
  """Fills the single -1 axis of `mesh_config` from `num_devices`.

  Raises ValueError naming `config.mesh.*` when the sizes cannot cover the devices.
  """
  sizes = [int(mesh_config[a]) for a in MESH_AXES]
  free = [a for a, s in zip(MESH_AXES, sizes) if s == -1]
  bad = [a for a, s in zip(MESH_AXES, sizes) if s == 0 or s < -1]
  if bad:
    raise BadValueError(f"config.mesh.{bad[0]}={mesh_config[bad[0]]}: mesh sizes must be "
                        "positive, or -1 for 'the remaining devices'.")
  if len(free) > 1:
    raise BadValueError(f"config.mesh: only one axis may be -1, got {free} "
                        f"({dict(zip(MESH_AXES, sizes))}).")
  fixed = int(np.prod([s for s in sizes if s != -1]))
  if free:
    if num_devices % fixed:
      raise BadValueError(
          f"config.mesh: {dict(zip(MESH_AXES, sizes))} cannot fill {num_devices} devices: "
          f"the fixed axes' product {fixed} does not divide the device count.")
    sizes[MESH_AXES.index(free[0])] = num_devices // fixed
  elif fixed != num_devices:
    raise BadValueError(
        f"config.mesh: data*fsdp*tensor = {fixed} ({dict(zip(MESH_AXES, sizes))}) but "
        f"there are {num_devices} devices; set one axis to -1 or make the product match.")
  return tuple(sizes)


def create_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all devices, all hosts).

  Axis types are Auto: XLA's sharding propagation places the activations, guided by the
  logical constraints the model sets; the parameters' layouts come from the rules table.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(mesh_config, len(devices))
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  if len(devices) == jax.device_count():
    # make_mesh picks a device order matching the physical topology (ICI rings on TPU).
    return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)
  # A sub-mesh (e.g. one device of eight in tests): keep the given order.
  return jax.sharding.Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)
