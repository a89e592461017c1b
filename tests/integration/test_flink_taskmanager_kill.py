"""kill -9 of a TaskManager under the live job on a standalone session cluster (one
JobManager, two TaskManagers of two slots, the job at parallelism 2 across both): Flink
notices the loss, restarts the job from its latest completed checkpoint on the slots that
are left, and the committed outputs equal the plain-Python reference exactly — nothing
lost, nothing written twice — as the job's own kill -9 test asks of the local job."""

from __future__ import annotations

import logging
import os
import re
import signal
import time

import pytest

from streams.flink.job import load_flink_config
from streams.flink.reference import RefParams, run_reference
from streams.flink.session_cluster import SessionCluster, SessionClusterConfig
from streams.kafka.clients import read_all
from tests import flink_support as fs

pytestmark = pytest.mark.integration

log = logging.getLogger(__name__)

SEED = 29
EVENTS = 3000
CLUSTER = SessionClusterConfig(
    taskmanagers=2,
    slots_per_taskmanager=2,  # the survivor alone can run the job at parallelism 2
    extra={
        # a killed TaskManager is declared lost within seconds, not the default 50 s
        "heartbeat.interval": "1000",
        "heartbeat.timeout": "8000",
        "taskmanager.load-balance.mode": "slots",  # spread the subtasks over both
    },
)
# The job retries while the lost TaskManager's slots are still listed (until the
# heartbeat timeout), so it gets more attempts than the live default.
JOB_ENV = {"PLUM_FLINK__RESTART_ATTEMPTS": "30"}


def _resource_id(cluster: SessionCluster, index: int) -> str:
    """The ResourceID the index-th TaskManager (1-based) logged at start."""
    text = (cluster.logs_dir / f"taskmanager-{index}.log").read_text(errors="replace")
    found = re.search(r"Starting TaskManager with ResourceID: (\S+)", text)
    assert found, f"taskmanager-{index} logged no ResourceID"
    return found.group(1)


def _running_job(cluster: SessionCluster) -> str | None:
    jobs = cluster.get("/jobs/overview")["jobs"]
    running = [j["jid"] for j in jobs if j["state"] == "RUNNING"]
    return running[0] if running else None


def _hosts(cluster: SessionCluster, jid: str) -> set[str]:
    """The TaskManagers that run a subtask of the job's per-user timeline operator."""
    vertices = cluster.get(f"/jobs/{jid}")["vertices"]
    timeline = next(v for v in vertices if "ProcessTableFunction" in v["name"])
    placed = cluster.get(f"/jobs/{jid}/vertices/{timeline['id']}/taskmanagers")
    return {tm["taskmanager-id"] for tm in placed["taskmanagers"]}


def _wait(what: str, check, job: fs.JobProcess, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        assert job.alive(), f"the client exited waiting for {what}:\n{job.tail()}"
        assert time.monotonic() < deadline, f"no {what} after {timeout_s:.0f} s:\n{job.tail()}"
        time.sleep(0.5)


def test_a_killed_taskmanager_loses_and_duplicates_nothing(
    kafka_bootstrap, topics, topic_prefix, tmp_path
):
    cfg = load_flink_config(fs.TEST_CONFIG)
    stream = fs.build_stream(SEED, EVENTS, cfg.out_of_orderness_ms, cfg.window_size_ms)
    half = len(stream) // 2
    first = fs.produce(kafka_bootstrap, topics.watches, stream[:half])

    cluster = SessionCluster(CLUSTER, tmp_path / "cluster")
    cluster.up()
    job = None
    try:
        job = fs.JobProcess(
            fs.job_command(
                kafka_bootstrap,
                topic_prefix,
                tmp_path / "ck",  # one directory every process of the cluster sees
                "--fresh",
                "--cluster",
                cluster.rest,
                "--parallelism",
                "2",
            ),
            tmp_path / "client.log",
            env_extra=JOB_ENV,
        )
        jid = _wait("a running job", lambda: _running_job(cluster), job, 180)

        def checkpointed_with_output() -> bool:
            counts = cluster.get(f"/jobs/{jid}/checkpoints")["counts"]
            committed = read_all(kafka_bootstrap, topics.sft_examples, timeout_s=30)
            return counts["completed"] >= 1 and len(committed) > 0

        _wait("a checkpoint that committed output", checkpointed_with_output, job, 180)
        hosts = _hosts(cluster, jid)
        assert len(hosts) == 2, f"the timeline operator ran on {hosts}, not on both"
        victim = 1
        assert _resource_id(cluster, victim) in hosts
        doomed = cluster.processes[victim]  # [0] is the JobManager
        killed_at = time.monotonic()
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.wait(timeout=30)

        # Flink restarts the job from the checkpoint, on the surviving TaskManager.
        def restored_on_the_survivor() -> bool:
            latest = cluster.get(f"/jobs/{jid}/checkpoints")["latest"]
            return (
                _running_job(cluster) == jid
                and latest.get("restored") is not None
                and _hosts(cluster, jid) == {_resource_id(cluster, 2)}
            )

        _wait("the job restored on the surviving TaskManager", restored_on_the_survivor, job, 180)
        log.info("TaskManager kill -> job restored: %.1f s", time.monotonic() - killed_at)
        second = fs.produce(kafka_bootstrap, topics.watches, stream[half:])
        stored = sorted(first + second, key=lambda r: (r[0], r[1]))
        final_watermark = fs.final_watermark(stream, cfg)
        expected = run_reference(
            stored,
            RefParams.from_flink_config(cfg),
            int(time.time() * 1000),
            final_watermark,
            topics.watches,
        )
        assert expected.examples and expected.pairs
        outs = fs.wait_for_outputs(kafka_bootstrap, topics, expected, job, timeout_s=240)
        fs.compare(outs, expected)
        assert cluster.overview()["taskmanagers"] == 1
    finally:
        if job is not None:
            job.stop()
        cluster.down()
