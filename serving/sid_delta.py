"""SID index deltas: how new SIDs reach serving without a retrain.

The publisher numbers the assignments of each sid_version in the order it first read
them from `plum.sid-assignments.v1` (1, 2, 3, ...; the numbering is durable, so a re-send
is the same assignments under the same numbers). A delta carries the assignments with
sequence numbers from_seq + 1 .. to_seq. Serving holds an index at sequence S and, for a
delta of its sid_version:

    to_seq <= S               already applied: nothing changes (re-sends are harmless)
    from_seq <= S < to_seq    applies the assignments numbered S + 1 .. to_seq, atomically
    from_seq > S              a gap: refused (409) with expected_seq = S; the sender
                              re-sends from S

A delta of another sid_version is refused (409): a version switch goes out with a model
trained on it (the model artifact carries its index), never as a delta.

Each assignment carries two times (epoch ms, 0 = unknown: a reindex, or a record written
before the field existed) so serving can measure freshness where the SID becomes servable:
`upload_ts` (the upload record's Kafka timestamp; upload -> servable) and `assigned_ts` (the
Kafka timestamp of its `plum.sid-assignments.v1` record; SID assigned -> servable, which
splits that path into the SID service's share and the publisher + serving share).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class DeltaError(ValueError):
    """A delta that is malformed in itself (not a sequence problem)."""


@dataclass(frozen=True)
class DeltaAssignment:
    video_id: str
    sid: tuple[int, ...]
    upload_ts: int = 0  # the upload's Kafka timestamp (epoch ms); 0 = unknown
    assigned_ts: int = 0  # its sid-assignment record's Kafka timestamp (epoch ms); 0 = unknown

    def to_json(self) -> dict[str, Any]:
        return {
            "video_id": self.video_id,
            "sid": list(self.sid),
            "upload_ts": self.upload_ts,
            "assigned_ts": self.assigned_ts,
        }


@dataclass(frozen=True)
class SidDelta:
    sid_version: str
    from_seq: int  # exclusive: the receiver's index must be at >= from_seq
    to_seq: int  # inclusive: the receiver's index is at to_seq afterwards
    assignments: tuple[DeltaAssignment, ...]

    def __post_init__(self) -> None:
        if self.from_seq < 0:
            raise DeltaError(f"from_seq={self.from_seq} must be >= 0")
        if self.to_seq - self.from_seq != len(self.assignments):
            raise DeltaError(
                f"to_seq - from_seq = {self.to_seq - self.from_seq} but "
                f"{len(self.assignments)} assignments"
            )
        seen: set[str] = set()
        for a in self.assignments:
            if a.video_id in seen:
                raise DeltaError(f"video {a.video_id!r} appears twice in one delta")
            seen.add(a.video_id)

    def after(self, seq: int) -> tuple[DeltaAssignment, ...]:
        """The assignments numbered seq + 1 .. to_seq (what a receiver at `seq` lacks)."""
        if seq < self.from_seq:
            raise DeltaError(f"receiver at {seq} is before this delta's from_seq {self.from_seq}")
        return self.assignments[max(0, seq - self.from_seq) :]

    def to_json(self) -> dict[str, Any]:
        return {
            "sid_version": self.sid_version,
            "from_seq": self.from_seq,
            "to_seq": self.to_seq,
            "assignments": [a.to_json() for a in self.assignments],
        }

    @classmethod
    def of(
        cls, sid_version: str, from_seq: int, rows: Sequence[tuple[str, Sequence[int], int, int]]
    ) -> SidDelta:
        """A delta from (video_id, sid, upload_ts, assigned_ts) rows numbered from_seq + 1, ..."""
        return cls(
            sid_version,
            from_seq,
            from_seq + len(rows),
            tuple(
                DeltaAssignment(v, tuple(int(c) for c in s), int(u), int(a)) for v, s, u, a in rows
            ),
        )

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SidDelta:
        try:
            return cls(
                str(d["sid_version"]),
                int(d["from_seq"]),
                int(d["to_seq"]),
                tuple(
                    DeltaAssignment(
                        str(a["video_id"]),
                        tuple(int(c) for c in a["sid"]),
                        int(a.get("upload_ts", 0)),
                        int(a.get("assigned_ts", 0)),
                    )
                    for a in d["assignments"]
                ),
            )
        except (KeyError, TypeError, ValueError) as err:
            if isinstance(err, DeltaError):
                raise
            raise DeltaError(f"malformed delta: {err!r}") from err
