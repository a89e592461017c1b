"""Replay then backfill, end to end on the real broker and the real Flink job: a time range
of the live watches is copied into the replay topic (`plum replay copy`), and
`plum replay backfill` runs the job over it into `<output>.backfill-<id>`, exactly the
reference pipeline's output on the copied records."""

from __future__ import annotations

import sys
import time

import pytest

from streams.flink.job import load_flink_config
from streams.kafka.clients import make_producer, read_all
from streams.replay.copy import CopyRequest, copy_range
from tests import flink_support as fs

pytestmark = pytest.mark.integration

SEED = 23
EVENTS = 1500
# Kafka timestamps from an hour ago: within the watches topic's retention (7 days), so the
# broker's retention check cannot delete the records mid-test (a fixed 2023 base could).
BASE_MS = (int(time.time()) - 3600) * 1000


def _produce_timed(bootstrap: str, topic: str, stream) -> int:
    """The stream in order, the i-th record with Kafka timestamp BASE_MS + i; returns n."""
    producer = make_producer(bootstrap)
    for i, (p, key, value) in enumerate(stream):
        producer.send(topic, key=key, value=value, partition=p, timestamp_ms=BASE_MS + i)
    producer.flush(timeout=60)
    producer.close()
    return len(stream)


def test_backfill_over_a_copied_range_matches_the_reference(
    kafka_bootstrap, topics, topic_prefix, tmp_path
):
    cfg = load_flink_config(fs.TEST_CONFIG)
    stream = fs.build_stream(SEED, EVENTS, cfg.out_of_orderness_ms, cfg.window_size_ms)
    n = _produce_timed(kafka_bootstrap, topics.watches, stream)
    t1, t2 = BASE_MS + n // 5, BASE_MS + 4 * n // 5  # the middle 60% by Kafka timestamp
    result = copy_range(kafka_bootstrap, CopyRequest(topics.watches, topics.watches_replay, t1, t2))
    assert result.finished and result.copied == t2 - t1

    replayed = read_all(kafka_bootstrap, topics.watches_replay, timeout_s=60)
    assert len(replayed) == t2 - t1
    stored = sorted((r.partition, r.offset, r.value) for r in replayed)
    expected = fs.backfill_reference(stored, cfg, topics.watches_replay)
    assert expected.examples and expected.pairs and expected.dead

    def backfill(log_name: str) -> fs.JobProcess:
        return fs.JobProcess(
            [
                sys.executable,
                "-m",
                "plum.cli",
                "replay",
                "backfill",
                "--id",
                "t1",
                "--config",
                str(fs.TEST_CONFIG),
                "--bootstrap",
                kafka_bootstrap,
                "--topic-prefix",
                topic_prefix,
                "--checkpoint-dir",
                str(tmp_path / "ck"),
            ],
            tmp_path / log_name,
        )

    job = backfill("backfill.log")
    try:
        assert job.wait(timeout=240) == 0, job.tail()  # bounded: exits by itself
        fs.compare(fs.read_outputs(kafka_bootstrap, topics, suffix=".backfill-t1"), expected)
        # The live outputs were not written.
        assert read_all(kafka_bootstrap, topics.sft_examples) == []
    finally:
        job.stop()

    # The same id again would add a second copy of every output: refused.
    again = backfill("again.log")
    try:
        assert again.wait(timeout=120) == 1
        assert "already hold records" in again.tail()
    finally:
        again.stop()
