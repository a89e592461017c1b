import urllib.request

import pytest

from monitoring.metrics import Metrics, serve_metrics
from streams.kafka.clients import make_consumer, make_producer
from streams.kafka.exporter import collect, consumer_lag

pytestmark = pytest.mark.integration


def test_consumer_lag_is_end_minus_committed_per_partition(kafka_bootstrap, topics):
    producer = make_producer(kafka_bootstrap)
    for i in range(30):
        producer.send(topics.deadletter, value=b"x%d" % i)  # one partition
    producer.flush()
    producer.close()
    group = f"lag-{topics.deadletter}"
    consumer = make_consumer(
        kafka_bootstrap, [topics.deadletter], group_id=group, max_poll_records=10
    )
    got = 0
    while got < 10:
        got += sum(len(b) for b in consumer.poll(timeout_ms=1000, max_records=10 - got).values())
    consumer.commit()
    consumer.close()
    assert consumer_lag(kafka_bootstrap)[(group, topics.deadletter, 0)] == 20

    metrics = Metrics.for_component("kafka")
    assert collect(kafka_bootstrap, metrics)
    server = serve_metrics(metrics, 0)
    try:
        body = (
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10)
            .read()
            .decode()
        )
    finally:
        server.close()
    assert (
        f'plum_kafka_consumer_lag_records{{group="{group}",partition="0",topic="{topics.deadletter}"}} 20.0'
        in body
    )
    assert f'plum_kafka_broker_up{{bootstrap="{kafka_bootstrap}"}} 1.0' in body


def test_unreachable_broker_reports_down():
    metrics = Metrics.for_component("kafka")
    assert not collect("127.0.0.1:1", metrics)
    assert metrics.value("plum_kafka_broker_up", bootstrap="127.0.0.1:1") == 0.0
