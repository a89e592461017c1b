"""plum.batch_cycle with fake neighbours: a transactional broker in memory and a processor
whose local state commits only after the broker did (like the SID index)."""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass, field

import pytest

from plum.batch_cycle import (
    BatchCycle,
    CycleConfig,
    GroupJoinTimeout,
    Processed,
    Record,
    next_offsets,
)
from plum.runtime import Runtime, RuntimeConfig

TOPIC = "in"


@dataclass
class FakeBroker:
    """One input topic, an output log with transactions, and one group's committed offsets."""

    inputs: list[Record]
    log: list[tuple[int, str, bytes | None, bytes]] = field(default_factory=list)  # (tx, ...)
    committed_txs: set[int] = field(default_factory=set)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    open_tx: int | None = None
    next_tx: int = 0

    def read_committed(self) -> list[bytes]:
        return [value for tx, _, _, value in self.log if tx in self.committed_txs]

    def fence(self) -> None:
        """A new producer of the same transactional id: the open transaction is aborted."""
        self.open_tx = None


def records(values: list[bytes], partition: int = 0) -> list[Record]:
    return [Record(TOPIC, partition, i, v, None) for i, v in enumerate(values)]


class FakeIO:
    """The TransactionalIO contract over a FakeBroker."""

    def __init__(self, broker: FakeBroker, thread_safe: bool = False, assigned: bool = True):
        broker.fence()
        self.broker = broker
        self._thread_safe = thread_safe
        self._assigned = assigned
        self.position = {
            p: broker.offsets.get((TOPIC, p), 0) for p in {r.partition for r in broker.inputs}
        }
        self.events: list[str] = []
        self.commit_threads: list[str] = []
        self.fail_commit: BaseException | None = None  # raised after the outputs are produced
        self.hold_commit: threading.Event | None = None  # a commit waits for this
        self.closed = False
        self.on_poll = lambda: None

    @property
    def assigned(self) -> bool:
        return self._assigned

    @property
    def thread_safe(self) -> bool:
        return self._thread_safe

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        self.on_poll()
        out = [r for r in self.broker.inputs if r.offset >= self.position.get(r.partition, 0)][
            :max_records
        ]
        for r in out:
            self.position[r.partition] = r.offset + 1
        if not out:
            threading.Event().wait(min(timeout_s, 0.01))  # an empty poll takes its timeout
        return out

    def commit(self, outputs, offsets) -> None:
        self.commit_threads.append(threading.current_thread().name)
        self.events.append("commit begins")
        if self.hold_commit is not None:
            assert self.hold_commit.wait(10), "the commit was never released"
        broker = self.broker
        tx, broker.next_tx = broker.next_tx, broker.next_tx + 1
        broker.open_tx = tx
        broker.log.extend((tx, topic, key, value) for topic, key, value in outputs)
        if self.fail_commit is not None:
            raise self.fail_commit  # produced, never committed, nothing aborts it
        broker.committed_txs.add(tx)
        broker.offsets.update(offsets)
        broker.open_tx = None
        self.events.append("commit ends")

    def close(self) -> None:
        self.closed = True


class Dedupe:
    """Publishes each value once: its `seen` state commits only after the broker did."""

    def __init__(self, events: list[str] | None = None):
        self.seen: set[bytes] = set()
        self.events = events if events is not None else []
        self.started = self.closed = False
        self.on_process = lambda: None

    def start(self) -> None:
        self.started = True

    def process(self, batch) -> Processed:
        self.on_process()
        self.events.append(f"process {[r.value for r in batch]}")
        fresh = sorted({r.value for r in batch} - self.seen)

        def committed() -> None:
            self.seen.update(fresh)
            self.events.append("local commit")

        def aborted() -> None:
            self.events.append("local rollback")

        return Processed([("out", None, v) for v in fresh], committed, aborted)

    def describe(self) -> str:
        return f"{len(self.seen)} seen"

    def close(self) -> None:
        self.closed = True


def started(cycle: BatchCycle) -> BatchCycle:
    cycle.start()
    return cycle


NEVER = threading.Event()


def test_next_offsets_are_one_past_the_highest_offset_of_each_partition():
    batch = [Record("a", 0, 5, b"", None), Record("a", 0, 3, b"", None), Record("b", 1, 9, b"", 0)]
    assert next_offsets(batch) == {("a", 0): 6, ("b", 1): 10}


def test_a_batch_is_published_with_its_offsets_before_local_state_commits():
    broker = FakeBroker(records([b"x", b"y", b"x"]))
    io = FakeIO(broker)
    proc = Dedupe(io.events)
    cycle = started(BatchCycle(proc, lambda: io, CycleConfig(batch_size=3, batch_time_ms=50)))
    step = cycle.step(NEVER)
    assert step.done == 3 and step.active
    assert io.events == [
        "process [b'x', b'y', b'x']",
        "commit begins",
        "commit ends",
        "local commit",
    ]
    assert broker.read_committed() == [b"x", b"y"]
    assert broker.offsets == {(TOPIC, 0): 3}


def test_a_failed_commit_rolls_local_state_back_and_stops_the_cycle():
    broker = FakeBroker(records([b"x"]))
    io = FakeIO(broker)
    io.fail_commit = RuntimeError("broker gone")
    proc = Dedupe(io.events)
    cycle = started(BatchCycle(proc, lambda: io, CycleConfig(batch_size=1)))
    with pytest.raises(RuntimeError, match="broker gone"):
        cycle.step(NEVER)
    assert io.events[-1] == "local rollback" and "local commit" not in io.events
    assert proc.seen == set() and broker.offsets == {} and broker.read_committed() == []


def test_overlapped_commit_runs_while_the_next_batch_is_polled_and_local_state_waits_for_it():
    broker = FakeBroker(records([b"a", b"b", b"c", b"d"]))
    io = FakeIO(broker, thread_safe=True)
    io.hold_commit = threading.Event()
    proc = Dedupe(io.events)
    cycle = started(BatchCycle(proc, lambda: io, CycleConfig(batch_size=2, batch_time_ms=50)))
    assert cycle.step(NEVER).done == 2  # the first commit is held in its worker thread
    polls: list[str] = []

    def poll_while_held():
        held = not io.hold_commit.is_set()
        polls.append("poll while the commit is held" if held else "poll")
        io.hold_commit.set()

    io.on_poll = poll_while_held
    assert cycle.step(NEVER).done == 2
    cycle.checkpoint()  # the second commit ends, then its local commit
    assert polls[0] == "poll while the commit is held"
    assert io.events == [
        "process [b'a', b'b']",
        "commit begins",
        "commit ends",
        "local commit",  # before the next batch reaches the processor
        "process [b'c', b'd']",
        "commit begins",
        "commit ends",
        "local commit",
    ]
    assert all(name == "kafka-commit" for name in io.commit_threads)
    assert broker.read_committed() == [b"a", b"b", b"c", b"d"]


def test_an_io_that_is_not_thread_safe_commits_in_the_polling_thread():
    broker = FakeBroker(records([b"a", b"b"]))
    io = FakeIO(broker, thread_safe=False)
    cycle = started(BatchCycle(Dedupe(), lambda: io, CycleConfig(batch_size=1)))
    cycle.step(NEVER)
    cycle.step(NEVER)
    assert io.commit_threads == [threading.current_thread().name] * 2


def test_an_empty_poll_is_idle_only_once_partitions_are_assigned():
    joining = FakeIO(FakeBroker([]), assigned=False)
    cycle = started(BatchCycle(Dedupe(), lambda: joining, CycleConfig(batch_time_ms=20)))
    assert cycle.step(NEVER).active  # still joining the group: not idleness
    assigned = FakeIO(FakeBroker([]), assigned=True)
    cycle = started(BatchCycle(Dedupe(), lambda: assigned, CycleConfig(batch_time_ms=20)))
    step = cycle.step(NEVER)
    assert step.done == 0 and not step.active


def test_a_group_join_that_never_completes_fails_with_that_reason_instead_of_waiting_forever():
    never_assigned = FakeIO(FakeBroker([]), assigned=False)
    config = CycleConfig(batch_time_ms=5, join_timeout_s=0.05)
    cycle = started(BatchCycle(Dedupe(), lambda: never_assigned, config))
    with pytest.raises(GroupJoinTimeout, match="group join did not complete"):
        for _ in range(1000):  # 5 ms per poll: the deadline passes within ~10 steps
            cycle.step(NEVER)


@pytest.mark.parametrize("commit_fails", [False, True])
def test_closing_after_an_error_keeps_local_state_only_if_the_broker_committed(commit_fails):
    broker = FakeBroker(records([b"a", b"b"]))
    io = FakeIO(broker, thread_safe=True)
    if commit_fails:
        io.fail_commit = RuntimeError("commit failed")
    proc = Dedupe(io.events)
    cycle = started(BatchCycle(proc, lambda: io, CycleConfig(batch_size=1, batch_time_ms=20)))
    cycle.step(NEVER)  # batch a: its commit runs in the background

    def crash():
        raise KeyboardInterrupt  # the process is going down while a commit is in flight

    io.on_poll = crash
    with pytest.raises(KeyboardInterrupt):
        cycle.step(NEVER)
    cycle.close()
    assert io.closed and proc.closed
    assert proc.seen == (set() if commit_fails else {b"a"})
    assert io.events[-1] == ("local rollback" if commit_fails else "local commit")


def test_process_now_commits_one_batch_synchronously():
    broker = FakeBroker([])
    io = FakeIO(broker, thread_safe=True)
    proc = Dedupe(io.events)
    cycle = started(BatchCycle(proc, lambda: io))
    cycle.process_now(records([b"a"]))
    assert io.events[-1] == "local commit" and broker.read_committed() == [b"a"]


def test_sigterm_mid_batch_finishes_the_batch_commits_it_and_stops():
    broker = FakeBroker(records([b"a", b"b", b"c", b"d"]))
    io = FakeIO(broker, thread_safe=True)
    proc = Dedupe(io.events)
    stop = threading.Event()

    def terminated_while_processing():
        if not stop.is_set():
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.wait(10), "SIGTERM did not set stop"

    proc.on_process = terminated_while_processing
    cycle = BatchCycle(proc, lambda: io, CycleConfig(batch_size=2, batch_time_ms=50))
    result = Runtime(cycle, RuntimeConfig("test", progress_every_s=3600), stop=stop).run()
    assert result.reason == "stopped" and result.steps == 1 and result.done == 2
    # The batch in hand was finished and committed, with its offsets; nothing after it.
    assert io.events == ["process [b'a', b'b']", "commit begins", "commit ends", "local commit"]
    assert broker.read_committed() == [b"a", b"b"] and broker.offsets == {(TOPIC, 0): 2}
    assert io.closed and proc.closed


def test_a_crash_between_produce_and_commit_is_redone_by_a_fresh_cycle_without_duplicates():
    broker = FakeBroker(records([b"a", b"b", b"a", b"c"]))
    dying = FakeIO(broker, thread_safe=True)
    dying.fail_commit = SystemExit("died between produce and commit")
    first = Dedupe()
    cycle = BatchCycle(first, lambda: dying, CycleConfig(batch_size=4, batch_time_ms=20))
    with pytest.raises(SystemExit):
        Runtime(cycle, RuntimeConfig("dies", idle_exit_s=0.05)).run()
    assert [v for _, _, _, v in broker.log] == [b"a", b"b", b"c"]  # produced, not committed
    assert broker.read_committed() == [] and broker.offsets == {} and first.seen == set()

    # The restart: a fresh IO fences the dead transaction and reads from the committed offsets.
    io = FakeIO(broker, thread_safe=True)
    second = Dedupe()
    cycle = BatchCycle(second, lambda: io, CycleConfig(batch_size=4, batch_time_ms=20))
    assert Runtime(cycle, RuntimeConfig("restart", idle_exit_s=0.05)).run().reason == "idle"
    assert broker.read_committed() == [b"a", b"b", b"c"]  # each once
    assert broker.offsets == {(TOPIC, 0): 4} and second.seen == {b"a", b"b", b"c"}
