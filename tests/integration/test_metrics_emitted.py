"""Every metric of the catalogue is emitted by the component that owns it.

Each component runs for real (its `plum` command, or the Flink job's process) with
/metrics on a port of its own, gets some input, and a scrape over HTTP must hold a
sample of every catalogue metric of that component: a metric only declared (`# HELP`
without a sample) does not count.

`LAUNCHERS` says how to start each component; a component added to the catalogue needs
a launcher here (or a place in `ALSO_LAUNCHES` when one process runs it beside another:
the Flink driver's `flink_job` beside its workers' `flink`), or an entry in `ELSEWHERE`
naming the test that scrapes it instead.
"""

from __future__ import annotations

import re
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitoring.metrics import BY_NAME, CATALOGUE, Metrics, serve_metrics
from plum.config import REPO_ROOT
from plum.ports import free_ports
from streams.contracts import schema
from streams.contracts.topics import TopicNames
from streams.kafka.clients import make_consumer, make_producer
from tests import flink_support as fs

pytestmark = pytest.mark.integration

TEST_CONFIG = REPO_ROOT / "configs" / "test.toml"
METRICS_LINE = re.compile(r"metrics on http://127\.0\.0\.1:(\d+)/metrics")


@dataclass(frozen=True)
class Env:
    bootstrap: str
    topics: TopicNames
    topic_prefix: str
    tmp_path: Path


# A launcher starts its component on `env`, yields component -> the port of its /metrics
# while it runs, and stops it on exit (asserting a clean stop where the component promises
# one).
Launcher = Callable[[Env], AbstractContextManager[dict[str, int]]]

# Components a launcher starts besides its own (their ports are in what it yields).
ALSO_LAUNCHES: dict[str, tuple[str, ...]] = {
    # `plum flink run` polls Flink's REST API for the job it runs and serves the result
    "flink": ("flink_job",),
}

# Shared metrics a component's /metrics must show besides its own.
ALSO_EMITS: dict[str, tuple[str, ...]] = {
    "flink": ("plum_deadletter_total",),
    "sid_service": ("plum_deadletter_total",),
}

# Components whose launcher their owners add (the service runs on plum.runtime and logs
# "metrics on http://127.0.0.1:PORT/metrics" like the others).
ELSEWHERE: dict[str, str] = {
    # needs a CPT checkpoint, a SID index and examples: that test builds them, runs
    # `plum trainer run --metrics-port P` and scrapes every trainer metric of the catalogue
    "trainer": "tests/integration/test_trainer_run.py::"
    "test_sigterm_checkpoints_and_exits_zero_and_the_checkpoint_evaluates",
    # need trainer checkpoints, SIDs from the SID service and each other: that module
    # runs the whole loop and scrapes both at its end
    "serving": "tests/integration/test_publish_and_serve.py::"
    "test_serving_and_the_publisher_emit_every_catalogue_metric",
    "publisher": "tests/integration/test_publish_and_serve.py::"
    "test_serving_and_the_publisher_emit_every_catalogue_metric",
}


# ---------------------------------------------------------------- helpers


class Process(fs.JobProcess):
    """A `plum` command in its own process group, its output in a log file."""

    def __init__(self, cmd: list[str], log_path: Path) -> None:
        super().__init__(cmd, log_path, {"PYTHONUNBUFFERED": "1"})

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def logged_port(self, timeout_s: float = 60.0) -> int:
        """The port of the runtime's "metrics on http://...:PORT/metrics" line."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = METRICS_LINE.search(self.log())
            if found:
                return int(found.group(1))
            assert self.proc.poll() is None, f"exited {self.proc.returncode}:\n{self.log()}"
            time.sleep(0.2)
        raise AssertionError(f"no metrics line within {timeout_s} s:\n{self.log()[-3000:]}")

    @contextmanager
    def serving(self, start_timeout_s: float = 60.0) -> Iterator[int]:
        """Its /metrics port while it runs; on leaving, SIGTERM must end it with exit 0."""
        try:
            yield self.logged_port(start_timeout_s)
        finally:
            assert self.stop() == 0, self.log()[-3000:]


def plum(*args: str) -> list[str]:
    return [sys.executable, "-m", "plum.cli", *args]


def emitted(port: int) -> set[str]:
    """Catalogue names with at least one sample on http://127.0.0.1:PORT/metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    names = set()
    for family in text_string_to_metric_families(text):
        if not family.samples:
            continue
        # prometheus_client names a counter family without its "_total"
        for name in (family.name, family.name + "_total"):
            if name in BY_NAME:
                names.add(name)
    return names


def expected_metrics(component: str) -> set[str]:
    own = {m.name for m in CATALOGUE if m.component == component}
    return own | set(ALSO_EMITS.get(component, ()))


def wait_for_metrics(port: int, want: set[str], timeout_s: float) -> None:
    """Scrape until every name in `want` has a sample, or fail naming those without."""
    deadline = time.monotonic() + timeout_s
    got: set[str] = set()
    while time.monotonic() < deadline:
        got = emitted(port)
        if want <= got:
            return
        time.sleep(0.5)
    raise AssertionError(f"never emitted within {timeout_s} s: {sorted(want - got)}")


# ---------------------------------------------------------------- launchers


@contextmanager
def simulator(env: Env) -> Iterator[dict[str, int]]:
    proc = Process(
        plum(
            "simulate",
            "--config",
            str(TEST_CONFIG),
            "--bootstrap",
            env.bootstrap,
            "--topic-prefix",
            env.topic_prefix,
            "--seconds",
            "1000000",  # runs until stopped
            "--rate",
            "300",
            "--truth",
            str(env.tmp_path / "truth.json"),
            "--metrics-port",
            "0",
        ),  # fmt: skip
        env.tmp_path / "simulator.log",
    )
    with proc.serving() as port:
        yield {"simulator": port}


@contextmanager
def kafka_exporter(env: Env) -> Iterator[dict[str, int]]:
    # A group with a committed offset, so there is a lag to report.
    producer = make_producer(env.bootstrap)
    for i in range(5):
        producer.send(env.topics.deadletter, value=b"x%d" % i)
    producer.flush()
    producer.close()
    consumer = make_consumer(env.bootstrap, [env.topics.deadletter], group_id=env.topic_prefix)
    deadline = time.monotonic() + 60
    while not consumer.poll(timeout_ms=500) and time.monotonic() < deadline:
        pass
    consumer.commit()
    consumer.close()
    proc = Process(
        plum(
            "kafka",
            "exporter",
            "--bootstrap",
            env.bootstrap,
            "--interval",
            "1",
            "--metrics-port",
            "0",
        ),  # fmt: skip
        env.tmp_path / "exporter.log",
    )
    with proc.serving() as port:
        yield {"kafka": port}


def simulated_timeline() -> list:
    """~200 valid simulated events as import timeline records (uploads and watches)."""
    from streams.datasets import movielens
    from streams.simulator.config import load_config
    from streams.simulator.stream import VALID, generate

    cfg = load_config(TEST_CONFIG, events=200, bad_fraction=0.0)
    records = []
    for rec in generate(cfg):
        if rec.kind != VALID:
            continue
        if rec.topic.endswith("uploads.v1"):
            up = schema.decode_upload(rec.value, schema.ValidationLimits(embedding_dims=cfg.dims))
            records.append(movielens.TimelineRecord(movielens.KIND_UPLOAD, up.video_id, up))
        else:
            w = schema.decode_watch(rec.value)
            records.append(movielens.TimelineRecord(movielens.KIND_WATCH, w.user_id, w))
    return records


@contextmanager
def movielens_import(env: Env) -> Iterator[dict[str, int]]:
    """A bounded batch: run the import's writer on a few simulated events, then serve the
    registry it counted into (what `--metrics-port` serves while an import runs)."""
    from streams.datasets.cli import write_timeline

    records = simulated_timeline()
    metrics = Metrics.for_component("import")
    write_timeline(records, env.bootstrap, env.topics, metrics)
    server = serve_metrics(metrics, 0)
    try:
        yield {"import": server.port}
    finally:
        server.close()


@contextmanager
def flink_job(env: Env) -> Iterator[dict[str, int]]:
    """The Flink job with its workers' /metrics (flink) and its driver's view of the job
    from Flink's REST API (flink_job), yielded once a checkpoint has completed."""
    fs.produce(env.bootstrap, env.topics.watches, fs.build_stream(5, 600, 2000, 10_000))
    port, job_port = free_ports(2)  # the job's workers serve a fixed port (0 turns it off)
    started_ms = time.time() * 1000
    job = fs.JobProcess(
        fs.job_command(
            env.bootstrap,
            env.topic_prefix,
            env.tmp_path / "ck",
            "--fresh",
            "--metrics-port",
            str(port),
            "--job-metrics-port",
            str(job_port),
        ),
        env.tmp_path / "flink.log",
    )
    try:
        # The operator's counters reach /metrics once the job runs and Flink's REST
        # reports them (polled by `plum flink run`): wait for them.
        deadline = time.monotonic() + 240
        while True:
            assert job.alive(), job.tail()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, f"no /metrics in 240 s:\n{job.tail()}"
                time.sleep(1.0)
        # checkpoints every second in the test config: one completes soon after RUNNING
        while True:
            assert job.alive(), job.tail()
            got = samples(job_port)
            if got.get("plum_flink_job_checkpoints", {}).get(("completed",), 0) >= 1:
                break
            assert time.monotonic() < deadline, f"no checkpoint in 240 s: {got}\n{job.tail()}"
            time.sleep(0.5)
        assert got["plum_flink_job_running"][()] == 1
        last_ms = got["plum_flink_job_last_checkpoint_ts"][()]
        assert started_ms < last_ms <= time.time() * 1000, (started_ms, last_ms)
        assert 0 <= got["plum_flink_job_checkpoint_duration_seconds"][()] < 60
        yield {"flink": port, "flink_job": job_port}
    finally:
        job.stop()


def samples(port: int) -> dict[str, dict[tuple[str, ...], float]]:
    """name -> label values -> value of every sample on http://127.0.0.1:PORT/metrics
    (empty while nothing listens there yet)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    except OSError:
        return {}
    got: dict[str, dict[tuple[str, ...], float]] = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            got.setdefault(s.name, {})[tuple(s.labels.values())] = s.value
    return got


@contextmanager
def sid_service(env: Env) -> Iterator[dict[str, int]]:
    """`plum tokenizer serve` with a tokenizer trained here on simulated uploads, fed valid
    and malformed uploads (the dead letters have a metric too)."""
    import numpy as np

    from streams.simulator.config import load_config
    from streams.simulator.stream import VALID, generate
    from tokenizer.checkpoint import save_tokenizer
    from tokenizer.config import load_tokenizer_config
    from tokenizer.train import train_tokenizer

    cfg = load_config(TEST_CONFIG, events=600, bad_fraction=0.1)
    uploads = [r for r in generate(cfg) if r.topic.endswith("uploads.v1")]
    valid = [schema.decode_upload(r.value) for r in uploads if r.kind == VALID]
    names = sorted(valid[0].embeddings)
    emb = {n: np.asarray([u.embeddings[n] for u in valid], np.float32) for n in names}
    tok_config = load_tokenizer_config(TEST_CONFIG, env={}, steps=20, codebook_base=16)
    save_tokenizer(train_tokenizer(emb, None, tok_config), env.tmp_path / "tokenizer")
    producer = make_producer(env.bootstrap)
    for rec in uploads:
        producer.send(env.topics.uploads, key=rec.key, value=rec.value)
    producer.flush()
    producer.close()
    proc = Process(
        plum(
            "tokenizer",
            "serve",
            "--config",
            str(TEST_CONFIG),
            "--bootstrap",
            env.bootstrap,
            "--topic-prefix",
            env.topic_prefix,
            "--checkpoint",
            str(env.tmp_path / "tokenizer"),
            "--index",
            str(env.tmp_path / "sids.sqlite"),
            "--metrics-port",
            "0",
        ),
        env.tmp_path / "sid_service.log",
    )
    with proc.serving(start_timeout_s=180) as port:  # JAX import and the checkpoint restore
        yield {"sid_service": port}


@contextmanager
def replay_player(env: Env) -> Iterator[dict[str, int]]:
    """`plum replay play` over a few simulated records written to the replay topics,
    slowed down (--max-rate) so that it is still playing when scraped."""
    from streams.datasets.cli import write_timeline

    records = simulated_timeline()
    write_timeline(records, env.bootstrap, env.topics, Metrics.for_component("import"))
    proc = Process(
        plum(
            "replay",
            "play",
            "--bootstrap",
            env.bootstrap,
            "--topic-prefix",
            env.topic_prefix,
            "--max-rate",
            "2",  # ~100 s for the ~200 records: still playing when scraped
            "--metrics-port",
            "0",
        ),  # fmt: skip
        env.tmp_path / "replay.log",
    )
    with proc.serving() as port:
        yield {"replay": port}


LAUNCHERS: dict[str, Launcher] = {
    "simulator": simulator,
    "replay": replay_player,
    "kafka": kafka_exporter,
    "import": movielens_import,
    "flink": flink_job,
    "sid_service": sid_service,
}
TIMEOUT_S = {"flink": 240.0, "sid_service": 120.0}


# ---------------------------------------------------------------- tests


def test_every_component_of_the_catalogue_has_a_launcher():
    owners = {m.component for m in CATALOGUE} - {"deadletter"}
    launched = set(LAUNCHERS) | {c for cs in ALSO_LAUNCHES.values() for c in cs}
    assert owners <= launched | set(ELSEWHERE), sorted(owners - launched - set(ELSEWHERE))
    shared = {m.name for m in CATALOGUE if m.component == "deadletter"}
    assert shared <= {n for names in ALSO_EMITS.values() for n in names}


@pytest.mark.parametrize("component", sorted(LAUNCHERS))
def test_component_emits_each_of_its_catalogue_metrics(
    component, kafka_bootstrap, topics, topic_prefix, tmp_path
):
    env = Env(kafka_bootstrap, topics, topic_prefix, tmp_path)
    with LAUNCHERS[component](env) as ports:
        assert set(ports) == {component, *ALSO_LAUNCHES.get(component, ())}
        for name, port in ports.items():
            want = expected_metrics(name)
            assert want, f"{name} owns no metric"
            wait_for_metrics(port, want, TIMEOUT_S.get(component, 60.0))
