import numpy as np
import pytest

from tokenizer.index import Assignment, SidIndex, SidSpaceExhausted


@pytest.fixture
def index(tmp_path):
    idx = SidIndex(tmp_path / "sids.sqlite", disambiguation_size=3)
    yield idx
    idx.close()


def test_first_video_of_a_prefix_gets_disambiguation_zero(index):
    with index.transaction():
        a = index.assign("v1", "vid-a", [1, 2, 3], ts=1)
    assert a.sid == (1, 2, 3, 0) and a.new


def test_colliding_videos_get_the_next_free_code(index):
    with index.transaction():
        sids = [index.assign("v1", f"vid-{i}", [1, 2, 3], ts=i).sid for i in range(3)]
        other = index.assign("v1", "vid-x", [1, 2, 4], ts=9).sid
    assert sids == [(1, 2, 3, 0), (1, 2, 3, 1), (1, 2, 3, 2)]
    assert other == (1, 2, 4, 0)
    assert index.video_for("v1", (1, 2, 3, 1)) == "vid-1"


def test_reassigning_a_video_returns_its_sid_unchanged(index):
    with index.transaction():
        first = index.assign("v1", "vid-a", [1, 2, 3], ts=1)
        # even if the tokenizer now says otherwise: a published SID never changes
        again = index.assign("v1", "vid-a", [7, 7, 7], ts=2)
    assert again.sid == first.sid and not again.new
    assert index.size("v1") == 1


def test_versions_are_independent(index):
    with index.transaction():
        index.assign("v1", "vid-a", [1, 2, 3], ts=1)
        b = index.assign("v2", "vid-b", [1, 2, 3], ts=1)
    assert b.sid == (1, 2, 3, 0)
    assert index.versions() == ["v1", "v2"]


def test_full_disambiguation_space_is_an_error_naming_the_video(index):
    with index.transaction():
        for i in range(3):
            index.assign("v1", f"vid-{i}", [0, 0, 0], ts=i)
        with pytest.raises(SidSpaceExhausted, match="'vid-3'"):
            index.assign("v1", "vid-3", [0, 0, 0], ts=3)


def test_a_failed_transaction_leaves_nothing(index):
    with pytest.raises(RuntimeError):
        with index.transaction():
            index.assign("v1", "vid-a", [1, 2, 3], ts=1)
            raise RuntimeError("crash before commit")
    assert index.lookup("v1", "vid-a") is None
    with index.transaction():
        assert index.assign("v1", "vid-b", [1, 2, 3], ts=1).sid == (1, 2, 3, 0)


def test_records_from_the_topic_keep_the_next_free_code(index):
    with index.transaction():
        index.record("v1", "vid-a", (1, 2, 3, 0), ts=1)
        index.record("v1", "vid-b", (1, 2, 3, 1), ts=1)
        index.record("v1", "vid-b", (1, 2, 3, 1), ts=1)  # replayed record: no change
        c = index.assign("v1", "vid-c", [1, 2, 3], ts=2)
    assert c.sid == (1, 2, 3, 2)


def test_index_survives_reopening(tmp_path):
    path = tmp_path / "sids.sqlite"
    idx = SidIndex(path)
    with idx.transaction():
        idx.assign("v1", "vid-a", [4, 5, 6], ts=1)
        idx.remember_item("vid-a", 1, {"text": [0.5, 0.25]})
        idx.set_topic_offsets("topic", {0: 10, 1: 3})
        idx.set_topic_offsets("topic", {0: 7})  # offsets never move backwards
    idx.close()
    idx = SidIndex(path)
    assert idx.lookup("v1", "vid-a") == (4, 5, 6, 0)
    assert idx.topic_offsets("topic") == {0: 10, 1: 3}
    [(vid, ts, emb)] = list(idx.items())
    assert vid == "vid-a" and emb["text"].tolist() == [0.5, 0.25]
    idx.close()


def test_switch_needs_a_version_with_sids(index):
    with pytest.raises(ValueError, match="has no SIDs"):
        index.switch("nope")
    with index.transaction():
        index.assign("v1", "vid-a", [1, 2, 3], ts=1)
    index.switch("v1")
    assert index.active_version == "v1"


def test_assign_many_gives_the_sids_of_assigning_one_by_one(tmp_path):
    rng = np.random.default_rng(0)
    # Few distinct prefixes and a tiny disambiguation space: collisions, exhaustion,
    # videos already known and a video listed twice all happen in one batch.
    batch = [(f"vid-{rng.integers(40)}", rng.integers(0, 3, size=2).tolist()) for _ in range(60)]
    one, many = SidIndex(tmp_path / "one.sqlite", 4), SidIndex(tmp_path / "many.sqlite", 4)
    for idx in (one, many):
        with idx.transaction():
            idx.assign("v1", "vid-1", [0, 0], ts=0)
    expected = []
    with one.transaction():
        for video, codes in batch:
            try:
                expected.append(one.assign("v1", video, codes, ts=5))
            except SidSpaceExhausted as exc:
                expected.append(str(exc))
    with many.transaction():
        got = many.assign_many("v1", batch, ts=5)
    assert [r if isinstance(r, Assignment) else str(r) for r in got] == expected
    assert many.all_sids("v1") == one.all_sids("v1")
    with one.transaction(), many.transaction():  # the next free codes agree too
        assert many.assign("v1", "new", [0, 1], 6) == one.assign("v1", "new", [0, 1], 6)
    one.close()
    many.close()


def test_remember_items_stores_what_remember_item_does(tmp_path):
    idx = SidIndex(tmp_path / "sids.sqlite")
    vec = np.asarray([0.5, 0.25, -1.0], np.float32)
    with idx.transaction():
        idx.remember_items({"text": 2, "audio": 1}, ["vid-a"], [3], vec[None, :])
    [(vid, ts, emb)] = list(idx.items())
    assert (vid, ts) == ("vid-a", 3)
    assert emb["text"].tolist() == [0.5, 0.25] and emb["audio"].tolist() == [-1.0]
    idx.close()
