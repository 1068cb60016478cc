"""The device mesh and how parameters and batches are laid out on it (JAX SPMD, GSPMD-style).

Parameters carry logical axis names (models/layers.py); LOGICAL_RULES maps them onto mesh axes: matrices
are split over "fsdp" along the model dimension (ZeRO-3 style, Rajbhandari et al., 2020) and over
"tensor" along heads / MLP / vocabulary (Megatron-LM, Shoeybi et al., 2019). A dimension that a mesh axis
does not divide stays replicated (logged once). The batch is split over ("data", "fsdp").
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from training.config import MeshConfig

_log = logging.getLogger(__name__)

AXES = ("data", "fsdp", "tensor", "context")
BATCH_AXES = ("data", "fsdp")
LOGICAL_RULES = {
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "head_dim": None,
    "indexer": None,
}


def maybe_initialize_distributed(coordinator: str = "", num_processes: int = 0, process_id: int = -1):
  """jax.distributed.initialize() when flags or the environment describe a multi-host job.

  Explicit flags win; otherwise JAX's own cluster detection (SLURM, Cloud TPU, JAX_COORDINATOR_ADDRESS)
  decides. A single-host run does nothing.
  """
  if coordinator:
    jax.distributed.initialize(coordinator, num_processes or None, process_id if process_id >= 0 else None)
  elif os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("SLURM_NTASKS", "1") not in ("", "1"):
    jax.distributed.initialize()


def make_mesh(config: MeshConfig, devices=None) -> jax.sharding.Mesh:
  """A mesh with axes (data, fsdp, tensor, context).

  The one -1 axis takes the devices left over; without a -1 the mesh uses the first data x fsdp x tensor
  x context devices (so a 1-device run on an 8-device host is `data=1`).
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = [getattr(config, a) for a in AXES]
  fixed = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % fixed:
      raise ValueError(f"mesh {dict(zip(AXES, sizes))}: {len(devices)} devices are not a multiple of {fixed}")
    sizes[sizes.index(-1)] = len(devices) // fixed
  if fixed > len(devices):
    raise ValueError(f"mesh {dict(zip(AXES, sizes))} needs {fixed} devices, but {len(devices)} are available")
  n = int(np.prod(sizes))
  if n < len(devices):
    _log.info("mesh %s uses %d of %d devices", dict(zip(AXES, sizes)), n, len(devices))
  return jax.make_mesh(tuple(sizes), AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES),
                       devices=devices[:n])


def logical_to_spec(names, shape, mesh: jax.sharding.Mesh) -> P:
  """Logical axis names of one array -> a PartitionSpec; undividable dimensions stay replicated."""
  if names is None:
    return P()
  out, used = [], set()
  for name, dim in zip(names, shape):
    axis = LOGICAL_RULES.get(name) if name is not None else None
    if name is not None and name not in LOGICAL_RULES:
      raise ValueError(f"unknown logical axis name {name!r}; known: {sorted(LOGICAL_RULES)}")
    if axis is not None and (axis in used or dim % mesh.shape[axis]):
      if mesh.shape[axis] > 1:
        _log.info("replicating a dimension of size %d (%s): mesh axis %r has size %d", dim, name, axis,
                  mesh.shape[axis])
      axis = None
    if axis is not None:
      used.add(axis)
    out.append(axis)
  return P(*out)


def param_shardings(abstract_params: nnx.State, mesh: jax.sharding.Mesh):
  """NamedShardings (a pure dict mirroring nnx.to_pure_dict) from the params' logical axis metadata."""
  specs = nnx.get_partition_spec(abstract_params)
  flat_specs = dict(nnx.to_flat_state(specs))
  flat_shapes = dict(nnx.to_flat_state(abstract_params))
  out = {}
  for path, spec in flat_specs.items():
    spec = spec.get_value() if hasattr(spec, "get_value") else spec
    shape = flat_shapes[path]
    shape = (shape.get_value() if hasattr(shape, "get_value") else shape).shape
    out[path] = NamedSharding(mesh, logical_to_spec(tuple(spec) if spec is not None else None, shape, mesh))
  return _unflatten(out)


def optimizer_shardings(abstract_opt_state, param_sharding_tree: dict, mesh: jax.sharding.Mesh):
  """Shardings for optimizer state: a leaf whose key path ends with a parameter's path (Adam's mu and nu)
  takes that parameter's sharding; everything else (step counts) is replicated."""
  by_path = dict(_flat_items(param_sharding_tree))

  def pick(path, leaf):
    keys = tuple(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)
    for i in range(len(keys)):
      s = by_path.get(keys[i:])
      if s is not None and len(s.spec) <= len(leaf.shape):
        return s
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(pick, abstract_opt_state)


def _flat_items(tree: dict, prefix=()):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _flat_items(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def _unflatten(flat: dict[tuple, object]) -> dict:
  tree: dict = {}
  for path, leaf in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = leaf
  return tree


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int = 2, leading: int = 0) -> NamedSharding:
  """Rows split over (data, fsdp), tokens over context; `leading` unsplit axes in front (grad accumulation)."""
  return NamedSharding(mesh, P(*([None] * leading), BATCH_AXES, "context", *([None] * (ndim - leading - 2))))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """This host's rows -> global jax.Arrays (one host: the whole batch)."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
