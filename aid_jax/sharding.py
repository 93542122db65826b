"""Data parallelism with `jax.jit` + `NamedSharding` over a one-axis device mesh.

(`jax.pmap` has been in maintenance mode since JAX 0.8 and is implemented on top of `jit` and
`shard_map`; this project does not use it.) Parameters are replicated, batches are split along
their leading axis; jitted functions are written as single-device code and XLA partitions them.

Several processes (aid_jax.distributed): the mesh holds every process's devices (process 0's
first), a batch is split over devices × processes, and each process puts in its own contiguous
block of rows (``train_loop.global_batch``). An array split over several processes cannot be
read whole on one (``np.asarray`` raises): what the host reads, e.g. validation samples, is
computed with replicated outputs (:func:`replicated_outputs`).
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


def describe(mesh: jax.sharding.Mesh) -> str:
    """``"8 devices"``, or ``"8 devices (2 processes × 4)"`` when the mesh spans processes."""
    n = mesh.devices.size
    processes = len({d.process_index for d in mesh.devices.flat})
    if processes == 1:
        return f"{n} devices"
    return f"{n} devices ({processes} processes × {n // processes})"


def check_batch(size: int, mesh: jax.sharding.Mesh, what: str = "batch") -> None:
    """ValueError saying what to change unless a global batch of ``size`` rows splits evenly
    over the mesh's devices (of every process)."""
    n = mesh.devices.size
    if size % n:
        raise ValueError(
            f"a {what} of {size} does not split over {describe(mesh)}; use a multiple of {n}"
        )


def check_local_rows(rows: int, mesh: jax.sharding.Mesh) -> None:
    """ValueError unless this process's ``rows`` split over its own devices of the mesh."""
    local = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
    if local == 0 or rows % local:
        raise ValueError(
            f"this process's {rows} rows of the batch do not split over its {local} devices "
            f"of the mesh ({describe(mesh)}); the global batch size must be a multiple of "
            f"{mesh.devices.size}"
        )


def shard_batch(x, mesh: jax.sharding.Mesh):
    """Place a global batch on the mesh, split along axis 0 (must divide by the device count).
    Several processes: each passes the same whole ``x`` and keeps its own rows."""
    check_batch(x.shape[0], mesh)
    return jax.device_put(x, batch_sharding(mesh))


def replicate(tree, mesh: jax.sharding.Mesh):
    return jax.device_put(tree, replicated(mesh))


def replicated_outputs(fn, mesh: jax.sharding.Mesh):
    """``fn`` jitted with every output replicated on ``mesh``: each process can read the outputs
    whole (``np.asarray``), also when the inputs are split over several processes."""
    return jax.jit(fn, out_shardings=replicated(mesh))
