"""Data parallelism with `jax.jit` + `NamedSharding` over a one-axis device mesh.

(`jax.pmap` has been in maintenance mode since JAX 0.8 and is implemented on top of `jit` and
`shard_map`; this project does not use it.) Parameters are replicated, batches are split along
their leading axis; jitted functions are written as single-device code and XLA partitions them.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None) -> jax.sharding.Mesh:
    devices = np.asarray(devices if devices is not None else jax.devices())
    return jax.sharding.Mesh(devices.reshape(-1), (DATA_AXIS,))


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def shard_batch(x, mesh: jax.sharding.Mesh):
    """Place a global batch on the mesh, split along axis 0 (must divide by the device count)."""
    n = mesh.devices.size
    if x.shape[0] % n:
        raise ValueError(
            f"batch of {x.shape[0]} does not split over {n} devices; use a multiple of {n}"
        )
    return jax.device_put(x, batch_sharding(mesh))


def replicate(tree, mesh: jax.sharding.Mesh):
    return jax.device_put(tree, replicated(mesh))
