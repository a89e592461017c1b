"""The Prometheus tools for tests: the real Debian binaries, or a failure that says how
to install them (never a silent skip: `make setup` installs them)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from monitoring.prometheus.server import PrometheusNotInstalled, find_executable

T = TypeVar("T")


def tool(name: str) -> str:
    try:
        return find_executable(name)
    except PrometheusNotInstalled as err:
        pytest.fail(str(err), pytrace=False)


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`promtool ARGS`; fails the test with promtool's own output when it exits non-zero."""
    done = subprocess.run(
        [tool("promtool"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )
    if done.returncode != 0:
        pytest.fail(
            f"promtool {' '.join(map(str, args))} exited {done.returncode}:\n"
            f"{done.stdout}\n{done.stderr}",
            pytrace=False,
        )
    return done


def wait_for(check: Callable[[], T | None], timeout_s: float, what: str, every_s: float = 0.2) -> T:
    """Poll `check` until it returns something other than None/False/empty; fail the test
    after `timeout_s` naming `what` and the last value seen."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s} s (last: {last!r})", pytrace=False)
        time.sleep(every_s)
