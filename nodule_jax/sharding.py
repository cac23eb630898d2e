"""Device mesh and shardings: one 'data' axis; parameters replicated, batches split."""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA = "data"
_DIST_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def maybe_initialize_distributed() -> bool:
  """Calls `jax.distributed.initialize()` when the multi-host variables are set.

  Must run before anything touches devices. Set JAX_COORDINATOR_ADDRESS (host:port),
  JAX_NUM_PROCESSES and JAX_PROCESS_ID (or run on a cluster JAX auto-detects, e.g. SLURM
  or Cloud TPU, with JAX_COORDINATOR_ADDRESS alone).
  """
  if not os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return False
  kwargs = {}
  if os.environ.get("JAX_NUM_PROCESSES"):
    kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
  if os.environ.get("JAX_PROCESS_ID"):
    kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
  # Cross-process collectives on CPU devices (harmless on GPU/TPU). Asking for the backend
  # here would initialise it, which initialize() forbids.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(os.environ["JAX_COORDINATOR_ADDRESS"], **kwargs)
  return True


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh over the first `num_devices` devices (default: all, across hosts)."""
  devices = jax.devices()
  n = num_devices or len(devices)
  if n > len(devices):
    raise ValueError(f"asked for {n} devices, have {len(devices)}")
  return jax.make_mesh((n,), (DATA,), axis_types=(AxisType.Auto,), devices=devices[:n])


def local_mesh() -> Mesh:
  """A 1-D mesh over this process's devices (work that each host does alone)."""
  devices = jax.local_devices()
  return jax.make_mesh((len(devices),), (DATA,), axis_types=(AxisType.Auto,), devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data', the rest replicated."""
  return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This host's slice of a batch -> global arrays sharded over 'data'.

  Every leaf: [B_local, ...] -> [B_local * process_count, ...].
  """
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def host_copy(tree):
  """A pytree of replicated global arrays -> numpy copies on this host (works on any
  process of a multi-host run: every host holds a full copy of a replicated array)."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)
