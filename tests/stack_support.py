"""The processes of a demo stack, found by its private state directory."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def stack_processes(state: Path) -> list[int]:
    """Pids of the processes run for the demo in `state` (its PLUM_STATE_DIR): the demo
    starts its children in sessions of their own, so they are found by environment."""
    marker = f"PLUM_STATE_DIR={state}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone, or not ours
            continue
    return found


def kill_leftovers(state: Path) -> list[int]:
    """SIGKILL whatever still runs for the demo in `state`; returns those pids."""
    left = stack_processes(state)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left
