"""The serving SID index: sequence semantics of deltas, idempotence, split invariance,
trie shapes that grow rarely, and the lookup prompts are written with."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.index import SequenceGap, ServingIndex
from serving.sid_delta import DeltaError, SidDelta
from tests.serving_support import MAX_VIDEOS, delta, rows, sid, snapshot, video_id
from tests.trainer_data_support import tiny_vocab


@pytest.fixture(scope="module")
def vocab():
    return tiny_vocab()


def index_of(vocab, n: int, version: str = "v1") -> ServingIndex:
    return ServingIndex.from_snapshot(snapshot(n, version), vocab)


def same(a: ServingIndex, b: ServingIndex) -> None:
    assert a == b  # version, seq, assignments, servable rows, floors, unservable
    for ta, tb in zip(a.trie.tables, b.trie.tables, strict=True):
        np.testing.assert_array_equal(ta, tb)
    np.testing.assert_array_equal(a.trie.slots, b.trie.slots)
    assert dict(a.lookup.sids) == dict(b.lookup.sids)


def test_snapshot_index_holds_every_video_and_its_trie_row(vocab):
    index = index_of(vocab, 10)
    assert (index.sid_version, index.seq, index.items, index.unservable) == ("v1", 10, 10, 0)
    for row, video in enumerate(index.trie_video_ids):
        assert tuple(index.trie.slots[row]) == vocab.sid_slots(index.sid_of(video))
        assert index.lookup.tokens(vocab, video) == vocab.encode_sid(sid(int(video[1:])))
    assert "v3" in index and "v99" not in index
    assert index.lookup.tokens(vocab, "v99") is None


def test_delta_applies_in_order_and_a_resend_changes_nothing(vocab):
    index = index_of(vocab, 10)
    after, applied = index.apply(delta(10, 14))
    assert (after.seq, after.items, applied) == (14, 14, 4)
    assert index.seq == 10 and index.items == 10  # the old index is untouched
    again, applied = after.apply(delta(10, 14))
    assert again is after and applied == 0
    older, applied = after.apply(delta(5, 8))
    assert older is after and applied == 0


def test_overlapping_delta_applies_only_what_is_missing(vocab):
    index, _ = index_of(vocab, 10).apply(delta(10, 12))
    after, applied = index.apply(delta(10, 15))
    assert (after.seq, applied) == (15, 3)
    assert after.trie_video_ids == tuple(video_id(i) for i in range(15))


def test_gap_is_refused_with_the_expected_sequence(vocab):
    index = index_of(vocab, 10)
    with pytest.raises(SequenceGap) as info:
        index.apply(delta(12, 14))
    assert (info.value.expected_seq, info.value.sid_version) == (10, "v1")


def test_delta_of_another_sid_version_is_refused_as_a_gap(vocab):
    index = index_of(vocab, 10)
    with pytest.raises(SequenceGap) as info:
        index.apply(delta(10, 12, sid_version="v2"))
    assert (info.value.expected_seq, info.value.sid_version) == (10, "v1")
    assert "v2" in info.value.detail


def test_sid_already_another_videos_is_a_delta_error(vocab):
    index = index_of(vocab, 10)
    clash = SidDelta.of("v1", 10, [("new", sid(3), 0, 0)])
    with pytest.raises(DeltaError, match="already video 'v3'"):
        index.apply(clash)


def test_video_with_another_sid_is_a_delta_error(vocab):
    index = index_of(vocab, 10)
    moved = SidDelta.of("v1", 10, [("v3", sid(20), 0, 0)])
    with pytest.raises(DeltaError, match="already has SID"):
        index.apply(moved)


def test_unwritable_sid_is_sequenced_but_not_servable(vocab):
    index = index_of(vocab, 4)
    # disambiguation code 5 is beyond the tiny vocabulary's range (1 code)
    after, applied = index.apply(SidDelta.of("v1", 4, [("odd", (0, 0, 0, 5), 0, 0), *rows(4, 5)]))
    assert (after.seq, applied, after.items, after.unservable) == (6, 2, 5, 1)
    assert "odd" in after and "odd" not in after.lookup.sids
    assert "odd" not in after.trie_video_ids


def test_empty_snapshot_builds_an_empty_searchable_trie(vocab):
    index = index_of(vocab, 0)
    assert (index.seq, index.items) == (0, 0)
    assert all((t == -1).all() for t in index.trie.tables)
    after, applied = index.apply(delta(0, 3))
    assert (after.items, applied) == (3, 3)


def test_trie_shapes_never_shrink_and_stay_put_while_the_index_grows_a_little(vocab):
    index = index_of(vocab, 8)
    shapes = index.shapes
    grown, _ = index.apply(delta(8, 10))
    assert grown.shapes == shapes  # headroom: a few new videos cost no recompile
    rebuilt = grown.with_vocab(vocab)
    assert rebuilt.shapes == grown.shapes
    for level, (rows_now, _) in enumerate(grown.shapes):
        assert rows_now >= shapes[level][0]


@settings(max_examples=40, deadline=None)
@given(
    base=st.integers(0, 20),
    cuts=st.lists(st.integers(0, MAX_VIDEOS - 20), max_size=4),
    total=st.integers(0, MAX_VIDEOS - 20),
)
def test_split_deltas_equal_one_delta_and_twice_equals_once(vocab, base, cuts, total):
    end = base + total
    start = index_of(vocab, base)
    whole, applied = start.apply(delta(base, end))
    assert applied == total
    points = sorted({base, end, *(base + c for c in cuts if c <= total)})
    split = start
    for lo, hi in zip(points, points[1:], strict=False):
        split, _ = split.apply(delta(lo, hi))
    same(split, whole)
    twice, again = whole.apply(delta(base, end))
    assert again == 0
    same(twice, whole)
