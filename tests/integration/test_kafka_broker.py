"""The real KRaft broker: lifecycle errors, topic configs, exactly-once round trips."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from plum.ports import free_port, free_ports
from streams.contracts import schema
from streams.contracts.topics import ALL_TOPICS
from streams.kafka.admin import partition_counts, topic_configs
from streams.kafka.broker import BrokerError, KafkaConfig, LocalBroker
from streams.kafka.clients import make_producer, read_all

pytestmark = pytest.mark.integration


def test_every_topic_is_created_with_its_partitions_and_retention(
    kafka_bootstrap, topics, topic_prefix
):
    names = [f"{topic_prefix}{t.name}" for t in ALL_TOPICS]
    counts = partition_counts(kafka_bootstrap, names)
    for spec in ALL_TOPICS:
        name = f"{topic_prefix}{spec.name}"
        assert counts[name] == spec.partitions
        cfg = topic_configs(kafka_bootstrap, name)
        assert cfg["retention.ms"] == str(spec.retention_ms)


def test_sid_assignments_topic_is_really_compacted(kafka_bootstrap, topics):
    assert topic_configs(kafka_bootstrap, topics.sid_assignments)["cleanup.policy"] == "compact"
    assert topic_configs(kafka_bootstrap, topics.watches)["cleanup.policy"] == "delete"


def test_watch_round_trips_through_the_broker(kafka_bootstrap, topics):
    events = [
        schema.WatchEvent(
            event_id=f"e{i}",
            user_id=f"u{i % 3}",
            video_id=f"v{i}",
            ts=1_700_000_000_000 + i,
            watch_time_s=10.0 + i,
            video_duration_s=100.0,
            clicked=i % 2 == 0,
            surface="home",
            context_video_id=None if i == 0 else f"v{i - 1}",
            satisfaction=0.5 if i == 3 else None,
        )
        for i in range(20)
    ]
    producer = make_producer(kafka_bootstrap)
    for e in events:
        producer.send(topics.watches, key=e.user_id.encode(), value=schema.encode(e))
    producer.flush()
    producer.close()
    got = [schema.decode_watch(r.value) for r in read_all(kafka_bootstrap, topics.watches)]
    assert sorted(got, key=lambda e: e.event_id) == sorted(events, key=lambda e: e.event_id)


def test_aborted_transaction_is_invisible_to_read_committed(kafka_bootstrap, topics):
    producer = make_producer(kafka_bootstrap, transactional_id=f"test-{topics.deadletter}")
    producer.init_transactions()
    producer.begin_transaction()
    producer.send(topics.deadletter, value=b'{"aborted":true}')
    producer.flush()
    producer.abort_transaction()
    producer.begin_transaction()
    producer.send(topics.deadletter, value=b'{"committed":true}')
    producer.commit_transaction()
    producer.close()
    committed = [r.value for r in read_all(kafka_bootstrap, topics.deadletter)]
    everything = [
        r.value
        for r in read_all(kafka_bootstrap, topics.deadletter, isolation_level="read_uncommitted")
    ]
    assert committed == [b'{"committed":true}']
    assert b'{"aborted":true}' in everything


def _private_config(tmp_path, **kw) -> KafkaConfig:
    port, controller_port = free_ports(2)
    return KafkaConfig(port=port, controller_port=controller_port, state_dir=tmp_path, **kw)


def test_busy_port_is_a_clear_error_not_a_hang(tmp_path):
    config = _private_config(tmp_path)
    with socket.socket() as squatter:
        squatter.bind((config.host, config.port))
        squatter.listen()
        with pytest.raises(BrokerError, match=f"port {config.host}:{config.port} is in use"):
            LocalBroker(config).up()


def test_stale_pid_file_is_replaced(tmp_path):
    config = _private_config(tmp_path)
    broker = LocalBroker(config)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tmp_path.mkdir(exist_ok=True)
    broker.pid_path.write_text(str(dead.pid))
    broker.up()
    try:
        assert broker.status()["answering"]
        assert int(broker.pid_path.read_text()) != dead.pid
        broker.up()  # idempotent while running
    finally:
        assert broker.down()
    assert not broker.pid_path.exists()
    assert broker.status()["running"] is False


def test_broker_that_exits_at_start_up_is_reported_with_its_log(tmp_path):
    broker = LocalBroker(_private_config(tmp_path, startup_timeout_s=60))
    broker.data_dir.mkdir(parents=True)
    (broker.data_dir / "meta.properties").write_text("this is not a kafka meta file\n")
    with pytest.raises(BrokerError, match="exited with code .* Log tail"):
        broker.up()
    assert broker.status()["running"] is False


def test_broker_that_does_not_answer_in_time_is_stopped_and_reported(tmp_path):
    broker = LocalBroker(_private_config(tmp_path, startup_timeout_s=0.5))
    with pytest.raises(BrokerError, match="did not answer .* within 0 s; stopped it"):
        broker.up()
    assert broker.status()["running"] is False


def test_kafka_cli_status_reports_a_stopped_broker(tmp_path, repo_root):
    env = dict(os.environ, PLUM_KAFKA__STATE_DIR=str(tmp_path), PLUM_KAFKA__PORT=str(free_port()))
    done = subprocess.run(
        [sys.executable, "-m", "plum.cli", "kafka", "status"],
        env=env,
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert '"running": false' in done.stdout


def test_down_kills_a_broker_that_ignores_sigterm(tmp_path):
    broker = LocalBroker(_private_config(tmp_path, shutdown_timeout_s=2))
    broker.up()
    pid = int(broker.pid_path.read_text())
    os.kill(pid, signal.SIGSTOP)  # a stopped JVM cannot react to SIGTERM
    try:
        assert broker.down()
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert broker.status()["running"] is False
