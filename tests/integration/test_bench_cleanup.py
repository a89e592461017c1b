"""A benchmark stopped with SIGTERM stops the private broker it started and removes its files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plum.config import REPO_ROOT

pytestmark = pytest.mark.integration


def _broker_pids(state_dir: Path) -> list[int]:
    """Processes whose command line names a directory under `state_dir` (the broker's)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(state_dir) in cmdline and "java" in cmdline:
                pids.append(int(entry.name))
    return pids


@pytest.mark.parametrize("when", ["starting", "running"])
def test_a_terminated_flink_bench_leaves_no_broker_and_no_files(tmp_path, when):
    """Stopped while its broker starts, or once its input is in the topic (measuring)."""
    work = tmp_path / "tmp"
    work.mkdir()
    log = tmp_path / "bench.log"
    bench = subprocess.Popen(
        [sys.executable, "-m", "plum.cli", "bench", "flink", "--events", "20000", "--repeats", "1"],
        cwd=REPO_ROOT,
        env=dict(os.environ, TMPDIR=str(work)),
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    try:
        deadline = time.monotonic() + 120
        while not _broker_pids(work) or (
            when == "running" and "watch-topic records" not in log.read_text(errors="replace")
        ):
            assert bench.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        time.sleep(1)
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(timeout=120) == 128 + signal.SIGTERM
        assert _broker_pids(work) == []
        assert [p.name for p in work.iterdir()] == []
    finally:
        if bench.poll() is None:
            bench.kill()
        for pid in _broker_pids(work):
            os.kill(pid, signal.SIGKILL)
