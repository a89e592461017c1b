"""Backfill progress: committed input positions against the bounded input's end offsets,
formatted by plum.runtime.Progress (the real Kafka run is in test_flink_job's backfill)."""

from __future__ import annotations

import pytest

from plum.runtime import Progress
from streams.flink.backfill_progress import BackfillProgress, offsets_done


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    "positions, done",
    [
        ({}, 0),  # nothing committed yet
        ({0: 40, 1: 10}, 50),
        ({0: 100, 1: 250}, 300),  # past the bound (records after the start): capped
        ({0: -1001, 1: 7}, 7),  # Kafka's "no offset" sentinel counts as none
        ({0: 100, 1: 200, 9: 50}, 300),  # a partition outside the input is ignored
    ],
)
def test_offsets_done_caps_each_partition_at_its_bound(positions, done):
    assert offsets_done({0: 100, 1: 200}, positions) == done


def test_the_progress_follows_the_committed_positions_and_survives_a_failed_read(caplog):
    caplog.set_level("INFO")
    clock = FakeClock()
    committed: list = [{}, {0: 30}, RuntimeError("broker busy"), {0: 60, 1: 40}, {0: 100, 1: 100}]

    def positions():
        got = committed.pop(0)
        if isinstance(got, Exception):
            raise got
        return got

    progress = Progress("flink backfill", "offsets", total=200, clock=clock, live=False)
    tracker = BackfillProgress({0: 100, 1: 100}, positions, 3600, progress=progress)
    try:
        assert tracker.poll_once() == 0
        clock.now = 10.0
        assert tracker.poll_once() == 30
        assert tracker.poll_once() == 30  # the read failed: the count stays
        clock.now = 20.0
        assert tracker.poll_once() == 100
        assert progress.line().endswith("50.0% done, 00:20 elapsed, ETA 00:20")
    finally:
        clock.now = 30.0
        tracker.close()  # a last read, then the final line
    assert progress.count == 200
    assert caplog.messages[-1] == (
        "flink backfill: 200 offsets (10.0/s now, 6.67/s overall) | done in 00:30"
    )
