"""`plum bench sid-service`: SID assignments/s and upload→SID latency of the real service.

Measurements against a private broker (free ports) with a tokenizer trained in the
same run on synthetic multi-modal items (text 32 / visual 32 / audio 16, the simulator's
dims):

1. throughput, once per Kafka client of the service (`--clients`, default both:
   confluent-kafka and kafka-python), each on its own topics, group and index: N uploads
   are produced first, then the service drains them; assignments/s = N / (first poll →
   last commit). The plain consume rate of the same topic with the same client, measured
   in the same run, is the ceiling the service cannot beat (it must consume every upload
   through that client), so the ratio shows how much the service adds.
2. latency at a stated rate, with the default client (`SidServiceConfig.kafka_client`):
   a producer thread sends uploads at `--rate` per second while the service runs;
   latency = the SID record's Kafka timestamp (set when the service sends it, just before
   its transaction commits) minus the upload's Kafka timestamp.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.common import bench_broker, write_result
from bench.kafka import confluent_consume, python_consume
from plum.config import REPO_ROOT
from streams.contracts import schema
from streams.contracts.topics import TopicNames, topic_set
from streams.kafka.admin import ensure_topics
from streams.kafka.clients import make_producer, read_all
from streams.kafka.transactional import KAFKA_CLIENTS
from tokenizer.config import load_tokenizer_config
from tokenizer.index import SidIndex
from tokenizer.service import SidService, SidServiceConfig
from tokenizer.synthetic import clustered_items
from tokenizer.train import train_tokenizer

log = logging.getLogger(__name__)
DIMS = {"text": 32, "visual": 32, "audio": 16}
CONSUME = {"confluent": confluent_consume, "kafka-python": python_consume}
DEFAULT_CLIENT = SidServiceConfig().kafka_client


def upload_values(
    emb: dict[str, np.ndarray], start: int, count: int, prefix: str
) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(start, start + count):
        j = i % len(next(iter(emb.values())))
        event = schema.UploadEvent(
            video_id=f"{prefix}{i}",
            ts=1_700_000_000_000 + i,
            title=f"video {i}",
            description="",
            channel="bench",
            topics=("bench",),
            duration_s=120.0,
            embeddings={n: tuple(round(float(x), 5) for x in emb[n][j]) for n in DIMS},
        )
        out.append((event.video_id.encode(), schema.encode(event)))
    return out


def load_uploads(bootstrap: str, topic: str, values) -> None:
    """Produce the throughput run's uploads (librdkafka: a quicker setup, not measured)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all"})
    for key, value in values:
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.5)
    if producer.flush(60) != 0:
        raise RuntimeError(f"could not produce every upload to {topic}")


def throughput(
    bootstrap: str, prefix: str, tok, values, batch_size: int, index_dir: Path, client: str
) -> dict:
    topics = TopicNames.with_prefix(prefix)
    load_uploads(bootstrap, topics.uploads, values)
    ceiling = CONSUME[client](bootstrap, topics.uploads, 2)
    config = SidServiceConfig(
        bootstrap=bootstrap,
        topic_prefix=prefix,
        batch_size=batch_size,
        batch_time_ms=200,
        kafka_client=client,
    )
    index = SidIndex(index_dir / f"{prefix}sids.sqlite")
    service = SidService(config, tok, index)
    service.start()
    stop = threading.Event()
    started = None
    done = 0
    deadline = time.monotonic() + 600
    last_log = time.monotonic()
    while done < len(values) and time.monotonic() < deadline:
        records = service._poll_batch(stop)
        if records:
            started = started or time.perf_counter()
            done += service.process(records).consumed
        if time.monotonic() - last_log > 5:
            last_log = time.monotonic()
            log.info("sid-service bench (%s): %d/%d uploads", client, done, len(values))
    elapsed = time.perf_counter() - started
    service.close()
    index.close()
    return {
        "client": client,
        "uploads": done,
        "seconds": round(elapsed, 3),
        "assignments_per_s": round(service.totals.assigned / elapsed),
        "collisions": service.totals.collisions,
        "consume_per_s": ceiling["records_per_s"],
    }


def latency(
    bootstrap: str, prefix: str, tok, values, rate: float, batch_time_ms: int, index_dir: Path
) -> dict:
    topics = TopicNames.with_prefix(prefix)
    config = SidServiceConfig(
        bootstrap=bootstrap, topic_prefix=prefix, batch_size=4096, batch_time_ms=batch_time_ms
    )
    index = SidIndex(index_dir / f"{prefix}sids.sqlite")
    service = SidService(config, tok, index)
    stop = threading.Event()
    runner = threading.Thread(
        target=service.run, args=(stop,), kwargs={"idle_exit_s": None}, daemon=True
    )
    runner.start()
    time.sleep(3.0)  # consumer group joined; measured latency starts at the first upload
    producer = make_producer(bootstrap, linger_ms=0)
    start = time.perf_counter()
    for i, (key, value) in enumerate(values):
        target = start + i / rate
        delay = target - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        producer.send(topics.uploads, key=key, value=value)
    producer.flush()
    achieved = len(values) / (time.perf_counter() - start)
    producer.close()
    wanted = {k.decode() for k, _ in values}
    deadline = time.monotonic() + 120
    while index.size(tok.sid_version) < len(wanted) and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    runner.join(timeout=60)
    index.close()
    sent = {r.key.decode(): r.timestamp for r in read_all(bootstrap, topics.uploads)}
    assigned = {}
    for r in read_all(bootstrap, topics.sid_assignments):
        a = schema.decode_sid_assignment(r.value)
        assigned[a.video_id] = r.timestamp
    lat = np.asarray([(assigned[v] - sent[v]) / 1000 for v in wanted if v in assigned])
    return {
        "target_rate": rate,
        "achieved_rate": round(achieved, 1),
        "uploads": len(values),
        "assigned": int(lat.size),
        "p50_s": round(float(np.percentile(lat, 50)), 4),
        "p99_s": round(float(np.percentile(lat, 99)), 4),
        "max_s": round(float(lat.max()), 4),
        "batch_time_ms": batch_time_ms,
    }


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="plum bench sid-service", description=__doc__)
    parser.add_argument(
        "--uploads", type=int, default=30_000, help="uploads for the throughput run"
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="uploads/s for the latency run")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--batch-time-ms", type=int, default=100)
    parser.add_argument(
        "--clients",
        default=",".join(KAFKA_CLIENTS),
        help=f"comma-separated Kafka clients for the throughput run (of {KAFKA_CLIENTS})",
    )
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    unknown = sorted(set(clients) - set(KAFKA_CLIENTS))
    if unknown or not clients:
        parser.error(f"--clients {args.clients!r}: unknown {unknown}; known {KAFKA_CLIENTS}")

    n_lat = int(args.rate * args.latency_seconds)
    # Every upload a distinct item: repeated embeddings would collide by construction.
    emb, _, _ = clustered_items(args.uploads + n_lat, DIMS, num_pairs=0, seed=3)
    tok_config = load_tokenizer_config(REPO_ROOT / "configs" / "test.toml", steps=600)
    log.info("training the bench tokenizer (%d steps)", tok_config.steps)
    tok = train_tokenizer({n: x[:5000] for n, x in emb.items()}, None, tok_config)
    tok.encode({n: emb[n][:8] for n in DIMS})  # compile before timing

    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="plum-bench-sid-") as tmp, bench_broker() as bootstrap:
        prefixes = {c: f"tp-{c}." for c in clients}
        for prefix in [*prefixes.values(), "lat."]:
            ensure_topics(bootstrap, topic_set(prefix))
        runs = {}
        for client, prefix in prefixes.items():
            log.info("throughput run (%s): %d uploads", client, args.uploads)
            runs[client] = throughput(
                bootstrap,
                prefix,
                tok,
                upload_values(emb, 0, args.uploads, "tp-"),
                args.batch_size,
                Path(tmp),
                client,
            )
            log.info("throughput (%s): %s", client, runs[client])
        log.info("latency run (%s): %d uploads at %.0f/s", DEFAULT_CLIENT, n_lat, args.rate)
        lat = latency(
            bootstrap,
            "lat.",
            tok,
            upload_values(emb, args.uploads, n_lat, "lat-"),
            args.rate,
            args.batch_time_ms,
            Path(tmp),
        )
        log.info("latency: %s", lat)
    main = runs.get(DEFAULT_CLIENT) or next(iter(runs.values()))
    lat["client"] = DEFAULT_CLIENT
    path = write_result(
        "sid-service",
        config={
            "uploads": args.uploads,
            "batch_size": args.batch_size,
            "latency_rate": args.rate,
            "latency_seconds": args.latency_seconds,
            "batch_time_ms": args.batch_time_ms,
            "default_client": DEFAULT_CLIENT,
            "clients": clients,
            "tokenizer": {"levels": list(tok.level_sizes), "modalities": dict(tok.modalities)},
            "targets": {"assignments_per_s": 10_000, "p99_s_at_1k_per_s": 1.0},
        },
        metrics={
            "assignments_per_s": main["assignments_per_s"],
            "assignments_per_s_by_client": {c: r["assignments_per_s"] for c, r in runs.items()},
            "p50_s": lat["p50_s"],
            "p99_s": lat["p99_s"],
            "throughput_runs": runs,
            "latency_run": lat,
            # Other work on the machine shares the 2 cores: the 1-minute load average
            # when the runs started and ended says how much.
            "load_average_1m": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)},
        },
        baseline={f"{c}_consume_per_s": r["consume_per_s"] for c, r in runs.items()},
        ratio={
            "assignments_over_consume": {
                c: round(r["assignments_per_s"] / r["consume_per_s"], 3) for c, r in runs.items()
            },
            **(
                {
                    "confluent_over_kafka_python": round(
                        runs["confluent"]["assignments_per_s"]
                        / runs["kafka-python"]["assignments_per_s"],
                        3,
                    )
                }
                if {"confluent", "kafka-python"} <= set(runs)
                else {}
            ),
        },
        notes=(
            "Broker, producer, service and JAX share the machine's cores. assignments_per_s,"
            " p50_s and p99_s are of the default client (config.default_client)."
        ),
        out_dir=args.out_dir,
    )
    print(f"wrote {path}")
    for client, r in runs.items():
        print(
            f"  {client}: {r['assignments_per_s']} assignments/s"
            f" (consume ceiling {r['consume_per_s']}/s)"
        )
    print(
        f"  upload->SID at {lat['achieved_rate']}/s ({DEFAULT_CLIENT}):"
        f" p50 {lat['p50_s']} s, p99 {lat['p99_s']} s"
    )
    return 0
