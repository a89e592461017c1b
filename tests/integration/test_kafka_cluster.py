"""A 3-broker KRaft cluster on one machine (`plum kafka up --brokers 3`): replication
factor 3 and min ISR 2, so one broker killed with SIGKILL loses nothing and stops nothing."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from plum.ports import free_ports
from streams.contracts.topics import TopicNames, topic_set
from streams.kafka.admin import ensure_topics, topic_configs
from streams.kafka.broker import KafkaConfig, _pid_alive
from streams.kafka.clients import make_producer, read_all
from streams.kafka.cluster import KafkaCluster

pytestmark = pytest.mark.integration


def _replicas(bootstrap: str, topic: str, timeout_s: float = 30.0) -> list[int]:
    """Replica count per partition, once the answering node's metadata has the topic
    (a node can lag the controller by a moment right after the topic is created)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="plum-test")
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            (described,) = admin.describe_topics([topic])
            if (described["partitions"] and not described.get("error_code")) or (
                time.monotonic() > deadline
            ):
                return [len(p["replica_nodes"]) for p in described["partitions"]]
            time.sleep(0.2)
    finally:
        admin.close()


def _produce(bootstrap: str, topic: str, values: list[bytes], transactional: bool) -> None:
    tid = f"test-{uuid.uuid4().hex[:8]}" if transactional else None
    producer = make_producer(bootstrap, transactional_id=tid)
    if transactional:
        producer.init_transactions()
        producer.begin_transaction()
    for v in values:
        producer.send(topic, value=v)
    if transactional:
        producer.commit_transaction()
    producer.flush()
    producer.close()


def _three_nodes(tmp_path: Path) -> KafkaCluster:
    ports = free_ports(6)
    nodes = [
        KafkaConfig(
            port=ports[2 * i],
            controller_port=ports[2 * i + 1],
            state_dir=tmp_path / f"node-{i + 1}",
            heap_mb=384,
            startup_timeout_s=180,
        )
        for i in range(3)
    ]
    return KafkaCluster(nodes, tmp_path)


def test_three_brokers_keep_every_record_through_a_killed_broker(tmp_path):
    cluster = _three_nodes(tmp_path)
    pids: list[int] = []
    try:
        cluster.up()
        pids = [int(b.pid_path.read_text()) for b in cluster.brokers]
        prefix = f"c{uuid.uuid4().hex[:6]}."
        ensure_topics(cluster.bootstrap, topic_set(prefix))
        topic = TopicNames.with_prefix(prefix).deadletter
        assert set(_replicas(cluster.bootstrap, topic)) == {3}
        assert topic_configs(cluster.bootstrap, topic)["min.insync.replicas"] == "2"

        _produce(cluster.bootstrap, topic, [f"before-{i}".encode() for i in range(50)], False)
        killed = cluster.brokers[1]
        killed.kill()
        assert not killed.is_running()
        survivors = ",".join(b.bootstrap for b in cluster.brokers if b is not killed)
        # acks=all with 2 of 3 in sync, and a transaction (its state log is replicated too)
        _produce(survivors, topic, [f"after-{i}".encode() for i in range(50)], False)
        _produce(survivors, topic, [f"txn-{i}".encode() for i in range(50)], True)
        got = sorted(r.value for r in read_all(survivors, topic))
        want = sorted(f"{k}-{i}".encode() for k in ("before", "after", "txn") for i in range(50))
        assert got == want

        cluster.up()  # restarts the killed node only, and waits until it has rejoined
        assert all(b.is_running() for b in cluster.brokers)
        assert cluster.status()["answering"]
        assert sorted(r.value for r in read_all(killed.bootstrap, topic)) == want
    finally:
        cluster.down()
    pids += [int(b.pid_path.read_text()) for b in cluster.brokers if b.pid_path.exists()]
    assert not [p for p in pids if _pid_alive(p)]


FEED_CHUNK = 40  # records per produce while the job runs
FEED_EVERY_S = 1.0


def test_the_flink_job_keeps_its_exact_output_through_a_killed_broker(tmp_path):
    """The Flink job reads from and writes (exactly-once, in Kafka transactions) to the
    3-broker cluster while one broker is killed -9 mid-stream and stays down; records keep
    arriving. Leaders, the group and transaction coordinators move to the survivors; the
    job rides it out or restarts from its checkpoint by itself, and its committed outputs
    equal the reference exactly."""
    from streams.flink.job import latest_checkpoint, load_flink_config
    from tests import flink_support as fs

    cfg = load_flink_config(fs.TEST_CONFIG)
    stream = fs.build_stream(23, 2500, cfg.out_of_orderness_ms, cfg.window_size_ms)
    cluster = _three_nodes(tmp_path)
    job = None
    try:
        cluster.up()
        prefix = f"fb{uuid.uuid4().hex[:6]}."
        ensure_topics(cluster.bootstrap, topic_set(prefix))
        topics = TopicNames.with_prefix(prefix)
        feeder = fs.Feeder(cluster.bootstrap, topics.watches, stream, FEED_CHUNK, FEED_EVERY_S)
        ck = tmp_path / "ck"
        job = fs.JobProcess(
            fs.job_command(cluster.bootstrap, prefix, ck, "--fresh"),
            tmp_path / "job.log",
            env_extra={"PLUM_FLINK__RESTART_ATTEMPTS": "30"},
        )
        feeder.start()
        deadline = time.monotonic() + 150
        while latest_checkpoint(ck) is None or not read_all(cluster.bootstrap, topics.sft_examples):
            assert job.alive(), job.tail()
            assert time.monotonic() < deadline, f"no committed output after 150 s\n{job.tail()}"
            time.sleep(0.5)
        assert feeder.is_alive(), "the stream ended before the kill: slow the feed down"
        killed = cluster.brokers[1]
        killed.kill()
        survivors = ",".join(b.bootstrap for b in cluster.brokers if b is not killed)
        expected = fs.stream_reference(feeder.finish(), stream, cfg, topics.watches)
        outs = fs.wait_for_outputs(survivors, topics, expected, job, timeout_s=240)
        fs.compare(outs, expected)
    finally:
        if job is not None:
            job.stop()
        cluster.down()
