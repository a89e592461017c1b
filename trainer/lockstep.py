"""Trainer processes in lockstep (jax.distributed): what they agree on, and how.

Every jitted step over a multi-process mesh and every orbax save is a collective: all
processes must make the same calls in the same order, or the job hangs. So the
decisions a single process makes alone are taken jointly, one small all-gather each:

    end of the run       the runtime asks `agree_on_end` before each step: one process
                         stopped (SIGTERM) or idle is enough for all to stop, checkpoint
                         and exit together
    this step            `Lockstep.round`: does every process have its batch? (a process
                         holding one waits for the others at most `wait_s`, then the step
                         goes ahead with padding rows for the late ones); is a
                         time-based checkpoint due on any process?
    a checkpoint's meta  `allgather_json`: each process's input position and counters,
                         which process 0 writes into the one checkpoint's meta

Input: each process reads its own partitions of the fresh-examples topic (partition p
belongs to process p % num_processes: `TopicSource(share=...)`) and builds its own rows of
the global batch. Offsets of different processes never overlap, so the checkpoint stores
their union, as one process would, and a restart (with any number of processes) resumes
each partition where the last checkpoint left it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

END_REASONS = (None, "stopped", "idle")  # index = code; a lower code never wins over a higher


def allgather_ints(values: Sequence[int]) -> np.ndarray:
    """[process, len(values)] int32: every process's `values` (each must pass as many)."""
    local = np.asarray(values, dtype=np.int32)
    return np.asarray(multihost_utils.process_allgather(local)).reshape(
        jax.process_count(), len(values)
    )


def allgather_json(obj: Any) -> list[Any]:
    """Every process's JSON-able `obj`, in process order."""
    raw = np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8)
    size = int(allgather_ints([raw.size]).max())
    padded = np.zeros(size, np.uint8)
    padded[: raw.size] = raw
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(-1, size)
    return [json.loads(bytes(row).rstrip(b"\0").decode()) for row in rows]


def agree_on_end(wish: str | None) -> str | None:
    """The runtime's end-of-run decision taken by all processes: "stopped" if any process
    stopped, else "idle" if any is idle, else None (go on)."""
    codes = allgather_ints([END_REASONS.index(wish)])
    return END_REASONS[int(codes.max())]


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier `name`."""
    multihost_utils.sync_global_devices(name)


@dataclass(frozen=True)
class Round:
    """What the processes decided for one step."""

    go: bool  # train (or move positions) now; False: hold the batches, ask again
    rows: int  # real rows over all processes (0: no optimizer step, positions only)
    active: bool  # any process got Kafka input
    checkpoint_due: bool  # a time-based checkpoint is due on some process


class Lockstep:
    """One round per step of the continuous trainer across processes."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s

    def round(self, held_since: float | None, rows: int, active: bool, time_due: bool) -> Round:
        """`held_since`: when this process got the batch it holds (None: no batch)."""
        held_ms = -1 if held_since is None else int((time.monotonic() - held_since) * 1000)
        table = allgather_ints([held_ms, rows, int(active), int(time_due)])
        held, all_rows = table[:, 0], table[:, 1]
        have = held >= 0
        go = bool(have.all() or (held >= self.wait_s * 1000).any())
        return Round(
            go=go,
            rows=int(all_rows[have].sum()),
            active=bool(table[:, 2].any()),
            checkpoint_due=bool(table[:, 3].any()),
        )
