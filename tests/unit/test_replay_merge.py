"""The replay player's merge: records leave in timestamp order across partitions and
topics, never before every unfinished partition has shown its head."""

from __future__ import annotations

import pytest

from plum.batch_cycle import Record
from streams.replay.play import PlayRequest, TimestampMerge

UP, WA = "uploads.replay", "watches.replay"


def rec(topic: str, partition: int, offset: int, ts: int | None) -> Record:
    return Record(topic, partition, offset, b"v", ts, b"k", ())


def merge_of(ends: dict[tuple[str, int], int]) -> TimestampMerge:
    m = TimestampMerge({UP: 0, WA: 1}, ends)
    m.start_at({tp: 0 for tp in ends})
    return m


def drain(m: TimestampMerge) -> list[tuple[str, int, int]]:
    out = []
    while m.peek() is not None:
        r = m.pop()
        out.append((r.topic, r.partition, r.offset))
    return out


def test_records_leave_by_timestamp_and_ties_go_to_the_first_topic_then_partition():
    m = merge_of({(UP, 0): 2, (WA, 0): 2, (WA, 1): 2})
    for r in [
        rec(WA, 0, 0, 100),
        rec(WA, 0, 1, 300),
        rec(WA, 1, 0, 100),
        rec(WA, 1, 1, 200),
        rec(UP, 0, 0, 100),
        rec(UP, 0, 1, None),  # no timestamp: first of its partition's rest, as -1
    ]:
        m.push(r)
    # UP/0 offset 1 (ts None) cannot pass UP/0 offset 0: a partition keeps its own order.
    assert drain(m) == [
        (UP, 0, 0),
        (UP, 0, 1),
        (WA, 0, 0),
        (WA, 1, 0),
        (WA, 1, 1),
        (WA, 0, 1),
    ]
    assert m.finished()
    assert m.positions() == {(UP, 0): 2, (WA, 0): 2, (WA, 1): 2}


def test_nothing_leaves_while_an_unfinished_partition_has_no_head():
    m = merge_of({(WA, 0): 2, (WA, 1): 1})
    m.push(rec(WA, 0, 0, 500))
    assert m.missing() == [(WA, 1)] and m.peek() is None
    with pytest.raises(LookupError):
        m.pop()
    m.push(rec(WA, 1, 0, 100))  # the earlier record was still on its way
    assert m.pop().partition == 1
    # WA/1 is at its end now: WA/0's head may leave although WA/0 is not finished
    assert m.missing() == [] and m.pop().offset == 0
    assert m.missing() == [(WA, 0)] and not m.finished()
    assert m.positions() == {(WA, 0): 1, (WA, 1): 1}


def test_positions_name_the_first_record_not_popped_and_skip_markers():
    m = merge_of({(WA, 0): 10})
    m.push(rec(WA, 0, 3, 1))
    m.push(rec(WA, 0, 4, 2))
    assert m.positions() == {(WA, 0): 3}
    m.pop()
    assert m.positions() == {(WA, 0): 4}
    m.pop()
    assert m.positions() == {(WA, 0): 5}
    m.advance_to((WA, 0), 10)  # the rest were transaction markers
    assert m.finished() and m.positions() == {(WA, 0): 10}


def test_records_appended_after_the_start_are_not_played():
    m = merge_of({(WA, 0): 1})
    m.push(rec(WA, 0, 0, 5))
    m.push(rec(WA, 0, 1, 1))  # at or past the end seen at start
    assert drain(m) == [(WA, 0, 0)] and m.finished()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"routes": ()}, "nothing to play"),
        ({"routes": (("a", "a"),)}, "same topic"),
        ({"routes": (("a", "b"), ("a", "c"))}, "named twice"),
        ({"routes": (("a", "b"),), "speed": -1.0}, "speed"),
        ({"routes": (("a", "b"),), "max_rate": 0.0}, "max_rate"),
        ({"routes": (("a", "b"),), "batch_records": 0}, "batch_records"),
    ],
)
def test_a_request_that_cannot_be_played_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PlayRequest(**kwargs)
