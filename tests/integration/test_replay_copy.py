"""`plum replay copy` against the real broker: the range, exactly once across reruns, an
injected failure between produce and commit, a fenced zombie, and a SIGKILLed copy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime

import pytest
from confluent_kafka import KafkaException

from plum.config import REPO_ROOT
from streams.kafka.clients import make_producer, read_all
from streams.replay.copy import ORIGIN_HEADER, CopyOptions, CopyRequest, copy_range

pytestmark = pytest.mark.integration

# The records' Kafka timestamps start an hour ago: within the topic's retention (7 days),
# so the broker's retention check cannot delete them mid-test (with a fixed 2023 base it
# did, once, between a copy and its rerun).
BASE_MS = (int(time.time()) - 3600) * 1000
PARTITIONS = 4


def _produce(bootstrap: str, topic: str, n: int) -> list[tuple]:
    """n records round robin over the partitions, timestamps BASE_MS + 10 ms * i, some with
    headers, one tombstone; returns (partition, offset, key, value, ts, headers) as stored."""
    producer = make_producer(bootstrap)
    sent = []
    for i in range(n):
        p = i % PARTITIONS
        key = f"user-{i % 37}".encode()
        value = None if i == 7 else f'{{"i": {i}}}'.encode()
        headers = [("trace", f"t{i}".encode())] if i % 3 == 0 else []
        ts = BASE_MS + 10 * i
        fut = producer.send(
            topic, key=key, value=value, partition=p, timestamp_ms=ts, headers=headers
        )
        sent.append((fut, p, key, value, ts, headers))
    producer.flush(timeout=60)
    out = []
    for fut, _p, key, value, ts, headers in sent:
        md = fut.get(timeout=30)
        out.append((md.partition, md.offset, key, value, ts, headers))
    producer.close()
    return sorted(out)


def iso_utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _in_range(stored, from_ms, to_ms):
    return sorted(r for r in stored if from_ms <= r[4] < to_ms)


def _replayed(bootstrap: str, topic: str) -> list[tuple]:
    """(partition, origin offset, key, value, ts, headers without the origin) per record in
    each partition's order; asserts every record's origin header names its partition."""
    out = []
    for r in read_all(bootstrap, topic, timeout_s=60):
        headers = list(r.headers or [])
        origins = [v for k, v in headers if k == ORIGIN_HEADER]
        assert len(origins) == 1, headers
        _, p, offset = origins[0].decode().rsplit("/", 2)
        assert int(p) == r.partition
        rest = [(k, v) for k, v in headers if k != ORIGIN_HEADER]
        out.append((r.partition, int(offset), r.key, r.value, r.timestamp, rest))
    return sorted(out, key=lambda x: x[0])  # stable: each partition keeps its read order


def _assert_exactly(got, want):
    """Each wanted record once, in its partition's order, with key, value, ts, headers."""
    dup = [k for k, c in Counter((g[0], g[1]) for g in got).items() if c > 1]
    assert not dup, f"{len(dup)} records copied twice, e.g. {dup[:5]}"
    assert got == want, f"got {len(got)} records, want {len(want)}"


def test_copy_holds_exactly_the_range_in_order_and_a_rerun_copies_nothing(kafka_bootstrap, topics):
    stored = _produce(kafka_bootstrap, topics.watches, 400)
    t1, t2 = BASE_MS + 1000, BASE_MS + 3000  # records 100..299
    request = CopyRequest(topics.watches, topics.watches_replay, t1, t2)

    result = copy_range(kafka_bootstrap, request, CopyOptions(batch_records=64))
    want = _in_range(stored, t1, t2)
    assert result.finished and result.copied == len(want) == 200 and result.earlier == 0
    assert result.transactions >= 200 // 64
    _assert_exactly(_replayed(kafka_bootstrap, topics.watches_replay), want)
    assert all(r[3] is not None for r in want)  # the tombstone (i=7) is out of range

    again = copy_range(kafka_bootstrap, request)
    assert again.finished and again.copied == 0 and again.earlier == result.offsets
    _assert_exactly(_replayed(kafka_bootstrap, topics.watches_replay), want)

    # Another range of the same topic is another copy: it adds its own records.
    head = CopyRequest(topics.watches, topics.watches_replay, BASE_MS, BASE_MS + 100)
    assert copy_range(kafka_bootstrap, head).copied == 10  # records 0..9, the tombstone too
    replayed = _replayed(kafka_bootstrap, topics.watches_replay)
    assert sorted(replayed) == sorted(want + _in_range(stored, BASE_MS, BASE_MS + 100))
    assert any(r[3] is None for r in replayed)


def test_a_failure_between_produce_and_commit_leaves_nothing_and_a_rerun_completes(
    kafka_bootstrap, topics
):
    stored = _produce(kafka_bootstrap, topics.watches, 300)
    request = CopyRequest(topics.watches, topics.watches_replay, BASE_MS, BASE_MS + 10_000)

    def fail_third(copy):
        if copy.result.transactions == 2:
            copy.producer.flush()  # the records are on the broker, not committed
            raise RuntimeError("injected failure before commit")

    with pytest.raises(RuntimeError, match="injected"):
        copy_range(
            kafka_bootstrap, request, CopyOptions(batch_records=40, before_commit=fail_third)
        )
    committed = _replayed(kafka_bootstrap, topics.watches_replay)
    assert 0 < len(committed) <= 80  # two transactions of at most 40
    # The failed transaction's records reached the log, aborted.
    raw = read_all(kafka_bootstrap, topics.watches_replay, isolation_level="read_uncommitted")
    assert len(raw) > len(committed)

    result = copy_range(kafka_bootstrap, request, CopyOptions(batch_records=40))
    assert result.finished and result.earlier > 0
    assert result.copied + len(committed) == len(stored)
    _assert_exactly(_replayed(kafka_bootstrap, topics.watches_replay), stored)


def test_a_rerun_fences_a_zombie_copy_and_aborts_its_open_transaction(kafka_bootstrap, topics):
    stored = _produce(kafka_bootstrap, topics.watches, 200)
    request = CopyRequest(topics.watches, topics.watches_replay, BASE_MS, BASE_MS + 10_000)
    rerun = {}

    def stall_then_rerun(copy):
        # The first run hangs with its second transaction open (its records sent) while
        # a second run of the same copy starts and finishes it.
        if copy.result.transactions == 1 and not rerun:
            copy.producer.flush()
            rerun["result"] = copy_range(kafka_bootstrap, request, CopyOptions(batch_records=30))

    with pytest.raises(KafkaException):  # the zombie's commit: fenced
        copy_range(
            kafka_bootstrap, request, CopyOptions(batch_records=30, before_commit=stall_then_rerun)
        )
    assert rerun["result"].finished and rerun["result"].earlier > 0
    _assert_exactly(_replayed(kafka_bootstrap, topics.watches_replay), stored)


def _copy_process(bootstrap: str, prefix: str, log_path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [
        sys.executable,
        "-m",
        "plum.cli",
        "replay",
        "copy",
        "--topic",
        "plum.watches.v1",
        "--from",
        str(BASE_MS),
        "--to",
        iso_utc(BASE_MS + 3_600_000),  # the same range: times are ms or ISO-8601
        "--bootstrap",
        bootstrap,
        "--topic-prefix",
        prefix,
        *extra,
    ]
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def test_a_killed_copy_process_is_finished_by_running_it_again(
    kafka_bootstrap, topics, topic_prefix, tmp_path
):
    stored = _produce(kafka_bootstrap, topics.watches, 1600)
    log_path = tmp_path / "copy.log"
    # Throttled so that it is still copying when killed (batches of 100, ~4 s in all).
    proc = _copy_process(kafka_bootstrap, topic_prefix, log_path, "--max-rate", "400")
    try:
        deadline = time.monotonic() + 60
        while True:
            n = len(read_all(kafka_bootstrap, topics.watches_replay, timeout_s=30))
            if n > 0:
                break
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "no copied record after 60 s"
            time.sleep(0.1)
        assert proc.poll() is None, f"the copy ended before the kill:\n{log_path.read_text()}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    partial = _replayed(kafka_bootstrap, topics.watches_replay)
    assert 0 < len(partial) < len(stored)

    rerun = _copy_process(kafka_bootstrap, topic_prefix, log_path)
    assert rerun.wait(timeout=120) == 0, log_path.read_text()
    out = log_path.read_text()
    assert f"{len(stored) - len(partial)} records of {topics.watches}" in out, out[-2000:]
    assert "copied by an earlier run" in out
    _assert_exactly(_replayed(kafka_bootstrap, topics.watches_replay), stored)


def test_a_stopped_copy_commits_the_batch_in_hand_and_a_rerun_finishes(kafka_bootstrap, topics):
    stored = _produce(kafka_bootstrap, topics.watches, 200)
    request = CopyRequest(topics.watches, topics.watches_replay, BASE_MS, BASE_MS + 10_000)
    stop = threading.Event()

    def stop_in_second(copy):  # SIGTERM arriving mid-transaction
        if copy.result.transactions == 1:
            stop.set()

    first = copy_range(
        kafka_bootstrap, request, CopyOptions(batch_records=50, before_commit=stop_in_second), stop
    )
    assert not first.finished and first.transactions == 2 and first.copied == 100
    assert len(_replayed(kafka_bootstrap, topics.watches_replay)) == 100
    rest = copy_range(kafka_bootstrap, request)
    assert rest.finished and rest.copied == 100
    _assert_exactly(_replayed(kafka_bootstrap, topics.watches_replay), stored)

    # A range no record has reached yet is empty: nothing to copy, done at once.
    later = CopyRequest(topics.watches, topics.watches_replay, BASE_MS + 10**9, BASE_MS + 10**10)
    empty = copy_range(kafka_bootstrap, later)
    assert empty.finished and empty.offsets == 0 and empty.copied == 0
