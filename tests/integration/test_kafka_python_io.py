"""The kafka-python fallback of the transactional I/O layer against the real broker."""

from __future__ import annotations

import time
import uuid

import pytest

from streams.kafka.transactional import KafkaPythonIO

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("attempt", range(3))
def test_a_consumer_polled_with_short_timeouts_gets_its_partitions(
    kafka_bootstrap, topics, attempt
):
    # kafka-python 3.0 can lose a rejoin whose poll timed out mid-join (see
    # streams.kafka.clients.subscribe_with_metadata); the rejoin came from a first
    # assignment made before the consumer knew the topic's partitions. 1 ms polls
    # failed 2 of 3 attempts before the consumer fetched the metadata first.
    group = f"short-polls-{uuid.uuid4().hex[:8]}"
    io = KafkaPythonIO(
        kafka_bootstrap, [topics.uploads], group, f"{group}-tx", 100, client_id=group
    )
    try:
        deadline = time.monotonic() + 60
        while not io.assigned:
            assert time.monotonic() < deadline, "no partition assigned in 60 s"
            io.poll(100, 0.001)
    finally:
        io.close()
