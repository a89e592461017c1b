"""`plum bench sid-service`: SID assignments/s and upload→SID latency of the real service.

Two measurements against a private broker (free ports) with a tokenizer trained in the
same run on synthetic multi-modal items (text 32 / visual 32 / audio 16, the simulator's
dims):

1. throughput: N uploads are produced first, then the service drains them; assignments/s
   = N / (first poll → last commit). The kafka-python consume rate of the same topic,
   measured in the same run, is the ceiling the service cannot beat (it must consume
   every upload through kafka-python), so the ratio shows how much the service adds.
2. latency at a stated rate: a producer thread sends uploads at `--rate` per second while
   the service runs; latency = the SID record's Kafka timestamp (set when the service
   sends it, just before its transaction commits) minus the upload's Kafka timestamp.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.common import bench_broker, write_result
from bench.kafka import python_consume
from plum.config import REPO_ROOT
from streams import schema
from streams.kafka_admin import ensure_topics
from streams.kafka_clients import make_producer, read_all
from streams.topics import TopicNames, topic_set
from tokenizer.config import load_tokenizer_config
from tokenizer.index import SidIndex
from tokenizer.service import SidService, SidServiceConfig
from tokenizer.synthetic import clustered_items
from tokenizer.train import train_tokenizer

log = logging.getLogger(__name__)
DIMS = {"text": 32, "visual": 32, "audio": 16}


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


def throughput(bootstrap: str, prefix: str, tok, values, batch_size: int, index_dir: Path) -> dict:
    topics = TopicNames.with_prefix(prefix)
    producer = make_producer(bootstrap)
    for key, value in values:
        producer.send(topics.uploads, key=key, value=value)
    producer.flush()
    producer.close()
    ceiling = python_consume(bootstrap, topics.uploads, 2)
    config = SidServiceConfig(
        bootstrap=bootstrap, topic_prefix=prefix, batch_size=batch_size, batch_time_ms=200
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
            log.info("sid-service bench: %d/%d uploads", done, len(values))
    elapsed = time.perf_counter() - started
    service.close()
    index.close()
    return {
        "uploads": done,
        "seconds": round(elapsed, 3),
        "assignments_per_s": round(service.totals.assigned / elapsed),
        "collisions": service.totals.collisions,
        "kafka_python_consume_per_s": ceiling["records_per_s"],
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
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args(argv)

    n_lat = int(args.rate * args.latency_seconds)
    # Every upload a distinct item: repeated embeddings would collide by construction.
    emb, _, _ = clustered_items(args.uploads + n_lat, DIMS, num_pairs=0, seed=3)
    tok_config = load_tokenizer_config(REPO_ROOT / "configs" / "test.toml", steps=600)
    log.info("training the bench tokenizer (%d steps)", tok_config.steps)
    tok = train_tokenizer({n: x[:5000] for n, x in emb.items()}, None, tok_config)
    tok.encode({n: emb[n][:8] for n in DIMS})  # compile before timing

    with tempfile.TemporaryDirectory(prefix="plum-bench-sid-") as tmp, bench_broker() as bootstrap:
        for prefix in ("tp.", "lat."):
            ensure_topics(bootstrap, topic_set(prefix))
        log.info("throughput run: %d uploads", args.uploads)
        tp = throughput(
            bootstrap,
            "tp.",
            tok,
            upload_values(emb, 0, args.uploads, "tp-"),
            args.batch_size,
            Path(tmp),
        )
        log.info("throughput: %s", tp)
        log.info("latency run: %d uploads at %.0f/s", n_lat, args.rate)
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
    path = write_result(
        "sid-service",
        config={
            "uploads": args.uploads,
            "batch_size": args.batch_size,
            "latency_rate": args.rate,
            "latency_seconds": args.latency_seconds,
            "batch_time_ms": args.batch_time_ms,
            "tokenizer": {"levels": list(tok.level_sizes), "modalities": dict(tok.modalities)},
            "targets": {"assignments_per_s": 10_000, "p99_s_at_1k_per_s": 1.0},
        },
        metrics={
            "assignments_per_s": tp["assignments_per_s"],
            "p50_s": lat["p50_s"],
            "p99_s": lat["p99_s"],
            "throughput_run": tp,
            "latency_run": lat,
        },
        baseline={"kafka_python_consume_per_s": tp["kafka_python_consume_per_s"]},
        ratio={
            "assignments_over_consume": round(
                tp["assignments_per_s"] / tp["kafka_python_consume_per_s"], 3
            )
        },
        notes="Broker, producer, service and JAX share the machine's cores.",
        out_dir=args.out_dir,
    )
    print(f"wrote {path}")
    print(
        f"  assignments/s: {tp['assignments_per_s']} (kafka-python consume ceiling {tp['kafka_python_consume_per_s']}/s)"
    )
    print(f"  upload->SID at {lat['achieved_rate']}/s: p50 {lat['p50_s']} s, p99 {lat['p99_s']} s")
    return 0
