"""`plum simulate` against the real broker: what it produces is what the generator made."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter

import pytest

from monitoring.metrics import Metrics
from plum.config import REPO_ROOT
from streams.contracts import schema
from streams.kafka.clients import read_all
from streams.simulator.cli import run
from streams.simulator.config import SimulatorConfig
from streams.simulator.stream import VALID, generate, load_ground_truth

pytestmark = pytest.mark.integration

SMALL = SimulatorConfig(
    seed=3,
    num_users=100,
    num_topics=8,
    latent_dim=12,
    initial_videos=100,
    new_uploads_per_sim_minute=30.0,
    events=1500,
    bad_fraction=0.03,
    out_of_order_fraction=0.03,
    progress_every_s=1.0,
)


def test_simulator_produces_its_generated_stream_to_kafka(
    kafka_bootstrap, topics, topic_prefix, tmp_path
):
    cfg = SMALL.replace(topic_prefix=topic_prefix, truth_path=tmp_path / "truth.json")
    metrics = Metrics.for_component("simulator")
    assert run(cfg, kafka_bootstrap, metrics=metrics) == 0

    expected = list(generate(cfg))
    for topic in (topics.watches, topics.uploads):
        got = read_all(kafka_bootstrap, topic)
        want = [r for r in expected if r.topic == topic]
        assert sorted((r.key, r.value) for r in got) == sorted((r.key, r.value) for r in want)
        # Per key (= per partition) the broker keeps the order the simulator produced.
        by_key: dict[bytes | None, list[bytes]] = {}
        for r in got:
            by_key.setdefault(r.key, []).append(r.value)
        for key, values in by_key.items():
            assert values == [r.value for r in want if r.key == key]
        for (t, kind), n in Counter((r.topic, r.kind) for r in want).items():
            assert metrics.value("plum_simulator_events_total", topic=t, kind=kind) == n

    limits = schema.ValidationLimits(embedding_dims=cfg.dims)
    watches = [
        schema.decode_watch(r.value, limits)
        for r in expected
        if r.kind == VALID and r.topic == topics.watches
    ]
    assert len(watches) > 1000
    truth = load_ground_truth(cfg.truth_path)
    assert truth["records"] == len(expected)
    assert {w.video_id for w in watches} <= {v["video_id"] for v in truth["videos"]}


def test_replay_flag_writes_to_the_replay_topics(kafka_bootstrap, topics, topic_prefix, tmp_path):
    cfg = SMALL.replace(
        events=300, topic_prefix=topic_prefix, replay=True, truth_path=tmp_path / "t.json"
    )
    assert run(cfg, kafka_bootstrap) == 0
    assert (
        len(read_all(kafka_bootstrap, topics.uploads_replay))
        + len(read_all(kafka_bootstrap, topics.watches_replay))
        == 300
    )
    assert read_all(kafka_bootstrap, topics.watches) == []


def test_plum_simulate_serves_metrics_and_stops_cleanly_on_sigterm(
    kafka_bootstrap, topics, topic_prefix, tmp_path
):
    truth = tmp_path / "truth.json"
    cmd = [
        sys.executable, "-m", "plum.cli", "simulate",
        "--config", str(REPO_ROOT / "configs" / "test.toml"),
        "--bootstrap", kafka_bootstrap,
        "--topic-prefix", topic_prefix,
        "--seconds", "1000000",  # would run for days of wall clock at this rate
        "--rate", "400",
        "--truth", str(truth),
        "--metrics-port", "0",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        port = None
        while time.monotonic() < deadline and (
            port is None or not any("records (" in x for x in lines)
        ):
            assert proc.poll() is None, "".join(lines)
            found = [re.search(r"metrics on http://127.0.0.1:(\d+)/metrics", x) for x in lines]
            port = next((int(m.group(1)) for m in found if m), None)
            time.sleep(0.2)
        assert port is not None, f"no metrics line within 60 s:\n{''.join(lines)}"
        assert any("records (" in x and "ETA" in x for x in lines), "".join(lines)
        body = (
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        )
        assert "plum_simulator_events_total{" in body
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    assert any("SIGTERM received" in x for x in lines), "".join(lines)
    produced = len(read_all(kafka_bootstrap, topics.watches)) + len(
        read_all(kafka_bootstrap, topics.uploads)
    )
    # Everything sent before the stop was flushed, and the ground truth says how much.
    assert produced == load_ground_truth(truth)["records"] > 0
