"""Helpers for the Flink tests: a seeded watch stream, the job as a subprocess, outputs.

The stream comes from the project's simulator (valid watches, out-of-order watches held
back up to 30 s, malformed records of every watch kind). Records go to explicit
partitions (a blake2b hash of the key) so the test knows each partition's order, and
each partition ends with one *sentinel* watch far ahead in event time: it moves every
partition's watermark past all real data, so the final watermark of a live run is
known exactly (sentinel ts - out_of_orderness) whatever the timing.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from plum.config import REPO_ROOT
from streams.contracts import schema
from streams.flink.reference import RefParams, RefResult, in_backfill_range, run_reference
from streams.kafka.clients import make_producer, read_all
from streams.replay.cli import END_OF_TIME_MS
from tests.metrics_support import scrape  # noqa: F401  (fs.scrape, as the Flink tests call it)

TEST_CONFIG = REPO_ROOT / "configs" / "test.toml"
PARTITIONS = 4  # of plum.watches.v1 (streams/topics.py)


def partition_of(key: bytes | None) -> int:
    return int.from_bytes(hashlib.blake2b(key or b"", digest_size=4).digest(), "big") % PARTITIONS


def build_stream(
    seed: int, events: int, out_of_orderness_ms: int, window_ms: int
) -> list[tuple[int, bytes | None, bytes | None]]:
    """(partition, key, value) in produce order, sentinels last."""
    from streams.simulator.cli import generate, load_config

    cfg = load_config(TEST_CONFIG)
    cfg = replace(
        cfg,
        seed=seed,
        events=events,
        out_of_order_fraction=0.1,
        bad_fraction=0.04,
        max_delay_ms=30_000,
    )
    out: list[tuple[int, bytes | None, bytes | None]] = []
    max_ts = 0
    for rec in generate(cfg):
        if not rec.topic.endswith("watches.v1"):
            continue
        out.append((partition_of(rec.key), rec.key, rec.value))
        try:
            ts = json.loads(rec.value).get("ts")
            if isinstance(ts, int) and ts < 4_000_000_000_000:
                max_ts = max(max_ts, ts)
        except Exception:
            pass
    # A record with no value at all (a tombstone): dead-lettered, never a crash.
    out.append((partition_of(b"no-value"), b"no-value", None))
    sentinel_ts = max_ts + out_of_orderness_ms + 2 * window_ms + 1000
    for p in range(PARTITIONS):
        ev = schema.WatchEvent(
            event_id=f"sentinel-{p}",
            user_id=f"sentinel-{p}",
            video_id="sentinel",
            ts=sentinel_ts,
            watch_time_s=1.0,
            video_duration_s=10.0,
            clicked=False,
            surface="test",
        )
        out.append((p, ev.user_id.encode(), schema.encode(ev)))
    return out


def final_watermark(stream: list[tuple[int, bytes | None, bytes | None]], cfg) -> int:
    """The watermark the job reaches on `build_stream`'s output: its last record is the
    sentinel that pushes event time past everything before it."""
    sentinel_ts = json.loads(stream[-1][2])["ts"]
    return sentinel_ts - cfg.out_of_orderness_ms


def produce(
    bootstrap: str, topic: str, stream: list[tuple[int, bytes | None, bytes | None]]
) -> list[tuple[int, int, bytes | None]]:
    """Produce in order; returns (partition, offset, value) as the broker stored them."""
    producer = make_producer(bootstrap, max_request_size=2 * 1024 * 1024)
    futures = [producer.send(topic, key=k, value=v, partition=p) for p, k, v in stream]
    producer.flush(timeout=60)
    stored = []
    for (_p, _, v), f in zip(stream, futures, strict=False):
        md = f.get(timeout=30)
        stored.append((md.partition, md.offset, v))
    producer.close()
    stored.sort(key=lambda r: (r[0], r[1]))
    return stored


def stream_reference(stored, stream, cfg, topic: str):
    """What the live job must write for `build_stream`'s `stream`, given the records as
    the broker stored them (`stored`: (partition, offset, value), any order)."""
    return run_reference(
        sorted(stored, key=lambda r: (r[0], r[1])),
        RefParams.from_flink_config(cfg),
        int(time.time() * 1000),
        final_watermark(stream, cfg),
        topic,
    )


class Feeder(threading.Thread):
    """Produces `stream` to `topic` in chunks of `chunk` records, `every_s` apart, while a
    job runs; `stored` collects the records as the broker stored them. `finish()` waits
    for the end and raises what stopped the feed early, if anything did."""

    def __init__(self, bootstrap: str, topic: str, stream, chunk: int, every_s: float):
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.stream = bootstrap, topic, stream
        self.chunk, self.every_s = chunk, every_s
        self.stored: list[tuple[int, int, bytes | None]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for i in range(0, len(self.stream), self.chunk):
                part = self.stream[i : i + self.chunk]
                self.stored.extend(produce(self.bootstrap, self.topic, part))
                time.sleep(self.every_s)
        except BaseException as err:  # noqa: BLE001 - handed to the test by finish()
            self.error = err

    def finish(self) -> list[tuple[int, int, bytes | None]]:
        self.join()
        if self.error is not None:
            raise AssertionError(f"the feed stopped early: {self.error!r}") from self.error
        assert len(self.stored) == len(self.stream), (len(self.stored), len(self.stream))
        return self.stored


def backfill_reference(stored, cfg, topic: str, start_ms: int = 0, end_ms: int = END_OF_TIME_MS):
    """What a backfill over `stored` (partition, offset, value) records of `topic` must
    write: the reference pipeline on the records whose event time is in [start, end)."""
    in_range = [r for r in stored if in_backfill_range(r[2], start_ms, end_ms)]
    return run_reference(
        in_range, RefParams.from_flink_config(cfg), int(time.time() * 1000), None, topic
    )


def job_command(bootstrap: str, prefix: str, checkpoint_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "streams.flink.cli",
        "run",
        "--config",
        str(TEST_CONFIG),
        "--bootstrap",
        bootstrap,
        "--topic-prefix",
        prefix,
        "--checkpoint-dir",
        str(checkpoint_dir),
        *extra,
    ]


def start_fresh_job(bootstrap: str, prefix: str, tmp_path: Path) -> tuple[JobProcess, int]:
    """The job from the topics' start (checkpoints under tmp_path/ck, its log in
    tmp_path/job.log) with /metrics on a free port; returns (job, metrics port)."""
    from plum.ports import free_port

    port = free_port()
    command = job_command(
        bootstrap, prefix, tmp_path / "ck", "--fresh", "--metrics-port", str(port)
    )
    return JobProcess(command, tmp_path / "job.log"), port


class JobProcess:
    """A command (`plum flink run`: the PyFlink client and its JVM) in its own process
    group, its output in a log file; stop = SIGTERM to the group, SIGKILL what is left."""

    def __init__(self, cmd: list[str], log_path: Path, env_extra: dict[str, str] | None = None):
        env = dict(os.environ)
        env.update(env_extra or {})
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group: the job dies without a chance to commit."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._reap_group(signal.SIGKILL)

    def stop(self, timeout: float = 60.0) -> int:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self._reap_group(signal.SIGKILL)
        self._log.close()
        return self.proc.returncode

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"job did not exit within {timeout} s; log tail:\n{self.tail()}"
            ) from None

    def _reap_group(self, sig) -> None:
        # The JVM is a child in the same group; make sure nothing of this group lingers.
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""


def read_outputs(bootstrap: str, topics, suffix: str = "") -> dict:
    """Committed (read_committed) outputs, parsed."""
    sft = [
        schema.decode_sft_example(r.value)
        for r in read_all(bootstrap, topics.sft_examples + suffix, timeout_s=60)
    ]
    cooc = [
        schema.decode_cooccurrence(r.value)
        for r in read_all(bootstrap, topics.cooccurrence + suffix, timeout_s=60)
    ]
    dead = [
        schema.decode_dead_letter(r.value)
        for r in read_all(bootstrap, topics.deadletter + suffix, timeout_s=60)
    ]
    return {"sft": sft, "cooc": cooc, "dead": dead}


def wait_for_outputs(
    bootstrap: str, topics, expected, job: JobProcess | None, timeout_s: float, suffix: str = ""
) -> dict:
    """Poll until every output topic holds at least the expected number of records."""
    want = (len(expected.examples), sum(expected.pairs.values()), sum(expected.dead.values()))
    deadline = time.monotonic() + timeout_s
    got = None
    while time.monotonic() < deadline:
        outs = read_outputs(bootstrap, topics, suffix)
        got = (len(outs["sft"]), len(outs["cooc"]), len(outs["dead"]))
        if all(g >= w for g, w in zip(got, want, strict=False)):
            return outs
        if job is not None and not job.alive():
            raise AssertionError(
                f"job exited early (rc={job.proc.returncode}); got {got}, want {want}:\n{job.tail()}"
            )
        time.sleep(1.0)
    tail = job.tail() if job else ""
    raise AssertionError(
        f"outputs (sft, cooc, dead) = {got}, want {want} after {timeout_s} s\n{tail}"
    )


def compare(outs: dict, expected) -> None:
    """Exact comparison of committed outputs with the reference; messages name the difference."""
    got_ex = Counter(e.event_id for e in outs["sft"])
    dup = {k: c for k, c in got_ex.items() if c > 1}
    assert not dup, f"duplicate SFT examples: {list(dup.items())[:5]}"
    missing = sorted(set(expected.examples) - set(got_ex))
    extra = sorted(set(got_ex) - set(expected.examples))
    assert not missing and not extra, (
        f"examples missing {missing[:5]} ({len(missing)}), extra {extra[:5]} ({len(extra)})"
    )
    for e in outs["sft"]:
        assert e == expected.examples[e.event_id], (
            f"example differs:\n got {e}\nwant {expected.examples[e.event_id]}"
        )
    got_pairs = Counter((c.a, c.b, c.count, c.window_end) for c in outs["cooc"])
    assert got_pairs == expected.pairs, (
        f"pairs differ: missing {list((expected.pairs - got_pairs).items())[:5]}, "
        f"extra {list((got_pairs - expected.pairs).items())[:5]}"
    )
    got_dead = Counter((d.partition, d.offset, d.reason) for d in outs["dead"])
    assert got_dead == expected.dead, (
        f"dead letters differ: missing {list((expected.dead - got_dead).items())[:5]}, "
        f"extra {list((got_dead - expected.dead).items())[:5]}"
    )


@dataclass(frozen=True)
class Cut:
    """The prefix of the Flink job's output that is complete at the moment it is read,
    taken from the committed output itself: an example with event time T is released only
    once the watermark passed T, and every accepted watch at or before T was read by then
    (the reference raises if the stream breaks that premise), so every example before T is
    committed with it or earlier; the same holds for windows before the newest committed
    window end; a dead letter at offset o is committed with every record before o of its
    partition (checkpoint barriers follow the source's offsets)."""

    example_ts: int  # examples with ts < this
    window_end: int  # pairs with window_end < this
    dead_offsets: dict[int, int]  # partition -> dead letters at offsets <= this

    @classmethod
    def of(cls, outs: dict) -> Cut:
        dead: dict[int, int] = {}
        for d in outs["dead"]:
            dead[d.partition] = max(dead.get(d.partition, -1), d.offset)
        return cls(max(e.ts for e in outs["sft"]), max(c.window_end for c in outs["cooc"]), dead)

    def outputs(self, outs: dict) -> dict:
        return {
            "sft": [e for e in outs["sft"] if e.ts < self.example_ts],
            "cooc": [c for c in outs["cooc"] if c.window_end < self.window_end],
            "dead": [d for d in outs["dead"] if d.offset <= self.dead_offsets.get(d.partition, -1)],
        }

    def expected(self, ref: RefResult) -> RefResult:
        return RefResult(
            examples={k: e for k, e in ref.examples.items() if e.ts < self.example_ts},
            pairs=Counter({k: n for k, n in ref.pairs.items() if k[3] < self.window_end}),
            dead=Counter(
                {k: n for k, n in ref.dead.items() if k[1] <= self.dead_offsets.get(k[0], -1)}
            ),
        )


# Kafka writes a transaction's commit markers one partition at a time, so a read_committed
# reader can see a checkpoint's output in some partitions of a topic before the others.
# The cut is taken from one read and compared on a read this much later, by when every
# transaction the first read saw any part of is visible whole.
MARKERS_SETTLE_S = 5.0
