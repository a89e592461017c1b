"""`plum bench flink`'s ratios: every rate against the naive loop and the consume ceiling
of the same run, and the whole-run ratio a job's fixed cost alone allows."""

from __future__ import annotations

import pytest

from bench.flink import BenchRuns, _ratios


def runs(**over) -> BenchRuns:
    base = dict(
        ceiling={
            "kafka_python_consume": {"records_per_s": 100_000},
            "java_consume": {"records_per_s": 200_000},
        },
        naive={"records_per_s": 6_000},
        flink={"records": 300_000, "records_per_s": 12_000},
        session=None,
        session_warmup=None,
        warm=None,
        fixed=None,
    )
    return BenchRuns(**(base | over))


def test_the_job_is_measured_against_the_naive_loop_and_the_consume_rates():
    ratio = _ratios(runs())
    assert ratio["flink_vs_naive"] == 2.0
    assert ratio["flink_vs_kafka_python_consume"] == 0.12
    assert ratio["flink_vs_java_consume"] == 0.06
    assert ratio["targets"] == {"flink_vs_naive": 3.0, "flink_vs_consume_ceiling": 0.25}
    assert not any(k.startswith(("flink_session", "flink_warm")) for k in ratio)


def test_a_fixed_cost_caps_the_whole_run_ratio_as_if_records_were_free():
    # 300k records, 10 s of fixed cost: at best 30k/s, 5x a 6k/s naive loop
    ratio = _ratios(runs(fixed={"flink": {"job_seconds": 10.0}}))
    assert ratio["flink_vs_naive_if_records_were_free"] == 5.0


def test_the_session_cluster_is_reported_as_the_client_sees_it_and_by_flinks_duration():
    session = {"records_per_s": 15_000, "flink_job_records_per_s": 21_000}
    ratio = _ratios(runs(session=session))
    assert ratio["flink_session_cluster_vs_naive"] == 2.5
    assert ratio["flink_session_cluster_job_only_vs_naive"] == 3.5
    assert ratio["flink_session_cluster_vs_kafka_python_consume"] == 0.15


def test_the_long_run_is_compared_with_its_own_naive_run():
    warm = {
        "naive_kafka_python_loop": {"records_per_s": 5_000},
        "flink": {"records_per_s": 15_000, "second_half_records_per_s": 30_000},
    }
    ratio = _ratios(runs(warm=warm))
    assert ratio["flink_vs_naive_long_run_whole"] == 3.0
    assert ratio["flink_warm_vs_naive"] == 6.0
    assert ratio["flink_warm_vs_kafka_python_consume"] == pytest.approx(0.3)
