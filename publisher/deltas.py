"""The SID delta log: every assignment of `plum.sid-assignments.v1`, numbered per sid_version.

Serving's index moves by sequence numbers (serving/sid_delta.py): assignment n of a
sid_version is the n-th NEW (sid_version, video_id) pair this log read from the topic.
The numbering has to be durable, because a delta re-sent after a restart must carry the
same assignments under the same numbers or serving's idempotence means nothing. So the
log is a SQLite file (WAL) next to the ledger:

    assignments(sid_version, seq, video_id, sid "1.2.3", upload_ts, assigned_ts)
        PRIMARY KEY (sid_version, seq), UNIQUE (sid_version, video_id)
    offsets(topic, partition, next_offset)

and a catch-up stores the rows it numbered together with the topic offsets it read to,
in ONE transaction: a publisher killed mid-read re-reads from the stored offsets and
numbers nothing twice (a re-read pair is already there and is skipped).

`assigned_ts` is the Kafka timestamp of the assignment record (when the SID service
produced it; 0 = the record had none); serving measures SID assigned -> servable from it.
A log written before the column existed gets it (0 for its rows) when opened.

Records that cannot be numbered are skipped, logged and counted (`skipped`): a tombstone
or undecodable value, the same video again under another SID (the topic is compacted to
the latest SID per video, but a version's SID of a video never changes), and a SID that
another video of the version already holds (serving would refuse that delta with 422 and
block every later one).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from plum.batch_cycle import Record
from publisher.store import open_db, store_path, transaction
from serving.artifact import IndexSnapshot, snapshot_of
from serving.sid_delta import SidDelta
from streams.contracts import schema
from trainer.prompt import SidLookup

log = logging.getLogger(__name__)

FILENAME = "deltas.sqlite"
DEFAULT_READ_TIMEOUT_S = 60.0

# (video_id, sid codes, upload_ts, assigned_ts) in sequence order: what SidDelta takes.
Row = tuple[str, tuple[int, ...], int, int]

SKIP_UNDECODABLE = "undecodable"
SKIP_SID_CHANGED = "sid_changed"
SKIP_SID_TAKEN = "sid_taken"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS assignments (
    sid_version TEXT NOT NULL,
    seq INTEGER NOT NULL,
    video_id TEXT NOT NULL,
    sid TEXT NOT NULL,
    upload_ts INTEGER NOT NULL,
    assigned_ts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (sid_version, seq),
    UNIQUE (sid_version, video_id)
);
CREATE INDEX IF NOT EXISTS assignments_sid ON assignments (sid_version, sid);
CREATE TABLE IF NOT EXISTS offsets (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
"""


def sid_text(sid: Sequence[int]) -> str:
    return ".".join(str(int(c)) for c in sid)


def sid_codes(text: str) -> tuple[int, ...]:
    return tuple(int(c) for c in text.split("."))


def _add_assigned_ts(db: sqlite3.Connection) -> None:
    """Give a log written before `assigned_ts` existed the column (0 = unknown for its rows),
    so an upgraded publisher keeps its numbering instead of needing a new log."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(assignments)")}
    if "assigned_ts" not in columns:
        db.execute("ALTER TABLE assignments ADD COLUMN assigned_ts INTEGER NOT NULL DEFAULT 0")


class DeltaLog:
    """The numbered assignments (see the module docstring). Thread-safe: the publisher's
    two jobs share one instance."""

    def __init__(self, path: Path | str) -> None:
        """`path`: the publisher's state directory (the log is its deltas.sqlite), or the
        .sqlite file itself."""
        self.path = store_path(path, FILENAME)
        self._db = open_db(self.path, _SCHEMA)
        _add_assigned_ts(self._db)
        self._lock = threading.Lock()
        self.skipped: Counter[str] = Counter()  # reason -> records not numbered since open

    # ---- writing
    def ingest(
        self,
        topic: str,
        records: Iterable[Record],
        positions: Mapping[int, int] | None = None,
    ) -> int:
        """Number the new (sid_version, video_id) pairs of `records` in their order and
        store them with the topic's read positions, in one transaction; returns how many
        were new. `positions` (partition -> next offset to read) defaults to each
        partition's last record offset + 1; stored offsets never move backwards."""
        records = list(records)
        ends: dict[int, int] = {}
        for rec in records:
            ends[rec.partition] = max(ends.get(rec.partition, 0), rec.offset + 1)
        for p, off in (positions or {}).items():
            ends[int(p)] = max(ends.get(int(p), 0), int(off))
        new = 0
        with self._lock, transaction(self._db):
            next_seq: dict[str, int] = {}
            for rec in records:
                assignment = self._decode(rec)
                if assignment is None:
                    continue
                version = assignment.sid_version
                if version not in next_seq:
                    next_seq[version] = self._seq(version) + 1
                assigned_ts = (
                    rec.timestamp if rec.timestamp is not None and rec.timestamp > 0 else 0
                )
                if self._number(assignment, next_seq[version], assigned_ts):
                    next_seq[version] += 1
                    new += 1
            for partition, offset in ends.items():
                self._db.execute(
                    "INSERT INTO offsets (topic, partition, next_offset) VALUES (?, ?, ?) "
                    "ON CONFLICT (topic, partition) DO UPDATE SET "
                    "next_offset = max(next_offset, excluded.next_offset)",
                    (topic, partition, offset),
                )
        return new

    def catch_up(
        self, bootstrap: str, topic: str, timeout_s: float = DEFAULT_READ_TIMEOUT_S
    ) -> int:
        """Read `topic` from the stored offsets to its end (read_committed) and ingest it;
        returns the number of new assignments. Raises TimeoutError past `timeout_s`."""
        from streams.kafka.reader import TopicReader  # librdkafka only when reading Kafka

        new = 0
        with TopicReader(
            bootstrap, topic, self.offsets(topic), timeout_s, client_id="plum-publisher-deltas"
        ) as reader:
            for batch in reader:
                new += self.ingest(topic, batch)  # offsets of the rows stored with them
            # the exact end (past transaction markers), so the next read starts there
            self.ingest(topic, [], reader.positions)
        if new:
            log.info("SID delta log: %d new assignments from %s", new, topic)
        return new

    def _decode(self, rec: Record) -> schema.SidAssignment | None:
        if rec.value is None:
            return self._skip(SKIP_UNDECODABLE, rec, "null value (tombstone)")
        try:
            return schema.decode_sid_assignment(rec.value)
        except schema.ValidationError as err:
            return self._skip(SKIP_UNDECODABLE, rec, str(err))

    def _number(self, a: schema.SidAssignment, seq: int, assigned_ts: int) -> bool:
        text = sid_text(a.sid)
        row = self._db.execute(
            "SELECT sid FROM assignments WHERE sid_version = ? AND video_id = ?",
            (a.sid_version, a.video_id),
        ).fetchone()
        if row is not None:
            if row[0] != text:
                self._skip(
                    SKIP_SID_CHANGED,
                    None,
                    f"video {a.video_id!r} of {a.sid_version!r} has SID {row[0]}, "
                    f"not {text}: the first one stays",
                )
            return False  # a re-read: already numbered
        owner = self._db.execute(
            "SELECT video_id FROM assignments WHERE sid_version = ? AND sid = ?",
            (a.sid_version, text),
        ).fetchone()
        if owner is not None:
            self._skip(
                SKIP_SID_TAKEN,
                None,
                f"SID {text} of {a.sid_version!r} is {owner[0]!r}'s; {a.video_id!r} is skipped",
            )
            return False
        self._db.execute(
            "INSERT INTO assignments (sid_version, seq, video_id, sid, upload_ts, assigned_ts) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (a.sid_version, seq, a.video_id, text, a.upload_ts, assigned_ts),
        )
        return True

    def _skip(self, reason: str, rec: Record | None, detail: str) -> None:
        self.skipped[reason] += 1
        where = f" ({rec.topic}[{rec.partition}]@{rec.offset})" if rec is not None else ""
        log.warning("SID delta log: skipped%s: %s", where, detail)
        return None

    # ---- reading
    def offsets(self, topic: str) -> dict[int, int]:
        """partition -> the next offset to read of `topic` (none stored: from the start)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT partition, next_offset FROM offsets WHERE topic = ?", (topic,)
            ).fetchall()
        return {int(p): int(o) for p, o in rows}

    def versions(self) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT sid_version FROM assignments ORDER BY sid_version"
            ).fetchall()
        return [r[0] for r in rows]

    def seq(self, sid_version: str) -> int:
        """The highest sequence number of `sid_version` (0: none)."""
        with self._lock:
            return self._seq(sid_version)

    def _seq(self, sid_version: str) -> int:
        row = self._db.execute(
            "SELECT max(seq) FROM assignments WHERE sid_version = ?", (sid_version,)
        ).fetchone()
        return int(row[0] or 0)

    def rows(self, sid_version: str, after_seq: int = 0, limit: int | None = None) -> list[Row]:
        """(video_id, sid, upload_ts, assigned_ts) numbered after_seq + 1, after_seq + 2, ...
        in order."""
        with self._lock:
            got = self._db.execute(
                "SELECT video_id, sid, upload_ts, assigned_ts FROM assignments "
                "WHERE sid_version = ? AND seq > ? ORDER BY seq LIMIT ?",
                (sid_version, after_seq, -1 if limit is None else limit),
            ).fetchall()
        return [(v, sid_codes(s), int(u), int(a)) for v, s, u, a in got]

    def snapshot(self, sid_version: str) -> IndexSnapshot:
        """Every assignment of the version, for a model artifact (a new replica serves it
        at once and continues with deltas from its seq)."""
        with self._lock:
            seq = self._seq(sid_version)
            rows = self._db.execute(
                "SELECT video_id, sid, upload_ts FROM assignments "
                "WHERE sid_version = ? AND seq <= ? ORDER BY seq",
                (sid_version, seq),
            ).fetchall()
        return snapshot_of(sid_version, seq, [(v, sid_codes(s), int(t)) for v, s, t in rows])

    def delta(self, sid_version: str, from_seq: int, max_items: int) -> SidDelta:
        """The assignments numbered from_seq + 1 .. at most from_seq + max_items."""
        if max_items < 1:
            raise ValueError(f"max_items={max_items} must be >= 1")
        return SidDelta.of(sid_version, from_seq, self.rows(sid_version, from_seq, max_items))

    def lookup(self, sid_version: str) -> SidLookup:
        """video id -> SID of the version, as the trainer's prompts and the gate read it."""
        with self._lock:
            rows = self._db.execute(
                "SELECT video_id, sid FROM assignments WHERE sid_version = ?", (sid_version,)
            ).fetchall()
        return SidLookup(sid_version, {v: sid_codes(s) for v, s in rows})

    # ---- plumbing
    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> DeltaLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
