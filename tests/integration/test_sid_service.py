"""The SID service against the real broker with a real (small, quickly trained) tokenizer,
run the way `plum tokenizer serve` runs it: `plum.runtime.Runtime(BatchCycle(service))`."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
import urllib.request
from collections import Counter

import numpy as np
import pytest
from confluent_kafka import KafkaException
from prometheus_client.parser import text_string_to_metric_families

from monitoring.metrics import CATALOGUE
from streams.contracts import schema
from streams.kafka.admin import committed_offsets
from streams.kafka.clients import make_producer, read_all
from streams.kafka.transactional import ConfluentIO
from tests.sid_service_support import serve_process, simulated_uploads, small_tokenizer
from tokenizer.checkpoint import save_tokenizer
from tokenizer.config import load_tokenizer_config
from tokenizer.index import SidIndex
from tokenizer.service import SidService, SidServiceConfig, reindex, service_runtime
from tokenizer.train import train_tokenizer

pytestmark = pytest.mark.integration

# The exactly-once tests run on both Kafka clients of streams.kafka.transactional.
both_clients = pytest.mark.parametrize("kafka_client", ["confluent", "kafka-python"])


@pytest.fixture(scope="module")
def uploads():
    """Simulated upload records: valid ones and malformed ones of every upload kind."""
    return simulated_uploads()


@pytest.fixture(scope="module")
def tokenizer(uploads):
    return small_tokenizer(uploads)


def service_config(
    bootstrap: str, topic_prefix: str, batch_size: int, kafka_client: str | None = None
) -> SidServiceConfig:
    """The service on the test's topics, batches by size or 100 ms, /metrics on a free port."""
    client = {} if kafka_client is None else {"kafka_client": kafka_client}
    return SidServiceConfig(
        bootstrap=bootstrap,
        topic_prefix=topic_prefix,
        batch_size=batch_size,
        batch_time_ms=100,
        metrics_port=0,
        **client,
    )


def produce(bootstrap: str, topic: str, records) -> None:
    producer = make_producer(bootstrap)
    for r in records:
        producer.send(topic, key=r.key, value=r.value)
    producer.flush()
    producer.close()


def run_service(config, tok, index, service_cls=SidService):
    """Serve until the uploads have been quiet for 3 s (the runtime's idle-exit)."""
    service = service_cls(config, tok, index)
    result = service_runtime(service, idle_exit_s=3.0).run()
    assert result.reason == "idle"
    assert result.done == service.totals.consumed
    return service.totals, service


def published(bootstrap: str, topics) -> list[schema.SidAssignment]:
    return [
        schema.decode_sid_assignment(r.value) for r in read_all(bootstrap, topics.sid_assignments)
    ]


@both_clients
def test_uploads_get_unique_sids_and_bad_uploads_are_dead_lettered(
    kafka_bootstrap, topics, topic_prefix, tmp_path, uploads, tokenizer, kafka_client
):
    produce(kafka_bootstrap, topics.uploads, uploads)
    config = service_config(kafka_bootstrap, topic_prefix, 200, kafka_client)
    index = SidIndex(tmp_path / "sids.sqlite")
    totals, _ = run_service(config, tokenizer, index)

    valid_ids = {schema.decode_upload(r.value).video_id for r in uploads if r.kind == "valid"}
    bad_kinds = Counter(r.kind for r in uploads if r.kind != "valid")
    assignments = published(kafka_bootstrap, topics)
    assert {a.video_id for a in assignments} == valid_ids
    assert len(assignments) == len(valid_ids)  # each video published exactly once
    sids = [a.sid for a in assignments]
    assert len(set(sids)) == len(sids)  # 100% unique after disambiguation
    assert all(len(s) == tokenizer.num_levels + 1 for s in sids)
    assert totals.collisions == sum(1 for s in sids if s[-1] > 0) > 0
    assert {a.sid_version for a in assignments} == {tokenizer.sid_version}
    assert index.all_sids(tokenizer.sid_version) == {a.video_id: a.sid for a in assignments}

    letters = [
        schema.decode_dead_letter(r.value) for r in read_all(kafka_bootstrap, topics.deadletter)
    ]
    assert Counter(d.reason for d in letters) == bad_kinds
    assert all(d.source_topic == topics.uploads for d in letters)
    assert {d.raw for d in letters} == {r.value for r in uploads if r.kind != "valid"}
    index.close()


@both_clients
def test_restart_and_replay_change_no_sid_and_duplicate_nothing(
    kafka_bootstrap, topics, topic_prefix, tmp_path, uploads, tokenizer, kafka_client
):
    config = service_config(kafka_bootstrap, topic_prefix, 100, kafka_client)
    half = len(uploads) // 2
    produce(kafka_bootstrap, topics.uploads, uploads[:half])
    index = SidIndex(tmp_path / "sids.sqlite")
    run_service(config, tokenizer, index)
    first = {a.video_id: a.sid for a in published(kafka_bootstrap, topics)}
    index.close()

    # The rest arrives, and the first half again (an upstream replay), to a restarted service.
    produce(kafka_bootstrap, topics.uploads, uploads[half:] + uploads[:half])
    index = SidIndex(tmp_path / "sids.sqlite")
    run_service(config, tokenizer, index)
    records = published(kafka_bootstrap, topics)
    index.close()
    by_video = Counter(a.video_id for a in records)
    assert max(by_video.values()) == 1
    final = {a.video_id: a.sid for a in records}
    assert {v: final[v] for v in first} == first
    assert len(set(final.values())) == len(final)


def test_lost_index_is_rebuilt_from_the_topic(
    kafka_bootstrap, topics, topic_prefix, tmp_path, uploads, tokenizer
):
    config = service_config(kafka_bootstrap, topic_prefix, 300)
    half = len(uploads) // 2
    produce(kafka_bootstrap, topics.uploads, uploads[:half])
    index = SidIndex(tmp_path / "a.sqlite")
    run_service(config, tokenizer, index)
    index.close()

    fresh = SidIndex(tmp_path / "b.sqlite")  # the old file is gone
    produce(kafka_bootstrap, topics.uploads, uploads[half:])
    run_service(config, tokenizer, fresh)
    records = published(kafka_bootstrap, topics)
    assert len({a.sid for a in records}) == len(records)
    assert fresh.all_sids(tokenizer.sid_version) == {a.video_id: a.sid for a in records}
    fresh.close()


class CommitThenCrash:
    """A TransactionalIO whose first transaction commits in Kafka, then the service dies
    (before the index commit that follows it)."""

    crashed = False

    def __init__(self, io):
        self.io = io

    def __getattr__(self, name):
        return getattr(self.io, name)

    def commit(self, outputs, next_offsets):
        self.io.commit(outputs, next_offsets)
        if not CommitThenCrash.crashed:
            CommitThenCrash.crashed = True
            raise RuntimeError("simulated crash after the Kafka commit")


class CrashAfterKafkaCommit(SidService):
    def open_io(self):
        return CommitThenCrash(super().open_io())


@both_clients
def test_crash_between_kafka_commit_and_index_commit_loses_nothing(
    kafka_bootstrap, topics, topic_prefix, tmp_path, uploads, tokenizer, kafka_client
):
    config = service_config(kafka_bootstrap, topic_prefix, 100, kafka_client)
    produce(kafka_bootstrap, topics.uploads, uploads)
    index = SidIndex(tmp_path / "sids.sqlite")
    CommitThenCrash.crashed = False
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_service(config, tokenizer, index, CrashAfterKafkaCommit)
    assert index.size(tokenizer.sid_version) == 0  # the index rolled back...
    run_service(config, tokenizer, index)  # ...and learns the published batch at restart
    records = published(kafka_bootstrap, topics)
    valid_ids = {schema.decode_upload(r.value).video_id for r in uploads if r.kind == "valid"}
    assert sorted(a.video_id for a in records) == sorted(valid_ids)
    assert len({a.sid for a in records}) == len(records)
    assert index.all_sids(tokenizer.sid_version) == {a.video_id: a.sid for a in records}
    index.close()


def test_reindex_writes_a_new_version_and_keeps_the_old(
    kafka_bootstrap, topics, topic_prefix, tmp_path, uploads, tokenizer, repo_root
):
    config = service_config(kafka_bootstrap, topic_prefix, 500)
    produce(kafka_bootstrap, topics.uploads, uploads)
    index = SidIndex(tmp_path / "sids.sqlite")
    run_service(config, tokenizer, index)
    index.switch(tokenizer.sid_version)
    old = index.all_sids(tokenizer.sid_version)

    valid = [schema.decode_upload(r.value) for r in uploads if r.kind == "valid"]
    names = sorted(valid[0].embeddings)
    emb = {n: np.asarray([u.embeddings[n] for u in valid], np.float32) for n in names}
    retrained = train_tokenizer(
        emb,
        None,
        load_tokenizer_config(
            repo_root / "configs" / "test.toml", env={}, steps=40, codebook_base=16, seed=1
        ),
    )
    assert retrained.sid_version != tokenizer.sid_version
    assert reindex(index, retrained, kafka_bootstrap, topics) == len(old)
    assert reindex(index, retrained, kafka_bootstrap, topics) == 0  # idempotent
    assert index.all_sids(tokenizer.sid_version) == old
    assert index.active_version == tokenizer.sid_version
    new = index.all_sids(retrained.sid_version)
    assert set(new) == set(old) and len(set(new.values())) == len(new)
    by_version = Counter(a.sid_version for a in published(kafka_bootstrap, topics))
    assert by_version == {tokenizer.sid_version: len(old), retrained.sid_version: len(old)}
    index.close()


def _scrape(port: int) -> dict[str, float]:
    """Sample name -> value (the last one of each name) of a /metrics page."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        s.name: s.value for family in text_string_to_metric_families(body) for s in family.samples
    }


SID_METRICS = [m.name for m in CATALOGUE if m.component == "sid_service"] + [
    "plum_deadletter_total"
]


def _missing(samples: dict[str, float]) -> list[str]:
    """SID service metrics without a sample yet, or no SID assigned yet."""
    missing = [
        name
        for name in SID_METRICS
        if not any(s == name or s.startswith(f"{name}_") for s in samples)
    ]
    return missing or ([] if samples.get("plum_sid_assignments_total", 0) > 0 else ["a SID"])


def test_plum_tokenizer_serve_serves_metrics_and_on_sigterm_commits_what_it_consumed(
    kafka_bootstrap, topics, topic_prefix, tmp_path, uploads, tokenizer
):
    save_tokenizer(tokenizer, tmp_path / "tokenizer")
    # Bad uploads first, so dead letters (and their metric) come with the first batches;
    # two uploads per batch, so SIGTERM finds a stream of small transactions in progress.
    ordered = sorted(uploads, key=lambda r: r.kind == "valid")
    produce(kafka_bootstrap, topics.uploads, ordered)
    index_path = tmp_path / "sids.sqlite"
    env = {"PLUM_SID_SERVICE__BATCH_SIZE": "2"}
    proc = serve_process(
        kafka_bootstrap, topic_prefix, tmp_path / "tokenizer", index_path, subprocess.PIPE, env
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 180  # JAX import, checkpoint restore, warm-up
        port, missing = None, SID_METRICS
        while missing:
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, f"metrics {missing} not served:\n{''.join(lines)}"
            found = [re.search(r"metrics on http://127.0.0.1:(\d+)/metrics", x) for x in lines]
            port = next((int(m.group(1)) for m in found if m), None)
            if port is not None:
                missing = _missing(_scrape(port))
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    assert any("SIGTERM received" in x for x in lines), "".join(lines)

    # What the group committed is exactly what was published: every valid upload below
    # the committed offsets has its SID in the topic, none above does, and the index
    # holds what the topic holds.
    group = f"{SidServiceConfig().group_id}-{tokenizer.sid_version}"
    committed = {
        tp.partition: offset
        for tp, offset in committed_offsets(kafka_bootstrap).get(group, {}).items()
        if tp.topic == topics.uploads
    }
    kinds = {r.value: r.kind for r in uploads}
    consumed = [
        r
        for r in read_all(kafka_bootstrap, topics.uploads)
        if r.offset < committed.get(r.partition, 0)
    ]
    assert consumed
    records = published(kafka_bootstrap, topics)
    assert sorted(a.video_id for a in records) == sorted(
        schema.decode_upload(r.value).video_id for r in consumed if kinds[r.value] == "valid"
    )
    letters = read_all(kafka_bootstrap, topics.deadletter)
    assert len(letters) == sum(kinds[r.value] != "valid" for r in consumed)
    index = SidIndex(index_path)
    assert index.all_sids(tokenizer.sid_version) == {a.video_id: a.sid for a in records}

    # A restart serves the rest: every valid upload once, none twice.
    run_service(service_config(kafka_bootstrap, topic_prefix, 50), tokenizer, index)
    records = published(kafka_bootstrap, topics)
    valid_ids = {schema.decode_upload(r.value).video_id for r in uploads if r.kind == "valid"}
    assert sorted(a.video_id for a in records) == sorted(valid_ids)
    assert index.all_sids(tokenizer.sid_version) == {a.video_id: a.sid for a in records}
    index.close()


class DiedBeforeCommit(RuntimeError):
    pass


class ProducesThenDies(ConfluentIO):
    """Sends a batch's outputs in a transaction and dies before committing it: the records
    are in the log, the offsets are not committed, nothing aborts the transaction."""

    def commit(self, outputs, next_offsets):
        self.producer.begin()
        self.producer.send_all(outputs)
        assert self.producer.flush() == 0
        raise DiedBeforeCommit("simulated crash between produce and commit")

    def close(self):
        self.consumer.close()  # leave the group; the transaction stays open, as after a crash


class DiesBeforeCommit(SidService):
    dead_io: ProducesThenDies | None = None

    def open_io(self):
        DiesBeforeCommit.dead_io = ProducesThenDies(
            self.config.bootstrap,
            self.source_topics,
            self.group_id,
            self.transactional_id,
            "plum-dies-before-commit",
        )
        return DiesBeforeCommit.dead_io


def test_crash_between_produce_and_commit_reprocesses_without_duplicates(
    kafka_bootstrap, topics, topic_prefix, tmp_path, uploads, tokenizer
):
    config = service_config(kafka_bootstrap, topic_prefix, 100, "confluent")
    produce(kafka_bootstrap, topics.uploads, uploads)
    index = SidIndex(tmp_path / "sids.sqlite")
    with pytest.raises(DiedBeforeCommit):
        run_service(config, tokenizer, index, DiesBeforeCommit)
    assert index.size(tokenizer.sid_version) == 0
    produced = read_all(kafka_bootstrap, topics.sid_assignments, isolation_level="read_uncommitted")
    assert produced, "the dead transaction's records should be in the log"
    assert published(kafka_bootstrap, topics) == []  # ...but never visible

    # The restart (same version, so the same transactional id) fences the dead producer,
    # aborts its transaction and reads the batch again from the committed offsets.
    run_service(config, tokenizer, index)
    records = published(kafka_bootstrap, topics)
    valid_ids = {schema.decode_upload(r.value).video_id for r in uploads if r.kind == "valid"}
    assert sorted(a.video_id for a in records) == sorted(valid_ids)  # each exactly once
    assert len({a.sid for a in records}) == len(records)
    assert index.all_sids(tokenizer.sid_version) == {a.video_id: a.sid for a in records}
    everything = read_all(
        kafka_bootstrap, topics.sid_assignments, isolation_level="read_uncommitted"
    )
    assert len(everything) == len(records) + len(produced)  # the aborted copies stay invisible
    index.close()
    with pytest.raises(KafkaException, match="fenced"):  # the zombie can write nothing more
        DiesBeforeCommit.dead_io.producer.close()
