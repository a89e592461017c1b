"""The Prometheus tools for tests: the real Debian binaries, or a failure that says how
to install them (never a silent skip: `make setup` installs them)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from monitoring.prometheus.server import PrometheusNotInstalled, find_executable


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
