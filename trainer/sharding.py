"""Device mesh and shardings: data parallel x fully-sharded parameters (FSDP / ZeRO-3).

The mesh has two axes, `data` and `fsdp`. The batch is split over both (every device
sees different examples); each parameter (and its Adam moments) is split over `fsdp`
along its largest dimension that divides evenly, so a device holds 1/fsdp of the model
and XLA all-gathers a layer's weights when it needs them and reduce-scatters the
gradients. `data` replicas hold full copies of their fsdp shard group. Leaves too small
to split (norm scales, scalars) are replicated.

On one CPU or GPU the mesh is 1 x 1 and everything is replicated; tests run the same
code on several virtual CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=N).

Multi-process (several hosts, or several processes on one machine): every process calls
`initialize_distributed(coordinator, num_processes, process_id)` before any other JAX
use; jax.devices() then lists every process's devices, in process order, and the mesh
spans them all. Each process builds only its share of a global batch (its rows, in
process order: process 0's rows come first) and `global_batch` assembles the global
array from those shares; the jitted step then sees one global batch, so the loss and the
gradients are means over all processes' rows. On CPU the cross-process collectives are
gloo's (JAX's default CPU collectives since 0.5; nothing to configure).
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


def initialize_distributed(
    coordinator: str = "", num_processes: int = 1, process_id: int = 0, timeout_s: int = 300
) -> None:
    """jax.distributed.initialize() when this is one process of a multi-process job.

    Explicit: `num_processes` > 1, with the coordinator's HOST:PORT (process 0 serves it)
    and this process's id. Otherwise detected from JAX's own variables
    (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) or a cluster JAX
    auto-detects (SLURM, TPU pods); a no-op when there is none. Must run before any
    other JAX call (the first one fixes the backend and its device list).
    """
    if num_processes > 1:
        if not coordinator:
            raise ValueError(f"num_processes={num_processes} needs a coordinator HOST:PORT")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"process_id={process_id} is not in [0, {num_processes})")
        jax.distributed.initialize(
            coordinator, num_processes, process_id, initialization_timeout=timeout_s
        )
    elif os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("SLURM_JOB_ID"):
        jax.distributed.initialize()
    else:
        return
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


def local_rows(global_rows: int) -> int:
    """Rows of a global batch of `global_rows` this process builds (its equal share)."""
    n = jax.process_count()
    if global_rows % n:
        raise ValueError(f"batch of {global_rows} rows does not split over {n} processes")
    return global_rows // n


def global_batch(arrays: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """The global batch from this process's rows: one process, a plain device_put; several,
    each process's rows in process order (jax.make_array_from_process_local_data)."""
    if jax.process_count() == 1:
        return jax.device_put(arrays, sharding)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in arrays.items()}


def place(tree: Any, shardings: Any) -> Any:
    """`tree` laid out by `shardings`. Across processes device_put of an array already on
    the devices fails (jax 0.10: "input arrays must have one shard each"), so there the
    layout is changed by an identity jit, which also leaves an array already in place as
    it is."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)
    return jax.jit(lambda t: t, out_shardings=shardings)(tree)
