"""Flink job config and CLI argument handling (no JVM started here)."""

from __future__ import annotations

import os

import pytest

from plum.config import ConfigError
from streams.flink.cli import parse_time_ms
from streams.flink.cli import run as flink_run
from streams.flink.job import (
    OPERATOR_MARKER,
    FlinkConfig,
    latest_checkpoint,
    load_flink_config,
    mark_operator,
    sql_interval,
)
from tests.flink_support import TEST_CONFIG


def test_test_config_loads_and_env_overrides_apply():
    cfg = load_flink_config(TEST_CONFIG, env={"PLUM_FLINK__MIN_COUNT": "3"})
    assert cfg.min_count == 3 and cfg.checkpoint_interval_ms == 1000


@pytest.mark.parametrize(
    "bad",
    [
        dict(window="session"),
        dict(window_size_ms=0),
        dict(metrics_port=-1),
        dict(rest_port=-1, metrics_port=9108),
        dict(window="sliding", window_size_ms=30_000, window_slide_ms=-1000),
        dict(min_count=0),
        dict(w_click=-1.0),
        dict(rest_port=-2),
        dict(rest_port=-1, job_metrics_port=0),
        dict(rest_port=70_000),
        dict(job_metrics_port=-2),
        dict(job_metrics_interval_s=0.0),
        dict(cluster_rest="localhost"),
        dict(cluster_rest=":8081"),
        dict(cluster_rest="localhost:http"),
        dict(cluster_rest="localhost:70000"),
    ],
)
def test_bad_settings_fail_at_start(bad):
    with pytest.raises((ValueError, ConfigError)):
        FlinkConfig(**bad)


def test_times_are_epoch_ms_or_iso():
    assert parse_time_ms("1700000000000") == 1_700_000_000_000
    assert parse_time_ms("2023-11-14T22:13:20Z") == 1_700_000_000_000
    assert parse_time_ms("2023-11-14T22:13:20") == 1_700_000_000_000


def test_backfill_needs_an_ordered_range(capsys):
    assert flink_run(["--config", str(TEST_CONFIG), "--backfill", "--from", "10"]) == 2
    assert flink_run(["--config", str(TEST_CONFIG), "--backfill", "--from", "10", "--to", "5"]) == 2
    assert flink_run(["--config", str(TEST_CONFIG), "--from", "10", "--to", "20"]) == 2
    assert "--backfill" in capsys.readouterr().err


def test_latest_checkpoint_is_the_newest_completed_one(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for job, n, done in (("a", 3, True), ("a", 4, False), ("b", 5, True)):
        d = tmp_path / job / f"chk-{n}"
        d.mkdir(parents=True)
        if done:
            (d / "_metadata").write_bytes(b"x")
    assert latest_checkpoint(tmp_path).name == "chk-5"


@pytest.mark.parametrize(
    ("ms", "literal"),
    [
        (0, "INTERVAL '0 00:00:00.000' DAY TO SECOND(3)"),
        (1500, "INTERVAL '0 00:00:01.500' DAY TO SECOND(3)"),
        (3_600_000, "INTERVAL '0 01:00:00.000' DAY TO SECOND(3)"),
        (90_061_001, "INTERVAL '1 01:01:01.001' DAY TO SECOND(3)"),
    ],
)
def test_sql_interval_takes_durations_longer_than_99_seconds(ms, literal):
    assert sql_interval(ms) == literal


def test_sql_interval_rejects_negative_durations():
    with pytest.raises(ValueError, match="interval"):
        sql_interval(-1)


def _checkpoint(root, job="1e42", n=3):
    chk = root / job / f"chk-{n}"
    chk.mkdir(parents=True)
    (chk / "_metadata").write_bytes(b"x")
    return chk


def test_a_checkpoint_of_the_python_operator_job_is_refused_naming_the_fix(tmp_path, capsys):
    ck = tmp_path / "ck"
    _checkpoint(ck)  # written before the JVM operator: no marker
    rc = flink_run(["--config", str(TEST_CONFIG), "--checkpoint-dir", str(ck)])
    err = capsys.readouterr().err
    assert rc == 2 and "Python operator" in err and "--backfill" in err and "--fresh" in err
    # an explicit --restore of it likewise
    rc = flink_run(["--config", str(TEST_CONFIG), "--restore", str(ck / "1e42" / "chk-3")])
    assert rc == 2 and "--backfill" in capsys.readouterr().err


def test_a_checkpoint_dir_the_jvm_operator_marked_is_restorable(tmp_path):
    from streams.flink.job import IncompatibleCheckpoint, check_restorable

    ck = tmp_path / "ck"
    chk = _checkpoint(ck)
    mark_operator(ck)
    assert (ck / OPERATOR_MARKER).is_file()
    check_restorable(str(chk))  # no error
    (ck / OPERATOR_MARKER).write_text("something-else\n")
    with pytest.raises(IncompatibleCheckpoint, match="something-else"):
        check_restorable(str(chk))
    # the first JVM operator counted pairs in an SQL window aggregate: other state
    (ck / OPERATOR_MARKER).write_text("jvm-ptf-1\n")
    with pytest.raises(IncompatibleCheckpoint, match="jvm-ptf-1.*--backfill"):
        check_restorable(str(chk))


def test_jvm_options_reach_the_local_jvm_launcher(monkeypatch):
    from streams.flink.job import use_jvm_options

    monkeypatch.setenv("JVM_ARGS", "-Xss2m")
    use_jvm_options("")
    assert os.environ["JVM_ARGS"] == "-Xss2m"
    use_jvm_options("-XX:+UseParallelGC")
    assert os.environ["JVM_ARGS"] == "-Xss2m -XX:+UseParallelGC"


def test_a_session_cluster_is_polled_on_its_own_rest_endpoint():
    from streams.flink.cli import rest_url

    assert rest_url(FlinkConfig(cluster_rest="10.0.0.5:8081")) == "http://10.0.0.5:8081"
    assert rest_url(FlinkConfig(rest_port=9300)) == "http://127.0.0.1:9300"


def test_session_cluster_config_binds_locally_with_the_slots_asked_for():
    import json

    from streams.flink.session_cluster import SessionClusterConfig, config_yaml

    text = config_yaml(SessionClusterConfig(taskmanagers=3, slots_per_taskmanager=2), 8081, 6123)
    entries = {k: json.loads(v) for k, v in (line.split(": ", 1) for line in text.splitlines())}
    assert entries["rest.port"] == "8081" and entries["jobmanager.rpc.port"] == "6123"
    assert entries["taskmanager.numberOfTaskSlots"] == "2"
    assert entries["parallelism.default"] == "6"
    assert entries["rest.bind-address"] == entries["taskmanager.host"] == "127.0.0.1"
    with pytest.raises(ValueError):
        SessionClusterConfig(taskmanagers=0)
