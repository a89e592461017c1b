"""The SID delta log: durable numbering in read order, idempotent re-ingest, offsets
stored with the rows, snapshot and delta slices, poison records skipped."""

import pytest

from plum.batch_cycle import Record
from publisher.deltas import SKIP_SID_CHANGED, SKIP_SID_TAKEN, SKIP_UNDECODABLE, DeltaLog
from serving.sid_delta import SidDelta
from tests.publisher_support import ASSIGNED_AFTER_MS, UPLOAD_TS, assignment, records, sid_of

TOPIC = "p.plum.sid-assignments.v1"


@pytest.fixture
def log(tmp_path):
    with DeltaLog(tmp_path) as deltas:
        yield deltas


def test_new_pairs_are_numbered_in_read_order_per_version(log):
    batch = records(
        [assignment(3), assignment(1), assignment(1, "v2"), assignment(2), assignment(3, "v2")],
        TOPIC,
    )
    assert log.ingest(TOPIC, batch) == 5
    assigned = UPLOAD_TS + ASSIGNED_AFTER_MS  # each record's Kafka timestamp
    assert log.rows("v1") == [
        ("v3", sid_of(3), UPLOAD_TS + 3, assigned + 3),
        ("v1", sid_of(1), UPLOAD_TS + 1, assigned + 1),
        ("v2", sid_of(2), UPLOAD_TS + 2, assigned + 2),
    ]
    assert log.seq("v1") == 3 and log.seq("v2") == 2 and log.seq("v9") == 0
    assert log.versions() == ["v1", "v2"]
    assert log.offsets(TOPIC) == {0: 5}


def test_reingesting_the_same_records_numbers_nothing_twice(tmp_path):
    first = records([assignment(i) for i in range(4)], TOPIC)
    with DeltaLog(tmp_path) as log:
        assert log.ingest(TOPIC, first) == 4
        # a crash before the offsets moved would re-read these: nothing changes
        assert log.ingest(TOPIC, first) == 0
    with DeltaLog(tmp_path / "deltas.sqlite") as log:  # after a reopen, by its file name
        assert log.ingest(TOPIC, first[1:] + records([assignment(9)], TOPIC, first_offset=4)) == 1
        assert [r[0] for r in log.rows("v1")] == ["v0", "v1", "v2", "v3", "v9"]
        assert log.offsets(TOPIC) == {0: 5}


def test_offsets_are_per_topic_and_partition_and_never_move_back(log):
    log.ingest(TOPIC, records([assignment(0)], TOPIC, partition=1, first_offset=7), {0: 3})
    assert log.offsets(TOPIC) == {0: 3, 1: 8}
    log.ingest(TOPIC, [], {0: 2, 1: 10})  # positions past transaction markers
    assert log.offsets(TOPIC) == {0: 3, 1: 10}
    assert log.offsets("other.topic") == {}


def test_poison_records_are_skipped_counted_and_do_not_take_a_number(log):
    batch = [
        Record(TOPIC, 0, 0, None, None),  # tombstone
        Record(TOPIC, 0, 1, b"{not json", None),
        *records([assignment(1)], TOPIC, first_offset=2),
        *records([assignment(1, sid=sid_of(5))], TOPIC, first_offset=3),  # its SID changed
        *records([assignment(2, sid=sid_of(1))], TOPIC, first_offset=4),  # v1's SID
        *records([assignment(2)], TOPIC, first_offset=5),
    ]
    assert log.ingest(TOPIC, batch) == 2
    assert [(v, s) for v, s, _, _ in log.rows("v1")] == [("v1", sid_of(1)), ("v2", sid_of(2))]
    assert log.skipped == {SKIP_UNDECODABLE: 2, SKIP_SID_CHANGED: 1, SKIP_SID_TAKEN: 1}
    assert log.offsets(TOPIC) == {0: 6}  # read past, never re-read


def test_snapshot_delta_and_lookup_slices(log):
    log.ingest(TOPIC, records([assignment(i) for i in range(5)] + [assignment(0, "v2")], TOPIC))
    snap = log.snapshot("v1")
    assert snap.sid_version == "v1" and snap.seq == 5
    assert snap.video_ids == ("v0", "v1", "v2", "v3", "v4")
    assert snap.sids[2] == sid_of(2) and snap.upload_ts[4] == UPLOAD_TS + 4
    delta = log.delta("v1", 1, max_items=2)
    assert isinstance(delta, SidDelta)
    assert (delta.from_seq, delta.to_seq) == (1, 3)
    assert [a.video_id for a in delta.assignments] == ["v1", "v2"]
    assert log.delta("v1", 5, 10).assignments == () and log.delta("v1", 5, 10).to_seq == 5
    assert [r[0] for r in log.rows("v1", after_seq=3)] == ["v3", "v4"]
    assert log.rows("v1", after_seq=0, limit=1) == [
        ("v0", sid_of(0), UPLOAD_TS, UPLOAD_TS + ASSIGNED_AFTER_MS)
    ]
    assert [a.assigned_ts for a in delta.assignments] == [assignment(i).ts for i in (1, 2)]
    assert log.lookup("v1").sids == {f"v{i}": sid_of(i) for i in range(5)}
    assert log.lookup("v2").version == "v2" and len(log.lookup("v2").sids) == 1
    assert log.snapshot("none").seq == 0 and log.snapshot("none").video_ids == ()
    with pytest.raises(ValueError, match="max_items"):
        log.delta("v1", 0, 0)


def test_a_record_without_a_timestamp_has_an_unknown_assignment_time(log):
    (rec,) = records([assignment(0)], TOPIC)
    log.ingest(TOPIC, [rec._replace(timestamp=None), *records([assignment(1)], TOPIC, 0, 1)])
    assert [r[3] for r in log.rows("v1")] == [0, assignment(1).ts]


def test_a_log_written_before_assigned_ts_keeps_its_numbering_with_times_unknown(tmp_path):
    import sqlite3

    path = tmp_path / "deltas.sqlite"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE assignments (sid_version TEXT NOT NULL, seq INTEGER NOT NULL, "
        "video_id TEXT NOT NULL, sid TEXT NOT NULL, upload_ts INTEGER NOT NULL, "
        "PRIMARY KEY (sid_version, seq), UNIQUE (sid_version, video_id));"
        "INSERT INTO assignments VALUES ('v1', 1, 'v0', '1.2.3.0', 5);"
    )
    old.close()
    with DeltaLog(path) as log:
        assert log.rows("v1") == [("v0", (1, 2, 3, 0), 5, 0)]
        assert log.ingest(TOPIC, records([assignment(1)], TOPIC)) == 1
        assert log.rows("v1", after_seq=1) == [("v1", sid_of(1), UPLOAD_TS + 1, assignment(1).ts)]
    with DeltaLog(path) as log:  # a second open finds the column there
        assert log.seq("v1") == 2


def test_a_failed_ingest_stores_neither_rows_nor_offsets(log, monkeypatch):
    log.ingest(TOPIC, records([assignment(0)], TOPIC))
    calls = 0
    real = log._number

    def fail_second(a, seq, assigned_ts):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError("disk full")
        return real(a, seq, assigned_ts)

    monkeypatch.setattr(log, "_number", fail_second)
    with pytest.raises(OSError):
        log.ingest(TOPIC, records([assignment(1), assignment(2)], TOPIC, first_offset=1))
    assert log.seq("v1") == 1 and log.offsets(TOPIC) == {0: 1}
