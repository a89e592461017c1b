"""`plum bench flink`: end-to-end events/s of the Flink job next to its baselines, one run.

All on one broker, one seeded watch stream (simulator, with out-of-order and malformed
records) in a replay topic:

* ceiling: kafka-python consume rate of that topic, and Kafka's Java ConsumerPerformance;
* naive: one Python process doing the same logic with kafka-python: consume, validate,
  per-user timeline (streams.flink.timeline), watermark + window counts in dicts, produce
  examples, pairs and dead letters (not transactional);
* flink: the real job (its per-record work in the JVM operator, streams/flink/jvm) as a
  backfill over the whole topic (bounded, exits by itself). events/s = input records /
  job seconds (submission to finish, so it includes task deployment but not the client's
  JVM start); the wall time including JVM start is reported too.

Before any rate is reported, each run's outputs are read back (examples, pairs, dead
letters; the job's read_committed) and compared with the naive loop's on the same input:
count and an order-free digest of each (examples as decoded objects, pairs as (a, b,
count, window_end), dead letters by (source_topic, partition, offset, reason, raw); the
backfill reads only records with an integer ts, so the naive loop's dead letters of the
others are left out). A run whose outputs differ is an error, not a number.

All three are run --repeats times (default 3), interleaved, and each is reported as its
median run with every run's rate beside it. Then, on the same input and checked the same
way: the job submitted --repeats times to a standalone session cluster after one warm-up
job there (its JVMs outlive the jobs, as in a deployment; --no-session-cluster skips it);
--repeats runs of both on a near-empty input (--fixed-events), whose job seconds are the
job's fixed cost; and one run of both on a long input (--warm-events) for the warm rate.

    plum bench flink [--bootstrap H:P] [--events N] [--repeats R] [--warm-events N]
                     [--fixed-events N] [--no-session-cluster]
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import bench_broker, write_result
from bench.flink_log import phases_in
from plum.config import REPO_ROOT
from plum.ports import free_port
from streams.contracts import schema
from streams.contracts.topics import TopicNames, topic_set
from streams.flink import timeline as ut
from streams.flink.job import load_flink_config
from streams.flink.job_metrics import FlinkRest
from streams.flink.reference import in_backfill_range
from streams.flink.session_cluster import SessionCluster, SessionClusterConfig
from streams.kafka.admin import ensure_topics
from streams.kafka.clients import make_consumer, make_producer, read_all

log = logging.getLogger(__name__)
BENCH_CONFIG = REPO_ROOT / "configs" / "test.toml"
DEFAULT_EVENTS = 300_000
# The job runs as a backfill over the whole topic: every record with an integer ts here.
BACKFILL_FROM_MS, BACKFILL_TO_MS = 0, 4_000_000_000_000
NOTES = (
    "The job's per-record work (validation, per-user state, sampling, pair counting) runs in "
    "two Java Process Table Functions (streams/flink/jvm); PyFlink only defines and launches "
    "the job. Every rate is reported only after the run's outputs (examples, pairs, dead "
    "letters: count and order-free digest) equalled the naive loop's on the same input. "
    "records_per_s is the whole run: input records / job seconds (submission to finish), so "
    "it carries the job's fixed costs (planning and code generation ~5 s, deployment ~3 s, the "
    "final checkpoint that commits the Kafka transactions, which Flink >= 1.18 starts by "
    "itself once every task has reported end of data) and the JVM's warm-up. "
    "second_half_records_per_s is the source's rate over the second half of "
    "the input, from Flink's own counter (the source is throttled by the operators behind "
    "it). Where the time goes (per-thread CPU of the job's JVM, quiet 2-core box, ParallelGC): "
    "a 292k run used ~58 s of CPU in ~30 s, of which the JIT compilers ~25 s, both operators "
    "~12 s, planning ~7 s, the Kafka producers ~3 s, the source ~2 s; on 972k records the JIT "
    "took ~38 s and the operators ~33 s, and the rate reached ~30k/s only after ~35 s (the "
    "previous layout, an SQL window aggregate behind a DataStream round trip: ~22k/s). C1 "
    "only (-XX:TieredStopAtLevel=1) cuts the JIT's share but runs the warm job at ~19k/s, so "
    "the configs keep the default tiered JIT. The naive loop and the job share the same two "
    "cores in each repeat. fixed_cost: the same job on a near-empty input (--fixed-events "
    "simulator events): its job seconds are what every run pays before and after its records "
    "(planning and code generation, deployment, the final checkpoint), and "
    "flink_vs_naive_if_records_were_free = records / those seconds / the naive rate is the "
    "most the whole-run ratio can reach on this input with that fixed cost. "
    "flink_session_cluster: the same job submitted (plum flink run --cluster) to a standalone "
    "session cluster (1 JobManager + 1 TaskManager) that already ran one warm-up job, as in a "
    "deployment where the cluster outlives its jobs; its job_seconds still include the "
    "client's planning in a fresh JVM, flink_job_seconds is Flink's own duration of the job "
    "(scheduling to finished); the cluster runs after the MiniCluster repeats (not "
    "interleaved with them), so it takes no CPU from them. phases: each MiniCluster run's "
    "seconds split by its own Flink log (bench/flink_log.py): client (planning, code "
    "generation and the MiniCluster's start: the job seconds less the logged phases), deploy "
    "(submission to every task running), records (to the last split read), finish (draining "
    "and the final checkpoint)."
)


def _stream(events: int, seed: int = 3):
    from dataclasses import replace

    from streams.simulator.cli import generate, load_config

    cfg = replace(
        load_config(BENCH_CONFIG),
        seed=seed,
        events=events,
        out_of_order_fraction=0.05,
        bad_fraction=0.01,
        max_delay_ms=30_000,
        num_users=2000,
    )
    return [
        (r.key, r.value)
        for r in generate(cfg)
        if r.topic.endswith("watches.replay.v1") or r.topic.endswith("watches.v1")
    ]


def produce_stream(bootstrap: str, topic: str, events: int) -> int:
    recs = _stream(events)
    producer = make_producer(bootstrap, max_request_size=2 * 1024 * 1024)
    for k, v in recs:
        producer.send(topic, key=k, value=v)
    producer.flush(timeout=120)
    producer.close()
    return len(recs)


def naive_loop(bootstrap: str, topics: TopicNames, n_records: int, suffix: str) -> dict:
    """The same logic in one Python process with kafka-python, records/s end to end."""
    cfg = load_flink_config(BENCH_CONFIG)
    p = cfg.timeline_params()
    r_max = p.weights.max_reward()
    src = topics.watches_replay
    consumer = make_consumer(
        bootstrap,
        fetch_max_bytes=50 * 1024 * 1024,
        max_partition_fetch_bytes=10 * 1024 * 1024,
        max_poll_records=5000,
    )
    from kafka import TopicPartition

    tps = [TopicPartition(src, i) for i in range(4)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    producer = make_producer(bootstrap)
    states: dict[str, list] = {}
    timers: list[tuple[int, str]] = []
    part_max: dict[int, int] = {}
    windows: dict[tuple[str, str, int], int] = defaultdict(int)
    size = cfg.window_size_ms
    out = {"examples": 0, "pairs": 0, "dead": 0}

    def fire(upto: int) -> None:
        while timers and timers[0][0] <= upto:
            ts, user = heapq.heappop(timers)
            pairs, examples = ut.release(states[user], ts, p, r_max)
            for a, b, pts in pairs:
                windows[(a, b, pts - pts % size + size)] += 1
            for ev, r, hist in examples:
                ex = schema.SftExample(
                    ev[ut.EVENT_ID],
                    user,
                    tuple(schema.HistoryItem(*h) for h in hist),
                    ev[ut.CONTEXT],
                    ev[ut.VIDEO_ID],
                    r,
                    ev[ut.TS],
                )
                producer.send(
                    topics.sft_examples + suffix, key=user.encode(), value=schema.encode(ex)
                )
                out["examples"] += 1
        for key in [k for k in windows if k[2] - 1 <= upto]:
            count = windows.pop(key)
            if count >= cfg.min_count:
                pair = schema.CooccurrencePair(key[0], key[1], count, key[2])
                producer.send(
                    topics.cooccurrence + suffix,
                    key=f"{key[0]}|{key[1]}".encode(),
                    value=schema.encode(pair),
                )
                out["pairs"] += 1

    seen = 0
    start = time.perf_counter()
    deadline = start + 600
    while seen < n_records and time.perf_counter() < deadline:
        for tp, batch in consumer.poll(timeout_ms=500).items():
            for rec in batch:
                seen += 1
                try:
                    w = schema.decode_watch(
                        rec.value, schema.ValidationLimits(now_ms=int(time.time() * 1000))
                    )
                except schema.ValidationError as err:
                    dl = schema.DeadLetter.of(
                        src, rec.partition, rec.offset, err, rec.value, int(time.time() * 1000)
                    )
                    producer.send(topics.deadletter + suffix, value=schema.encode(dl))
                    out["dead"] += 1
                    continue
                pm = part_max.get(tp.partition)
                if pm is None or w.ts > pm:
                    part_max[tp.partition] = w.ts
                st = states.setdefault(w.user_id, ut.new_state())
                if not ut.admit(st, ut.watch_tuple(w), p.allowed_lateness_ms):
                    err = schema.ValidationError(schema.LATE, f"ts={w.ts} late")
                    dl = schema.DeadLetter.of(
                        src, rec.partition, rec.offset, err, rec.value, int(time.time() * 1000)
                    )
                    producer.send(topics.deadletter + suffix, value=schema.encode(dl))
                    out["dead"] += 1
                    continue
                heapq.heappush(timers, (w.ts, w.user_id))
            if len(part_max) == 4:
                fire(min(part_max.values()) - cfg.out_of_orderness_ms)
    fire(2**62)
    producer.flush(timeout=120)
    elapsed = time.perf_counter() - start
    consumer.close()
    producer.close()
    return {
        "records": seen,
        "seconds": round(elapsed, 3),
        "records_per_s": round(seen / elapsed),
        **out,
    }


class SourceProgress:
    """Records the job's Kafka source has emitted, over time, from Flink's REST API (the
    source vertex's write-records, polled every `interval_s` in a thread while the job
    runs): what the warm rate is computed from. Only a job started after this object was
    made is counted: on a session cluster the jobs before it are still listed."""

    def __init__(self, rest_port: int, interval_s: float = 0.5) -> None:
        self.rest = FlinkRest(f"http://127.0.0.1:{rest_port}", timeout_s=2.0)
        self.since_ms = int(time.time() * 1000)
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []  # (perf_counter, records)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self.stop.wait(self.interval_s):
            try:
                n = self.rest.source_records_out(self.since_ms)
            except (OSError, ValueError):  # not up yet, or gone: the samples taken are what counts
                continue
            if n is not None:
                self.samples.append((time.perf_counter(), n))

    def second_half_rate(self) -> float | None:
        """Records/s over the second half of what the source emitted: from the first poll
        that saw half of its final count to the first that saw all of it (the source's
        count is of records in the backfill's range, so less than the topic's). None when
        the polls did not see both."""
        if not self.samples:
            return None
        final = self.samples[-1][1]
        t0, n0 = next((t, n) for t, n in self.samples if n >= final // 2)
        t1, n1 = next((t, n) for t, n in self.samples if n >= final)
        return (n1 - n0) / (t1 - t0) if t1 > t0 else None


def flink_run(
    bootstrap: str,
    prefix: str,
    n_records: int,
    suffix: str,
    workdir: Path,
    cluster: SessionCluster | None = None,
) -> dict:
    """One backfill run of the job over the topic, in its own MiniCluster or submitted to
    `cluster`. Whole-run rate: input records / job seconds (from the client's submit call
    to the job's end: planning, deployment, the JIT's warm-up and the final checkpoint
    included). Warm rate: the source's rate over the second half of the input, from
    Flink's own counter (after the JVM has compiled the hot code; on a busy 2-core box that
    takes ~30 s, so it shows only on a long input). On a cluster, Flink's own duration of
    the job (scheduling to finished, without the client's planning) is reported too."""
    rest_port = cluster.rest_port if cluster else free_port()
    log_dir = workdir / "log"  # this run's own Flink log: where its seconds went
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        PLUM_FLINK__CHECKPOINT_INTERVAL_MS="5000",
        PLUM_FLINK__REST_PORT=str(rest_port),
        FLINK_LOG_DIR=str(log_dir),
    )
    if cluster is not None:
        env["PLUM_FLINK__CLUSTER_REST"] = cluster.rest
    cmd = [
        sys.executable,
        "-m",
        "streams.flink.cli",
        "run",
        "--config",
        str(BENCH_CONFIG),
        "--bootstrap",
        bootstrap,
        "--topic-prefix",
        prefix,
        "--backfill",
        "--from",
        str(BACKFILL_FROM_MS),
        "--to",
        str(BACKFILL_TO_MS),
        "--output-suffix",
        suffix,
        "--checkpoint-dir",
        str(workdir / "ck"),
    ]
    progress = SourceProgress(rest_port)
    progress.thread.start()
    start = time.perf_counter()
    try:
        done = subprocess.run(
            cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1800
        )
    finally:
        progress.stop.set()
        progress.thread.join(timeout=10)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"flink run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    m = re.search(r"ended after ([\d.]+) s", done.stderr + done.stdout)
    job_s = float(m.group(1)) if m else wall
    warm = progress.second_half_rate()
    out = {
        "records": n_records,
        "job_seconds": job_s,
        "wall_seconds": round(wall, 3),
        "records_per_s": round(n_records / job_s),
        "records_per_s_incl_start": round(n_records / wall),
        "second_half_records_per_s": None if warm is None else round(warm),
        # a MiniCluster's phases from its log (None on a session cluster: the job's log
        # is the cluster's)
        "phases": phases_in(log_dir, job_s),
    }
    if cluster is not None:
        job_id = re.search(r"flink job ([0-9a-f]{32}) started", done.stderr + done.stdout)
        if job_id is None:
            raise RuntimeError(f"no job id in the client's log:\n{done.stderr[-3000:]}")
        flink_s = progress.rest.job_seconds(job_id.group(1))
        out["flink_job_seconds"] = flink_s
        out["flink_job_records_per_s"] = round(n_records / flink_s)
    return out


def _median_run(runs: list[dict]) -> dict:
    """The run with the median records/s (the lower middle one for an even count), with
    every run's rate beside it: on a shared 2-core machine single runs vary by +-20%."""
    ordered = sorted(runs, key=lambda r: r["records_per_s"])
    return {
        **ordered[(len(ordered) - 1) // 2],
        "runs_records_per_s": [r["records_per_s"] for r in runs],
    }


class OutputMismatch(RuntimeError):
    """The job's outputs are not the naive loop's: its rate would measure something else."""


def _digest(items: list[str]) -> str:
    """Order-free: sha256 over the sorted canonical texts."""
    h = hashlib.sha256()
    for item in sorted(items):
        h.update(item.encode("utf-8", "surrogatepass"))
        h.update(b"\n")
    return h.hexdigest()[:16]


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def read_outputs(bootstrap: str, topics: TopicNames, suffix: str) -> dict:
    """Count and order-free digest of each output topic `<topic><suffix>` (committed)."""
    examples = [
        _canonical(schema.to_dict(schema.decode_sft_example(r.value)))
        for r in read_all(bootstrap, topics.sft_examples + suffix, timeout_s=120)
    ]
    pairs = [
        _canonical([p.a, p.b, p.count, p.window_end])
        for p in (
            schema.decode_cooccurrence(r.value)
            for r in read_all(bootstrap, topics.cooccurrence + suffix, timeout_s=120)
        )
    ]
    dead = [
        _canonical([d.source_topic, d.partition, d.offset, d.reason, d.raw_b64])
        for d in (
            schema.decode_dead_letter(r.value)
            for r in read_all(bootstrap, topics.deadletter + suffix, timeout_s=120)
        )
        # the job runs as a backfill, which reads only records with an integer ts in its
        # range (the live job dead-letters the rest): the naive loop's others are not compared
        if in_backfill_range(d.raw, BACKFILL_FROM_MS, BACKFILL_TO_MS)
    ]
    return {
        name: {"count": len(items), "digest": _digest(items)}
        for name, items in (("examples", examples), ("pairs", pairs), ("dead_letters", dead))
    }


def check_outputs(got: dict, want: dict, what: str) -> None:
    """Raise OutputMismatch naming each output whose count or digest differs."""
    bad = [f"{k}: {got[k]} != naive {want[k]}" for k in want if got.get(k) != want[k]]
    if bad:
        raise OutputMismatch(f"{what}: outputs differ from the naive loop's: " + "; ".join(bad))


@dataclass
class ComparedRuns:
    """Every run of one input, in the order made; each naive and Flink run's outputs were
    checked equal to the first naive run's (`reference`)."""

    prefix: str  # of the input's topics
    records: int
    reference: dict
    python_consume: list[dict] = field(default_factory=list)
    java_consume: list[dict] = field(default_factory=list)
    naive: list[dict] = field(default_factory=list)
    flink: list[dict] = field(default_factory=list)  # each in its own MiniCluster


def checked_job(
    bootstrap: str,
    runs: ComparedRuns,
    suffix: str,
    what: str,
    tmp: Path,
    cluster: SessionCluster | None = None,
) -> dict:
    """One Flink run over the input of `runs` into `<topic><suffix>`, its outputs checked
    against the reference (OutputMismatch otherwise)."""
    got = flink_run(
        bootstrap, runs.prefix, runs.records, suffix, tmp / f"{runs.prefix}{suffix}", cluster
    )
    topics = TopicNames.with_prefix(runs.prefix)
    check_outputs(read_outputs(bootstrap, topics, suffix), runs.reference, what)
    return got


def compared_runs(
    bootstrap: str, events: int, repeats: int, tmp: Path, ceilings: bool = True
) -> ComparedRuns:
    """Consume ceilings, naive loop and the Flink job over one topic of `events` simulator
    records, `repeats` times interleaved (so a busy spell on the machine hits all of them
    alike). Every naive and Flink run's outputs must equal the first naive run's
    (OutputMismatch otherwise)."""
    from bench.kafka import java_consume, python_consume
    from streams.flink.cli import _ensure_suffixed_topics

    prefix = f"bench{uuid.uuid4().hex[:6]}."
    ensure_topics(bootstrap, topic_set(prefix))
    topics = TopicNames.with_prefix(prefix)
    n = produce_stream(bootstrap, topics.watches_replay, events)
    log.info("produced %d watch-topic records", n)
    runs = ComparedRuns(prefix, n, reference={})
    for r in range(repeats):
        if ceilings:
            runs.python_consume.append(python_consume(bootstrap, topics.watches_replay, 4))
            runs.java_consume.append(java_consume(bootstrap, topics.watches_replay, n))
        _ensure_suffixed_topics(bootstrap, topics, f".naive{r}")
        runs.naive.append(naive_loop(bootstrap, topics, n, suffix=f".naive{r}"))
        outs = read_outputs(bootstrap, topics, f".naive{r}")
        if not runs.reference:
            runs.reference = outs
            log.info("naive outputs: %s", outs)
        check_outputs(outs, runs.reference, f"naive run {r + 1}")
        runs.naive[-1]["outputs"] = runs.reference
        runs.flink.append(checked_job(bootstrap, runs, f".jvm{r}", f"flink run {r + 1}", tmp))
        log.info(
            "%d records, repeat %d/%d: naive %s/s, flink %s/s (second half %s/s), outputs equal",
            n,
            r + 1,
            repeats,
            runs.naive[-1]["records_per_s"],
            runs.flink[-1]["records_per_s"],
            runs.flink[-1]["second_half_records_per_s"],
        )
    return runs


def session_cluster_runs(
    bootstrap: str, runs: ComparedRuns, repeats: int, tmp: Path
) -> tuple[dict, list[dict]]:
    """The job over the input of `runs`, submitted to a standalone session cluster (one
    JobManager, one TaskManager) started for this: one warm-up job, then `repeats` measured
    ones, each checked against the reference. The cluster is up only here, so it takes no
    CPU from the other runs. Returns (warm-up run, measured runs)."""
    cluster = SessionCluster(
        SessionClusterConfig(taskmanagers=1, taskmanager_memory="2048m"), tmp / "session-cluster"
    )
    cluster.up()
    try:
        warmup = checked_job(bootstrap, runs, ".session-warmup", "session warm-up", tmp, cluster)
        measured = []
        for r in range(repeats):
            measured.append(
                checked_job(bootstrap, runs, f".session{r}", f"session run {r + 1}", tmp, cluster)
            )
            log.info(
                "%d records, session cluster run %d/%d: %s/s (Flink's job duration: %s/s), "
                "outputs equal",
                runs.records,
                r + 1,
                repeats,
                measured[-1]["records_per_s"],
                measured[-1]["flink_job_records_per_s"],
            )
    finally:
        cluster.down()
    return warmup, measured


@dataclass
class BenchRuns:
    """What `plum bench flink` measured, each a median run (see _median_run)."""

    ceiling: dict
    naive: dict
    flink: dict
    session: dict | None  # the job on a warm session cluster
    session_warmup: dict | None
    warm: dict | None  # the long input: naive loop and job, one run each
    fixed: dict | None  # a near-empty input: the job's fixed cost


def run(
    bootstrap: str,
    events: int,
    repeats: int,
    warm_events: int,
    fixed_events: int = 0,
    session: bool = False,
) -> BenchRuns:
    """The repeats on `events` records (and on a session cluster too, with `session`), each
    reported as its median run; one run of the naive loop and the job on `warm_events`
    records (0: skipped) for the warm rate; and `repeats` runs on `fixed_events` records
    (0: skipped), whose job seconds are the job's fixed cost (planning, deployment, the
    final checkpoint) with next to no records to process."""
    with tempfile.TemporaryDirectory(prefix="plum-bench-flink-") as tmp:
        root = Path(tmp)
        main = compared_runs(bootstrap, events, repeats, root)
        warmup, on_cluster = (
            session_cluster_runs(bootstrap, main, repeats, root) if session else (None, [])
        )
        fixed = None
        if fixed_events:
            small = compared_runs(bootstrap, fixed_events, repeats, root, ceilings=False)
            fixed = {
                "events": fixed_events,
                "naive_kafka_python_loop": _median_run(small.naive),
                "flink": _median_run(small.flink),
            }
        warm = None
        if warm_events:
            long = compared_runs(bootstrap, warm_events, 1, root, ceilings=False)
            warm = {"naive_kafka_python_loop": long.naive[0], "flink": long.flink[0]}
    return BenchRuns(
        ceiling={
            "kafka_python_consume": _median_run(main.python_consume),
            "java_consume": _median_run(main.java_consume),
        },
        naive=_median_run(main.naive),
        flink=_median_run(main.flink),
        session=_median_run(on_cluster) if on_cluster else None,
        session_warmup=warmup,
        warm=warm,
        fixed=fixed,
    )


def _ratios(runs: BenchRuns) -> dict:
    """Every rate against the naive loop and the consume ceilings of the same run."""
    naive = runs.naive["records_per_s"]
    py_consume = runs.ceiling["kafka_python_consume"]["records_per_s"]
    flink = runs.flink["records_per_s"]
    ratio = {
        "flink_vs_naive": round(flink / naive, 3),
        "flink_vs_kafka_python_consume": round(flink / py_consume, 3),
        "flink_vs_java_consume": round(flink / runs.ceiling["java_consume"]["records_per_s"], 3),
        "targets": {"flink_vs_naive": 3.0, "flink_vs_consume_ceiling": 0.25},
    }
    if runs.session:
        ratio["flink_session_cluster_vs_naive"] = round(runs.session["records_per_s"] / naive, 3)
        ratio["flink_session_cluster_vs_kafka_python_consume"] = round(
            runs.session["records_per_s"] / py_consume, 3
        )
        ratio["flink_session_cluster_job_only_vs_naive"] = round(
            runs.session["flink_job_records_per_s"] / naive, 3
        )
    if runs.fixed:
        # Were the records free, the whole run would last the fixed cost: the best ratio
        # this input allows a job with that fixed cost.
        ratio["flink_vs_naive_if_records_were_free"] = round(
            runs.flink["records"] / runs.fixed["flink"]["job_seconds"] / naive, 3
        )
    if runs.warm:
        w_naive = runs.warm["naive_kafka_python_loop"]["records_per_s"]
        warm_rate = runs.warm["flink"]["second_half_records_per_s"]
        if warm_rate:
            ratio["flink_warm_vs_naive"] = round(warm_rate / w_naive, 3)
            ratio["flink_warm_vs_kafka_python_consume"] = round(warm_rate / py_consume, 3)
        ratio["flink_vs_naive_long_run_whole"] = round(
            runs.warm["flink"]["records_per_s"] / w_naive, 3
        )
    return ratio


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="plum bench flink", description=__doc__)
    parser.add_argument("--bootstrap", help="use this broker instead of starting a private one")
    parser.add_argument(
        "--events",
        type=int,
        default=DEFAULT_EVENTS,
        help="simulator records (most are watches); enough that the job's ~8 s start and "
        "the JVM's JIT warm-up do not dominate a job that runs for days",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each measurement; the median is reported"
    )
    parser.add_argument(
        "--warm-events",
        type=int,
        default=1_000_000,
        help="records of one more naive and Flink run whose second half gives the job's "
        "warm rate (0: skip)",
    )
    parser.add_argument(
        "--fixed-events",
        type=int,
        default=2_000,
        help="records of --repeats more runs whose job seconds are the job's fixed cost (0: skip)",
    )
    parser.add_argument(
        "--no-session-cluster",
        action="store_true",
        help="skip the runs submitted to a warm standalone session cluster",
    )
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        with bench_broker(args.bootstrap) as bootstrap:
            runs = run(
                bootstrap,
                args.events,
                args.repeats,
                args.warm_events,
                fixed_events=args.fixed_events,
                session=not args.no_session_cluster,
            )
    except OutputMismatch as exc:
        print(f"plum bench flink: {exc}", file=sys.stderr)
        return 1
    metrics: dict = {
        "flink": runs.flink,
        "flink_records_per_s": runs.flink["records_per_s"],
        "outputs_equal": True,
    }
    if runs.session:
        metrics["flink_session_cluster"] = runs.session
        metrics["flink_session_cluster_warmup"] = runs.session_warmup
    if runs.fixed:
        metrics["fixed_cost"] = runs.fixed
    if runs.warm:
        metrics["warm"] = runs.warm
    baseline = {"naive_kafka_python_loop": runs.naive, **runs.ceiling}
    ratio = _ratios(runs)
    cfg = load_flink_config(BENCH_CONFIG)
    config = {
        "events": args.events,
        "repeats": args.repeats,
        "warm_events": args.warm_events,
        "fixed_events": args.fixed_events,
        "session_cluster": None
        if args.no_session_cluster
        else "standalone, 1 JobManager + 1 TaskManager (1 slot, 2048m), one warm-up job first",
        "parallelism": cfg.parallelism,
        "operator": "jvm (streams/flink/jvm, Process Table Function)",
        "checkpoint_interval_ms": 5000,
        "config": str(BENCH_CONFIG),
    }
    path = write_result(
        "flink", config, metrics, baseline, ratio, notes=NOTES, out_dir=args.out_dir
    )
    print(json.dumps({"metrics": metrics, "baseline": baseline, "ratio": ratio}, indent=2))
    print(f"wrote {path}")
    return 0
