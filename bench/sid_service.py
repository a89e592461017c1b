"""`plum bench sid-service`: SID assignments/s and upload→SID latency of the real service.

The service runs exactly as `plum tokenizer serve` runs it (`tokenizer.service.
service_runtime`: the runtime, the batch cycle with its overlapped commits, /metrics),
and each run ends by the runtime's idle-exit.

Measurements against a private broker (free ports) with a tokenizer trained in the
same run on synthetic multi-modal items (text 32 / visual 32 / audio 16, the simulator's
dims):

1. throughput, once per Kafka client of the service (`--clients`, default both:
   confluent-kafka and kafka-python), each on its own topics, group and index: N uploads
   are produced first, then the service drains them; assignments/s = N / (first batch
   handed to the service → last batch committed, Kafka then index). Before rates are
   compared, the runs must agree: the same videos, the same tokenizer codes, unique SIDs,
   as many collisions. Each client runs `--repeats` times, the clients taking turns;
   the median run is reported, every run's rate is kept. The plain consume rate of the same topic with the same client, measured
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
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.common import bench_broker, write_result
from bench.kafka import confluent_consume, python_consume
from plum.config import REPO_ROOT
from plum.runtime import Runtime
from streams.contracts import schema
from streams.contracts.topics import TopicNames, topic_set
from streams.kafka.admin import ensure_topics
from streams.kafka.clients import librdkafka_producer, make_producer, read_all
from streams.kafka.reader import read_to_end
from streams.kafka.transactional import KAFKA_CLIENTS
from tokenizer.config import load_tokenizer_config
from tokenizer.index import SidIndex
from tokenizer.service import SidService, SidServiceConfig, service_runtime
from tokenizer.synthetic import clustered_items
from tokenizer.train import train_tokenizer

log = logging.getLogger(__name__)
DIMS = {"text": 32, "visual": 32, "audio": 16}
CONSUME = {"confluent": confluent_consume, "kafka-python": python_consume}
IDLE_EXIT_S = 3.0  # a run ends this long after its last upload (not measured)
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
    producer = librdkafka_producer(bootstrap, "plum-bench-load", linger_ms=20)
    for key, value in values:
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.5)
    if producer.flush(60) != 0:
        raise RuntimeError(f"could not produce every upload to {topic}")


def serve(config: SidServiceConfig, tok, index: SidIndex) -> tuple[SidService, Runtime]:
    """The service exactly as `plum tokenizer serve` runs it, ending once input is quiet."""
    service = SidService(config, tok, index)
    return service, service_runtime(service, idle_exit_s=IDLE_EXIT_S)


def assignments(bootstrap: str, topic: str) -> dict[str, tuple[int, ...]]:
    """video id -> SID of every committed assignment (each video must appear once)."""
    out: dict[str, tuple[int, ...]] = {}
    for rec in read_to_end(bootstrap, topic):
        a = schema.decode_sid_assignment(rec.value)
        if a.video_id in out:
            raise RuntimeError(f"{topic}: {a.video_id!r} was published twice")
        out[a.video_id] = a.sid
    return out


def throughput(
    bootstrap: str, prefix: str, tok, values, batch_size: int, index_dir: Path, client: str
) -> tuple[dict, dict[str, tuple[int, ...]]]:
    topics = TopicNames.with_prefix(prefix)
    load_uploads(bootstrap, topics.uploads, values)
    ceiling = CONSUME[client](bootstrap, topics.uploads, 2)
    config = SidServiceConfig(
        bootstrap=bootstrap,
        topic_prefix=prefix,
        batch_size=batch_size,
        batch_time_ms=200,
        kafka_client=client,
        metrics_port=0,
    )
    index = SidIndex(index_dir / f"{prefix}sids.sqlite")
    try:
        service, runtime = serve(config, tok, index)
        result = runtime.run()
    finally:
        index.close()
    totals = service.totals
    if totals.consumed != len(values) or service.first_batch_at is None:
        raise RuntimeError(
            f"{client}: the service consumed {totals.consumed}/{len(values)} uploads"
        )
    # First batch handed to the service -> last batch committed (Kafka, then the index).
    elapsed = service.last_committed_at - service.first_batch_at
    published = assignments(bootstrap, topics.sid_assignments)
    run = {
        "client": client,
        "uploads": totals.consumed,
        "seconds": round(elapsed, 3),
        "assignments_per_s": round(totals.assigned / elapsed),
        "collisions": totals.collisions,
        "batches": runtime.component.batches,
        "ended": result.reason,
        "consume_per_s": ceiling["records_per_s"],
    }
    return run, published


def median_run(runs: list[dict]) -> dict:
    """The run with the median assignments/s (the lower middle one for an even count)."""
    ordered = sorted(runs, key=lambda r: r["assignments_per_s"])
    return ordered[(len(ordered) - 1) // 2]


def check_agreement(published: dict[str, dict[str, tuple[int, ...]]]) -> dict:
    """The clients' runs must publish the same thing before their rates are compared: the
    same videos, each with the same tokenizer codes, unique SIDs, as many collisions.

    Disambiguation codes may differ: they follow the order in which the two upload
    partitions were interleaved, which is the consumer's business.
    """
    runs = list(published.items())
    first_client, first = runs[0]
    for client, sids in runs:
        if len(set(sids.values())) != len(sids):
            raise RuntimeError(f"{client}: SIDs are not unique")
        if {v: s[:-1] for v, s in sids.items()} != {v: s[:-1] for v, s in first.items()}:
            raise RuntimeError(f"{client} and {first_client} assigned different tokenizer codes")
        collisions = sum(s[-1] > 0 for s in sids.values())
        if collisions != sum(s[-1] > 0 for s in first.values()):
            raise RuntimeError(f"{client} and {first_client} differ in collisions")
    return {"clients": [c for c, _ in runs], "videos": len(first), "same_codes": True}


def latency(
    bootstrap: str, prefix: str, tok, values, rate: float, batch_time_ms: int, index_dir: Path
) -> dict:
    topics = TopicNames.with_prefix(prefix)
    config = SidServiceConfig(
        bootstrap=bootstrap,
        topic_prefix=prefix,
        batch_size=4096,
        batch_time_ms=batch_time_ms,
        metrics_port=0,
    )
    index = SidIndex(index_dir / f"{prefix}sids.sqlite")
    service, runtime = serve(config, tok, index)
    ended: list = []
    runner = threading.Thread(target=lambda: ended.append(runtime.run()), daemon=True)
    runner.start()
    # Measured latency starts at the first upload: wait until the group has partitions.
    cycle = runtime.component
    deadline = time.monotonic() + 120
    while not (cycle.io is not None and cycle.io.assigned):
        if not runner.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the latency run's service never got its partitions")
        time.sleep(0.1)
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
    runner.join(timeout=300)  # idle-exit ends the run once the uploads stop
    index.close()
    if runner.is_alive() or not ended:
        raise RuntimeError("the latency run's service did not end")
    wanted = {k.decode() for k, _ in values}
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
        "ended": ended[0].reason,
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
    parser.add_argument(
        "--repeats", type=int, default=3, help="throughput runs per client (medians reported)"
    )
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    unknown = sorted(set(clients) - set(KAFKA_CLIENTS))
    if unknown or not clients:
        parser.error(f"--clients {args.clients!r}: unknown {unknown}; known {KAFKA_CLIENTS}")
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats} must be >= 1")

    n_lat = int(args.rate * args.latency_seconds)
    # Every upload a distinct item: repeated embeddings would collide by construction.
    emb, _, _ = clustered_items(args.uploads + n_lat, DIMS, num_pairs=0, seed=3)
    tok_config = load_tokenizer_config(REPO_ROOT / "configs" / "test.toml", steps=600)
    log.info("training the bench tokenizer (%d steps)", tok_config.steps)
    tok = train_tokenizer({n: x[:5000] for n, x in emb.items()}, None, tok_config)
    tok.encode({n: emb[n][:8] for n in DIMS})  # compile before timing

    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="plum-bench-sid-") as tmp, bench_broker() as bootstrap:
        values = upload_values(emb, 0, args.uploads, "tp-")
        # Clients take turns, so a change in the machine's load hits each alike.
        repeats: dict[str, list[dict]] = {c: [] for c in clients}
        published = {}
        for rep in range(args.repeats):
            for client in clients:
                prefix = f"tp-{client}-{rep}."
                ensure_topics(bootstrap, topic_set(prefix))
                log.info("throughput run %d (%s): %d uploads", rep + 1, client, args.uploads)
                run, published[f"{client} #{rep + 1}"] = throughput(
                    bootstrap, prefix, tok, values, args.batch_size, Path(tmp), client
                )
                repeats[client].append(run)
                log.info("throughput (%s): %s", client, run)
        agreement = check_agreement(published)
        del published, values
        runs = {c: median_run(r) for c, r in repeats.items()}
        consume = {
            c: round(statistics.median(x["consume_per_s"] for x in r)) for c, r in repeats.items()
        }
        ensure_topics(bootstrap, topic_set("lat."))
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
            "repeats": args.repeats,
            "default_client": DEFAULT_CLIENT,
            "clients": clients,
            "tokenizer": {"levels": list(tok.level_sizes), "modalities": dict(tok.modalities)},
            "targets": {"assignments_per_s": 10_000, "p99_s_at_1k_per_s": 1.0},
        },
        metrics={
            "assignments_per_s": main["assignments_per_s"],
            "assignments_per_s_by_client": {c: r["assignments_per_s"] for c, r in runs.items()},
            "assignments_per_s_repeats": {
                c: [x["assignments_per_s"] for x in r] for c, r in repeats.items()
            },
            "consume_per_s_repeats": {
                c: [x["consume_per_s"] for x in r] for c, r in repeats.items()
            },
            "p50_s": lat["p50_s"],
            "p99_s": lat["p99_s"],
            "throughput_runs": runs,
            "latency_run": lat,
            "outputs_agree": agreement,
            # Other work on the machine shares the 2 cores: the load averages (1, 5 and
            # 15 minutes) when the runs started and ended say how much.
            "load_average_1m": {
                "start": round(load_start[0], 2),
                "end": round(os.getloadavg()[0], 2),
            },
            "load_average_1_5_15m": {
                "start": [round(x, 2) for x in load_start],
                "end": [round(x, 2) for x in os.getloadavg()],
            },
        },
        baseline={f"{c}_consume_per_s": rate for c, rate in consume.items()},
        ratio={
            "assignments_over_consume": {
                c: round(r["assignments_per_s"] / consume[c], 3) for c, r in runs.items()
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
            " p50_s and p99_s are of the default client (config.default_client). The service"
            " runs as `plum tokenizer serve` runs it (tokenizer.service.service_runtime:"
            " Runtime + BatchCycle, overlapped commits with confluent), ended by idle-exit."
        ),
        out_dir=args.out_dir,
    )
    print(f"wrote {path}")
    for client, r in runs.items():
        print(
            f"  {client}: {r['assignments_per_s']} assignments/s, median of"
            f" {[x['assignments_per_s'] for x in repeats[client]]} (consume ceiling"
            f" {consume[client]}/s)"
        )
    print(
        f"  upload->SID at {lat['achieved_rate']}/s ({DEFAULT_CLIENT}):"
        f" p50 {lat['p50_s']} s, p99 {lat['p99_s']} s"
    )
    return 0
