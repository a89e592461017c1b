"""The SID service against the real broker with a real (small, quickly trained) tokenizer."""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np
import pytest

from streams.contracts import schema
from streams.kafka.clients import make_producer, read_all
from streams.simulator.config import load_config as load_simulator_config
from streams.simulator.stream import generate
from tokenizer.config import load_tokenizer_config
from tokenizer.index import SidIndex
from tokenizer.service import SidService, SidServiceConfig, reindex
from tokenizer.train import train_tokenizer

pytestmark = pytest.mark.integration

# The exactly-once tests run on both Kafka clients of streams.kafka.transactional.
both_clients = pytest.mark.parametrize("kafka_client", ["confluent", "kafka-python"])


@pytest.fixture(scope="module")
def uploads(repo_root):
    """Simulated upload records: valid ones and malformed ones of every upload kind."""
    cfg = load_simulator_config(repo_root / "configs" / "test.toml", events=1500, bad_fraction=0.05)
    return [r for r in generate(cfg) if r.topic.endswith("plum.uploads.v1")]


@pytest.fixture(scope="module")
def tokenizer(repo_root, uploads):
    valid = [schema.decode_upload(r.value) for r in uploads if r.kind == "valid"]
    names = sorted(valid[0].embeddings)
    emb = {n: np.asarray([u.embeddings[n] for u in valid], np.float32) for n in names}
    # Deliberately small codebooks and few steps: collisions must happen so the
    # disambiguation path is exercised.
    config = load_tokenizer_config(
        repo_root / "configs" / "test.toml", env={}, steps=60, codebook_base=16
    )
    return train_tokenizer(emb, None, config)


def service_config(
    bootstrap: str, topic_prefix: str, batch_size: int, kafka_client: str | None = None
) -> SidServiceConfig:
    """The service on the test's topics, batches by size or 100 ms."""
    client = {} if kafka_client is None else {"kafka_client": kafka_client}
    return SidServiceConfig(
        bootstrap=bootstrap,
        topic_prefix=topic_prefix,
        batch_size=batch_size,
        batch_time_ms=100,
        **client,
    )


def produce(bootstrap: str, topic: str, records) -> None:
    producer = make_producer(bootstrap)
    for r in records:
        producer.send(topic, key=r.key, value=r.value)
    producer.flush()
    producer.close()


def run_service(config, tok, index, service_cls=SidService):
    service = service_cls(config, tok, index)
    stop = threading.Event()
    return service.run(stop, idle_exit_s=3.0), service


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


class CrashAfterKafkaCommit(SidService):
    """Dies between the Kafka commit and the index commit, once."""

    crashed = False

    def _commit_to_kafka(self, *args):
        super()._commit_to_kafka(*args)
        if not CrashAfterKafkaCommit.crashed:
            CrashAfterKafkaCommit.crashed = True
            raise RuntimeError("simulated crash after the Kafka commit")


@both_clients
def test_crash_between_kafka_commit_and_index_commit_loses_nothing(
    kafka_bootstrap, topics, topic_prefix, tmp_path, uploads, tokenizer, kafka_client
):
    config = service_config(kafka_bootstrap, topic_prefix, 100, kafka_client)
    produce(kafka_bootstrap, topics.uploads, uploads)
    index = SidIndex(tmp_path / "sids.sqlite")
    CrashAfterKafkaCommit.crashed = False
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
