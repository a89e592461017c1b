"""Device mesh and shardings: data parallel x fully-sharded parameters (FSDP / ZeRO-3).

The mesh has two axes, `data` and `fsdp`. The batch is split over both (every device
sees different examples); each parameter (and its Adam moments) is split over `fsdp`
along its largest dimension that divides evenly, so a device holds 1/fsdp of the model
and XLA all-gathers a layer's weights when it needs them and reduce-scatters the
gradients. `data` replicas hold full copies of their fsdp shard group. Leaves too small
to split (norm scales, scalars) are replicated.

On one CPU or GPU the mesh is 1 x 1 and everything is replicated; tests run the same
code on several virtual CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=N).
Multi-host: call `initialize_distributed()` first; jax.devices() then spans all hosts.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

DATA, FSDP = "data", "fsdp"


def initialize_distributed() -> None:
    """jax.distributed.initialize() when launched as one process of a multi-host job.

    Detected from JAX's own variables (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
    JAX_PROCESS_ID) or a cluster JAX auto-detects (SLURM, TPU pods); a no-op otherwise.
    """
    if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("SLURM_JOB_ID"):
        jax.distributed.initialize()
        log.info(
            "jax.distributed: process %d of %d, %d devices in all",
            jax.process_index(),
            jax.process_count(),
            jax.device_count(),
        )


def make_mesh(data: int = 0, fsdp: int = 1, devices: list | None = None) -> Mesh:
    """A (data, fsdp) mesh over `devices` (default: all). data = 0 takes what is left."""
    devices = list(jax.devices() if devices is None else devices)
    if fsdp < 1 or data < 0:
        raise ValueError(f"mesh data={data} fsdp={fsdp}: need data >= 0, fsdp >= 1")
    if data == 0:
        if len(devices) % fsdp:
            raise ValueError(f"fsdp={fsdp} does not divide the {len(devices)} devices")
        data = len(devices) // fsdp
    if data * fsdp > len(devices):
        raise ValueError(f"mesh {data}x{fsdp} needs more than the {len(devices)} devices")
    grid = np.array(devices[: data * fsdp]).reshape(data, fsdp)
    return Mesh(grid, (DATA, FSDP))


def _leaf_spec(shape: tuple[int, ...], fsdp: int) -> PartitionSpec:
    if fsdp == 1 or not shape:
        return PartitionSpec()
    # the largest dimension that splits evenly; ties go to the first (e.g. the vocab rows)
    best = max(
        (d for d in range(len(shape)) if shape[d] % fsdp == 0 and shape[d] >= fsdp),
        key=lambda d: shape[d],
        default=None,
    )
    if best is None:
        return PartitionSpec()
    spec: list[str | None] = [None] * len(shape)
    spec[best] = FSDP
    return PartitionSpec(*spec)


def state_shardings(tree: Any, mesh: Mesh) -> Any:
    """A NamedSharding per leaf of `tree` (arrays or ShapeDtypeStructs) by the FSDP rule."""
    fsdp = mesh.shape[FSDP]
    return jax.tree.map(lambda x: NamedSharding(mesh, _leaf_spec(tuple(x.shape), fsdp)), tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows split over every device of the mesh; time not split."""
    return NamedSharding(mesh, PartitionSpec((DATA, FSDP)))


def mesh_size(mesh: Mesh) -> int:
    return int(np.prod(list(mesh.shape.values())))
