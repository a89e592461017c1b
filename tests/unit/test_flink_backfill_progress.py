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


def test_a_finished_backfill_waits_for_its_last_commit_before_the_final_line():
    """The last checkpoint's offset commit is asynchronous: it can land just after the job
    ends, so `settle` reads again until the ends are reached (or it times out)."""
    committed: list = [{}, {0: 40}, {0: 100, 1: 100}]
    reads = []

    def positions():
        reads.append(1)
        return committed.pop(0) if committed else {0: 100, 1: 100}

    tracker = BackfillProgress({0: 100, 1: 100}, positions, 3600)
    try:
        assert tracker.settle(timeout_s=30, every_s=0.01) == 200
        assert len(reads) == 3  # stops reading once the ends are reached
    finally:
        tracker.close()


def test_settle_gives_up_after_its_timeout_with_what_was_committed():
    tracker = BackfillProgress({0: 100}, lambda: {0: 10}, 3600)
    try:
        assert tracker.settle(timeout_s=0.05, every_s=0.01) == 10
    finally:
        tracker.close()
