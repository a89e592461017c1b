"""Where a Flink job's seconds go: the phases read from its MiniCluster's log."""

from __future__ import annotations

import pytest

from bench.flink_log import job_phases, phases_in

JOB = "c2f07bf31f509aa6b06603ee59a87123"
OTHER = "0" * 32
EG = "INFO  org.apache.flink.runtime.executiongraph.ExecutionGraph       [] -"
LOG = f"""\
2026-12-02 05:02:10,000 INFO  org.apache.flink.runtime.minicluster.MiniCluster [] - Starting
2026-12-02 05:02:12,105 INFO  org.apache.flink.runtime.dispatcher.StandaloneDispatcher     [] - Submitting job 'plum-flink-backfill' ({JOB}) with associated application
2026-12-02 05:02:12,810 {EG} Job plum-flink-backfill ({JOB}) switched from state CREATED to RUNNING.
2026-12-02 05:02:13,551 {EG} Source: KafkaSource -> Calc[2] (1/1) switched from INITIALIZING to RUNNING.
2026-12-02 05:02:14,591 {EG} ProcessTableFunction[4] -> Calc[5] (1/1) switched from INITIALIZING to RUNNING.
2026-12-02 05:02:24,750 INFO  org.apache.flink.connector.base.source.reader.SourceReaderBase [] - Finished reading split(s) [t-2]
a continuation line without a time stamp
2026-12-02 05:02:26,069 INFO  org.apache.flink.connector.base.source.reader.SourceReaderBase [] - Finished reading split(s) [t-3]
2026-12-02 05:02:26,687 {EG} Job plum-flink-backfill ({JOB}) switched from state RUNNING to FINISHED.
"""


def test_the_logged_phases_run_from_submission_to_finish():
    phases = job_phases(LOG.splitlines(), job_seconds=19.3)
    assert phases is not None
    assert phases.deploy_s == pytest.approx(14.591 - 12.105)  # the last task running
    assert phases.records_s == pytest.approx(26.069 - 14.591)  # the last split read
    assert phases.finish_s == pytest.approx(26.687 - 26.069)
    # the client's share: its clock less what the log accounts for
    assert phases.client_s == pytest.approx(19.3 - (26.687 - 12.105))
    assert phases.to_dict()["client_s"] == round(19.3 - (26.687 - 12.105), 3)


def test_without_the_clients_seconds_the_client_phase_is_unknown():
    assert job_phases(LOG.splitlines()).client_s is None


@pytest.mark.parametrize("drop", ["Submitting job", "to RUNNING.", "Finished reading", "FINISHED"])
def test_a_log_missing_a_mark_gives_no_phases(drop):
    lines = [line for line in LOG.splitlines() if drop not in line]
    assert job_phases(lines, 19.3) is None


def test_another_jobs_end_is_not_this_ones():
    lines = [
        line.replace(
            f"({JOB}) switched from state RUNNING", f"({OTHER}) switched from state RUNNING"
        )
        for line in LOG.splitlines()
    ]
    assert job_phases(lines, 19.3) is None


def test_the_logs_of_a_directory_are_read(tmp_path):
    assert phases_in(tmp_path) is None  # no log: no phases
    (tmp_path / "flink-root-python-host.log").write_text(LOG)
    assert phases_in(tmp_path, 19.3)["finish_s"] == pytest.approx(0.618)
