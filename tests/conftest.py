"""Session fixtures: a real Kafka broker on free ports with a private state directory.

The broker is started once per test session from the jars `make setup` resolved and
stopped at the end, whatever happens. Each test that needs topics gets its own prefixed
copy of the whole topic set, so tests never see each other's records.
"""

from __future__ import annotations

import itertools
import os
import uuid
from pathlib import Path

import pytest

from plum.ports import free_ports
from streams.contracts.topics import TopicNames, topic_set
from streams.kafka.admin import ensure_topics
from streams.kafka.broker import KafkaConfig, LocalBroker

_counter = itertools.count()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory) -> LocalBroker:
    broker_port, controller_port = free_ports(2)
    config = KafkaConfig(
        port=broker_port,
        controller_port=controller_port,
        state_dir=tmp_path_factory.mktemp("kafka"),
        startup_timeout_s=90.0,
    )
    broker = LocalBroker(config)
    broker.up()
    try:
        yield broker
    finally:
        broker.down()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: LocalBroker) -> str:
    return kafka_broker.bootstrap


@pytest.fixture
def topic_prefix() -> str:
    return f"t{next(_counter)}-{uuid.uuid4().hex[:6]}."


@pytest.fixture
def topics(kafka_bootstrap: str, topic_prefix: str) -> TopicNames:
    """A private, fully created copy of every topic for this test."""
    ensure_topics(kafka_bootstrap, topic_set(topic_prefix))
    return TopicNames.with_prefix(topic_prefix)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="session")
def _private_state_dir(tmp_path_factory):
    """Nothing a test runs may write into the developer's ./state."""
    old = os.environ.get("PLUM_STATE_DIR")
    os.environ["PLUM_STATE_DIR"] = str(tmp_path_factory.mktemp("state"))
    yield
    if old is None:
        os.environ.pop("PLUM_STATE_DIR", None)
    else:
        os.environ["PLUM_STATE_DIR"] = old
