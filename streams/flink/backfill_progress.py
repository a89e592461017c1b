"""Progress of `plum flink run --backfill`: how much of the replay topic the job has done.

A backfill's Kafka source is bounded at the replay topic's end offsets when the job
starts ("scan.bounded.mode" latest-offset) and commits its read positions to its consumer
group at every completed checkpoint (Flink's default commit.offsets.on.checkpoint), which
is also when the backfill's output becomes visible downstream. So the committed positions
against those end offsets say how much input is read AND written out; the runtime's
Progress formats it (rate, ETA; a live bar on a terminal). Offsets, not records: a
transaction marker takes an offset too.

The backfill group's offsets left by an earlier backfill say nothing about this one (it
reads from the earliest offset, never from them), so they are deleted at the start;
otherwise a re-run would read 100 % done before its first checkpoint.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from plum.runtime import Progress

log = logging.getLogger(__name__)

Offsets = Mapping[int, int]  # partition -> offset


def offsets_done(ends: Offsets, positions: Offsets) -> int:
    """Offsets of the bounded input read and committed: per partition, the committed
    position capped at the end the source is bounded by."""
    return sum(min(max(positions.get(p, 0), 0), end) for p, end in ends.items())


def topic_ends(bootstrap: str, topic: str) -> dict[int, int]:
    from streams.kafka.clients import end_offsets

    return {tp.partition: off for tp, off in end_offsets(bootstrap, [topic]).items()}


def group_positions(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The committed offsets of `group` on `topic` (none committed: {})."""
    from streams.kafka.admin import admin_client

    admin = admin_client(bootstrap, timeout_ms=10_000)
    try:
        got = admin.list_group_offsets({group: None}).get(group, {})
    finally:
        admin.close()
    return {tp.partition: meta.offset for tp, meta in got.items() if tp.topic == topic}


def forget_group(bootstrap: str, group: str) -> None:
    """Delete `group`'s committed offsets (a previous backfill's). A group that does not
    exist is fine, and so is a broker with no group coordinator yet (no group has ever
    committed there, so there is nothing to forget)."""
    from kafka.errors import KafkaError

    from streams.kafka.admin import admin_client

    admin = admin_client(bootstrap, timeout_ms=10_000)
    try:
        result = admin.delete_groups([group])
        # kafka-python 3 answers {group: error}; its docstring (and 2.x) a list of pairs
        pairs = result.items() if isinstance(result, dict) else result
        for name, error in pairs:
            if error is not None and getattr(error, "errno", 0):
                log.debug("backfill group %s not deleted: %s", name, error)
    except KafkaError as exc:
        log.debug("backfill group %s not deleted: %s", group, exc)
    finally:
        admin.close()


class BackfillProgress:
    """Polls the committed positions every `interval_s` in a daemon thread and feeds a
    Progress bounded by `ends`; `close()` logs the final line."""

    def __init__(
        self,
        ends: Offsets,
        positions: Callable[[], Offsets],
        interval_s: float = 10.0,
        name: str = "flink backfill",
        progress: Progress | None = None,
    ) -> None:
        self.ends = dict(ends)
        self._positions = positions
        self.interval_s = interval_s
        total = sum(self.ends.values())
        self.progress = progress or Progress(name, "offsets", interval_s, total=total or None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="backfill-progress", daemon=True)
        self._thread.start()

    def poll_once(self) -> int:
        """Read the positions once and move the count to them; returns offsets done."""
        try:
            done = offsets_done(self.ends, self._positions())
        except Exception as exc:  # the broker busy or gone: the next poll tries again
            log.debug("backfill progress: %s", exc)
            return self.progress.count
        if done > self.progress.count:
            self.progress.add(done - self.progress.count)
        return done

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll_once()
            self.progress.maybe_report()

    def settle(self, timeout_s: float, every_s: float = 0.2) -> int:
        """After the bounded job finished: read the positions until they reach the ends or
        `timeout_s` passes; returns offsets done. The job's last checkpoint commits its
        positions asynchronously, so they can reach the broker just after the job ends."""
        total = sum(self.ends.values())
        deadline = time.monotonic() + timeout_s
        done = self.poll_once()
        while done < total and time.monotonic() < deadline:
            time.sleep(every_s)
            done = self.poll_once()
        return done

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.poll_once()
        self.progress.report(final=True)


def start_backfill_progress(
    bootstrap: str, topic: str, group: str, interval_s: float
) -> BackfillProgress:
    """Forget the group's old offsets, read the input's ends, and start polling."""
    forget_group(bootstrap, group)
    ends = topic_ends(bootstrap, topic)
    log.info("backfill input %s: %d offsets in %d partitions", topic, sum(ends.values()), len(ends))
    return BackfillProgress(ends, lambda: group_positions(bootstrap, group, topic), interval_s)
