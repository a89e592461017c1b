"""`plum bench kafka`: produce and consume rates, kafka-python next to Kafka's own Java
perf tools, on the same broker and the same kind of topic, in one run.

The Java tools (`org.apache.kafka.tools.ProducerPerformance` / `ConsumerPerformance`,
from the kafka-tools jar `make setup` resolved) are the ceiling of this broker on this
machine; the kafka-python numbers are what our Python components can get out of it.
Later benchmarks (Flink, the SID service, the trainer's input) compare with these.

Consumption is compared like for like, both ways:

* without a group: kafka-python `assign()`s the partitions and is timed from its first
  poll; Java's ConsumerPerformance always joins a group, so its side is its own fetch time
  (`fetch.time.ms`, `fetch.nMsg.sec`: the run minus the group rebalance);
* with a group: kafka-python `subscribe()`s in a fresh consumer group and is timed from
  the subscribe, the join and rebalance included, next to ConsumerPerformance's whole run.

By default the benchmark starts a private broker on free ports (nothing else on the
machine is touched); `--bootstrap` uses an existing one instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import time
from pathlib import Path

from kafka import TopicPartition

from bench.common import bench_broker, write_result
from plum.jvm import java_binary, kafka_classpath
from plum.runtime import Progress
from streams.contracts.topics import TopicSpec
from streams.kafka.admin import ensure_topics
from streams.kafka.clients import (
    librdkafka_consumer,
    make_consumer,
    make_producer,
    subscribe_with_metadata,
)

log = logging.getLogger(__name__)


def consume_rate(count: int, nbytes: int, elapsed: float) -> dict[str, float]:
    return {
        "records": count,
        "seconds": round(elapsed, 3),
        "records_per_s": round(count / elapsed),
        "mb_per_s": round(nbytes / elapsed / 1e6, 2),
    }


def python_produce(bootstrap: str, topic: str, records: int, size: int) -> dict:
    payload = os.urandom(size)
    producer = make_producer(bootstrap, linger_ms=20, batch_size=512 * 1024)
    progress = Progress("kafka-python produce", every_s=5.0, total=records)
    start = time.perf_counter()
    for i in range(records):
        producer.send(topic, key=str(i % 1000).encode(), value=payload)
        progress.add()
        progress.maybe_report()
    producer.flush()
    elapsed = time.perf_counter() - start
    producer.close()
    return {
        "records": records,
        "seconds": round(elapsed, 3),
        "records_per_s": round(records / elapsed),
        "mb_per_s": round(records * size / elapsed / 1e6, 2),
    }


def python_consume(bootstrap: str, topic: str, partitions: int, group: str | None = None) -> dict:
    """Every record of `topic` with kafka-python: assigned partitions timed from the first
    poll (group None), or subscribed in consumer group `group` timed from the subscribe
    (the group join and rebalance included)."""
    consumer = make_consumer(
        bootstrap,
        group_id=group,
        fetch_max_bytes=50 * 1024 * 1024,
        max_partition_fetch_bytes=10 * 1024 * 1024,
        max_poll_records=5000,
    )
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    ends = consumer.end_offsets(tps)
    total_target = sum(ends.values())
    if group is None:
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
    count = nbytes = 0
    start = time.perf_counter()
    if group is not None:
        subscribe_with_metadata(consumer, [topic])  # earliest: a new group reads all
    deadline = start + 300
    while count < total_target and time.perf_counter() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            count += len(batch)
            nbytes += sum(len(r.value) for r in batch)
    elapsed = time.perf_counter() - start
    consumer.close()
    return consume_rate(count, nbytes, elapsed)


def confluent_consume(bootstrap: str, topic: str, partitions: int) -> dict:
    """`python_consume` with confluent-kafka (librdkafka): every record of `topic`, batched."""
    from confluent_kafka import OFFSET_BEGINNING
    from confluent_kafka import TopicPartition as CTopicPartition

    consumer = librdkafka_consumer(bootstrap, f"plum-bench-{time.time_ns()}")
    tps = [CTopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)]
    ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps}
    consumer.assign(tps)
    # Done when every partition's last record is read (offsets, not counts: transaction
    # markers take offsets too).
    behind = {p for p, end in ends.items() if end > 0}
    count = nbytes = 0
    start = time.perf_counter()
    deadline = start + 300
    while behind and time.perf_counter() < deadline:
        for msg in consumer.consume(num_messages=5000, timeout=0.5):
            if msg.error() is not None:
                continue
            count += 1
            nbytes += len(msg.value())
            if msg.offset() + 1 >= ends[msg.partition()]:
                behind.discard(msg.partition())
    elapsed = time.perf_counter() - start
    consumer.close()
    return consume_rate(count, nbytes, elapsed)


def _java(main: str, *args: str, timeout: float = 600) -> str:
    cmd = [java_binary(), "-Xmx512m", "-cp", kafka_classpath(), main, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{main} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def java_produce(bootstrap: str, topic: str, records: int, size: int) -> dict:
    out = _java(
        "org.apache.kafka.tools.ProducerPerformance",
        "--topic",
        topic,
        "--num-records",
        str(records),
        "--record-size",
        str(size),
        "--throughput",
        "-1",
        "--producer-props",
        f"bootstrap.servers={bootstrap}",
        "acks=all",
        "linger.ms=20",
        "batch.size=524288",
        "enable.idempotence=true",
    )
    # final line: "N records sent, R records/sec (M MB/sec), ..."
    final = [line for line in out.splitlines() if "records sent" in line][-1]
    m = re.search(r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\)", final)
    if not m:
        raise RuntimeError(f"cannot parse ProducerPerformance output: {final!r}")
    return {
        "records": int(m.group(1)),
        "records_per_s": round(float(m.group(2))),
        "mb_per_s": round(float(m.group(3)) * 1.048576, 2),
        "raw": final.strip(),
    }


def java_consume(bootstrap: str, topic: str, records: int) -> dict:
    out = _java(
        "org.apache.kafka.tools.ConsumerPerformance",
        "--bootstrap-server",
        bootstrap,
        "--topic",
        topic,
        "--messages",
        str(records),
        "--timeout",
        "60000",
    )
    return parse_consumer_performance(out)


def parse_consumer_performance(out: str) -> dict:
    """ConsumerPerformance's last two lines (a CSV header and its row) -> rates: the whole
    run's and the fetch time's (the run minus the group rebalance)."""
    lines = [line for line in out.splitlines() if line.strip()]
    header = [h.strip() for h in lines[-2].split(",")]
    values = [v.strip() for v in lines[-1].split(",")]
    row = dict(zip(header, values, strict=False))
    return {
        "records": int(row["data.consumed.in.nMsg"]),
        "records_per_s": round(float(row["nMsg.sec"])),
        "mb_per_s": round(float(row["MB.sec"]) * 1.048576, 2),
        "rebalance_ms": int(row["rebalance.time.ms"]),
        "fetch_records_per_s": round(float(row["fetch.nMsg.sec"])),
        "raw": row,
    }


def run(bootstrap: str, records: int, size: int, partitions: int) -> dict:
    py_topic = f"bench.kafka-python.{int(time.time())}"
    java_topic = f"bench.kafka-java.{int(time.time())}"
    ensure_topics(
        bootstrap, [TopicSpec(py_topic, partitions, -1), TopicSpec(java_topic, partitions, -1)]
    )
    log.info("kafka-python: producing %d records of %d bytes", records, size)
    py_prod = python_produce(bootstrap, py_topic, records, size)
    log.info("kafka-python produce: %s", py_prod)
    py_cons = python_consume(bootstrap, py_topic, partitions)
    log.info("kafka-python consume (assign): %s", py_cons)
    py_group = python_consume(bootstrap, py_topic, partitions, f"plum-bench-{time.time_ns()}")
    log.info("kafka-python consume (group): %s", py_group)
    log.info("Java perf tools: producing %d records", records)
    j_prod = java_produce(bootstrap, java_topic, records, size)
    log.info("java produce: %s", j_prod)
    j_cons = java_consume(bootstrap, java_topic, records)
    log.info("java consume: %s", j_cons)
    return {
        "python_produce": py_prod,
        "python_consume": py_cons,
        "python_group_consume": py_group,
        "java_produce": j_prod,
        "java_consume": j_cons,
    }


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="plum bench kafka", description=__doc__)
    parser.add_argument("--bootstrap", help="use this broker instead of starting a private one")
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument(
        "--size", type=int, default=300, help="value bytes (a watch event is ~250-300)"
    )
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    load_at_start = os.getloadavg()[0]
    with bench_broker(args.bootstrap) as bootstrap:
        results = run(bootstrap, args.records, args.size, args.partitions)
    metrics = {
        "python_produce_records_per_s": results["python_produce"]["records_per_s"],
        "python_consume_records_per_s": results["python_consume"]["records_per_s"],
        "python_group_consume_records_per_s": results["python_group_consume"]["records_per_s"],
    }
    baseline = {
        "java_produce_records_per_s": results["java_produce"]["records_per_s"],
        "java_consume_fetch_records_per_s": results["java_consume"]["fetch_records_per_s"],
        "java_consume_records_per_s": results["java_consume"]["records_per_s"],
    }
    ratio = {
        "python_over_java_produce": round(
            metrics["python_produce_records_per_s"] / baseline["java_produce_records_per_s"], 3
        ),
        # no group on either side: assign() vs the Java tool's fetch time
        "python_over_java_consume": round(
            metrics["python_consume_records_per_s"] / baseline["java_consume_fetch_records_per_s"],
            3,
        ),
        # a group on both sides: subscribe() + rebalance vs the Java tool's whole run
        "python_group_over_java_group_consume": round(
            metrics["python_group_consume_records_per_s"] / baseline["java_consume_records_per_s"],
            3,
        ),
    }
    path = write_result(
        "kafka",
        config={
            "records": args.records,
            "value_bytes": args.size,
            "partitions": args.partitions,
            "acks": "all",
            "idempotent": True,
            "broker": "single-node KRaft, kafka 4.1.2",
            "python_client": "kafka-python 3.0.12",
        },
        metrics={**metrics, "detail": results},
        baseline=baseline,
        ratio=ratio,
        notes=(
            "Broker, producer and consumer share the same machine's cores; 1-minute load "
            f"average {load_at_start:.1f} at the start on {os.cpu_count()} CPUs (other work "
            "on the machine slows the Java tools and kafka-python alike, so compare ratios). "
            "Consumption like for like: python_over_java_consume is kafka-python assign() vs "
            "ConsumerPerformance's fetch time (its group rebalance left out); "
            "python_group_over_java_group_consume has a consumer group on both sides, each "
            "timed with its join and rebalance."
        ),
        out_dir=args.out_dir,
    )
    print(f"wrote {path}")
    for k, v in {**metrics, **baseline, **ratio}.items():
        print(f"  {k}: {v}")
    return 0
