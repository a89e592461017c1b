"""The same job submitted to a standalone Flink session cluster (a JobManager and two
TaskManagers from the apache-flink wheel's scripts) at parallelism 2: its outputs equal the
plain-Python reference exactly, and each operator really ran on both TaskManagers."""

from __future__ import annotations

import pytest

from streams.flink.job import load_flink_config
from streams.flink.session_cluster import SessionCluster, SessionClusterConfig
from tests import flink_support as fs

pytestmark = pytest.mark.integration

SEED = 13
EVENTS = 2500
END_OF_TIME = 4_000_000_000_000


def test_backfill_on_a_two_taskmanager_session_cluster_matches_the_reference(
    kafka_bootstrap, topics, topic_prefix, tmp_path
):
    cfg = load_flink_config(fs.TEST_CONFIG)
    stream = fs.build_stream(SEED, EVENTS, cfg.out_of_orderness_ms, cfg.window_size_ms)
    stored = fs.produce(kafka_bootstrap, topics.watches_replay, stream)
    expected = fs.backfill_reference(stored, cfg, topics.watches_replay, 0, END_OF_TIME)
    assert expected.examples and expected.pairs

    cluster = SessionCluster(SessionClusterConfig(taskmanagers=2), tmp_path / "cluster")
    cluster.up()
    processes = cluster.processes
    assert len(processes) == 3  # one JobManager, two TaskManagers
    job = None
    try:
        assert cluster.overview()["taskmanagers"] == 2
        job = fs.JobProcess(
            fs.job_command(
                kafka_bootstrap,
                topic_prefix,
                tmp_path / "ck",  # one directory every process of the cluster sees
                "--backfill",
                "--from",
                "0",
                "--to",
                str(END_OF_TIME),
                "--output-suffix",
                ".cluster",
                "--cluster",
                cluster.rest,
                "--parallelism",
                "2",
            ),
            tmp_path / "client.log",
        )
        assert job.wait(timeout=300) == 0, job.tail()
        fs.compare(fs.read_outputs(kafka_bootstrap, topics, suffix=".cluster"), expected)

        (ran,) = cluster.get("/jobs/overview")["jobs"]
        assert ran["state"] == "FINISHED"
        vertices = cluster.get(f"/jobs/{ran['jid']}")["vertices"]
        operators = [v for v in vertices if "ProcessTableFunction" in v["name"]]
        assert len(operators) == 2  # the per-user timeline and the pair counter
        for v in operators:
            assert v["parallelism"] == 2
            placed = cluster.get(f"/jobs/{ran['jid']}/vertices/{v['id']}/taskmanagers")
            assert len({tm["taskmanager-id"] for tm in placed["taskmanagers"]}) == 2
    finally:
        if job is not None:
            job.stop()
        cluster.down()
    assert all(p.poll() is not None for p in processes)  # down stopped every one
