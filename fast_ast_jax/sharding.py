"""Device mesh, shardings and multi-host setup.

One mesh axis, "data", over all devices of all hosts. Batches are split along it;
parameters are replicated by default, or ("fsdp") each large array is split along its
largest dimension that the device count divides, so memory per device shrinks with scale.
"""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"


_initialized = False


def initialize_distributed(enabled: bool) -> None:
    """Multi-host: `jax.distributed.initialize()` (docs/MULTIHOST.md).

    Cluster settings come from the environment: auto-detected on Cloud TPU, SLURM, Open MPI
    and Kubernetes; elsewhere JAX_COORDINATOR_ADDRESS (read by JAX) plus JAX_NUM_PROCESSES
    and JAX_PROCESS_ID (read here). CPU processes exchange data with gloo. Must run before
    anything touches a JAX backend (so no jax.process_count() here).
    """
    global _initialized
    if enabled and not _initialized:
        kwargs = {name: int(os.environ[var]) for name, var in
                  (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID"))
                  if os.environ.get(var)}
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU backend only
        jax.distributed.initialize(**kwargs)
        _initialized = True


def make_mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()), (DATA,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over "data"."""
    return NamedSharding(mesh, P(DATA))


def param_shardings(tree, mesh: Mesh, *, mode: str = "replicate", min_size: int = 2 ** 14):
    """A sharding per leaf of `tree` (arrays or ShapeDtypeStructs).

    mode: "replicate", or "fsdp": leaves with >= `min_size` elements are split along their
    largest dimension divisible by the number of devices (the rest stay replicated).
    """
    if mode not in ("replicate", "fsdp"):
        raise ValueError(f"param sharding {mode!r} must be 'replicate' or 'fsdp'")
    n = mesh.devices.size

    def one(leaf):
        shape = getattr(leaf, "shape", ())
        if mode == "replicate" or n == 1 or int(np.prod(shape)) < min_size:
            return NamedSharding(mesh, P())
        dims = sorted(range(len(shape)), key=lambda d: -shape[d])
        for d in dims:
            if shape[d] % n == 0:
                spec = [None] * len(shape)
                spec[d] = DATA
                return NamedSharding(mesh, P(*spec))
        return NamedSharding(mesh, P())

    return jax.tree.map(one, tree)


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This host's batch slice -> global arrays sharded along "data"."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
