"""Hot swap: a version loads and warms up beside the served one and replaces it; a failed
load (missing, corrupt, NaN, wrong sid_version) leaves the old one serving with the error
recorded; the index follows the rules of the design on a model swap; deltas swap the
index atomically."""

import math

import pytest

from serving.index import SequenceGap
from serving.model_slot import HistoryEntry, ModelLoadError, NotReady
from serving.sid_delta import DeltaError, SidDelta
from tests.serving_support import (
    corrupt_version,
    delta,
    rows,
    serving_stack,
    snapshot,
    write_nan_version,
)


@pytest.fixture
def stack(tmp_path):
    with serving_stack(tmp_path) as s:
        yield s


@pytest.fixture
def empty(tmp_path):
    with serving_stack(tmp_path, load=False) as s:
        yield s


def loads(stack, outcome: str) -> float:
    return stack.metrics.value("plum_serving_model_loads_total", outcome=outcome)


def test_start_serves_the_newest_version_with_its_snapshot(stack):
    served = stack.slot.served
    assert served.version == 2 and stack.slot.history == (2,)
    assert (served.index.sid_version, served.index.seq, served.index.items) == ("v1", 16, 16)
    assert stack.metrics.value("plum_serving_model_version") == 2
    assert stack.metrics.value("plum_serving_index_items") == 16


def test_nothing_served_before_a_load(empty):
    assert empty.slot.served is None and not empty.slot.ready
    assert math.isnan(empty.metrics.value("plum_serving_model_version"))
    with pytest.raises(NotReady):
        empty.slot.apply_delta(delta(16, 17))


def test_load_swaps_and_the_old_snapshot_stays_intact(stack):
    old = stack.slot.served
    new = stack.slot.load(1)
    assert stack.slot.served is new and new.version == 1
    assert old.version == 2  # a search holding `old` finishes on it
    assert stack.slot.history == (2, 1)
    assert loads(stack, "loaded") == 2


def test_loading_the_served_version_reloads_nothing(stack):
    served = stack.slot.served
    assert stack.slot.load(2) is served
    assert stack.slot.history == (2,)


def test_missing_version_is_404_and_changes_nothing(stack):
    served = stack.slot.served
    with pytest.raises(ModelLoadError) as info:
        stack.slot.load(7)
    assert info.value.status == 404
    assert stack.slot.served is served
    assert stack.slot.last_error.version == 7


def test_corrupt_version_fails_and_the_old_one_keeps_serving(stack):
    v3 = stack.tiny.write_version()
    corrupt_version(stack.tiny.repo, v3.version)
    served = stack.slot.served
    with pytest.raises(ModelLoadError, match="content hash") as info:
        stack.slot.load(v3.version)
    assert info.value.status == 422
    assert stack.slot.served is served
    error = stack.slot.status()["last_error"]
    assert error["action"] == "load" and error["version"] == 3 and "hash" in error["detail"]
    assert loads(stack, "failed") == 1


def test_nan_version_with_a_correct_hash_is_refused(stack):
    nan = write_nan_version(stack.tiny)
    served = stack.slot.served
    with pytest.raises(ModelLoadError, match="not finite"):
        stack.slot.load(nan.version)
    assert stack.slot.served is served


def test_a_version_prompts_in_the_layout_it_was_trained_in(stack):
    """The manifest's prompt_layout picks the prompt: "target" ends in the context and
    <tgt>; "sequence" is the history alone (trainer.prompt.sequence_prompt)."""
    from streams.contracts import schema
    from trainer.prompt import sequence_prompt

    vocab, now = stack.tiny.vocab, 10 * 3_600_000
    history = [HistoryEntry("v1", 0.5, 30.0, now - 7_200_000), HistoryEntry("v2", 1.0, 60.0, now)]
    target_prompt, _ = stack.slot.served.prompt(history, "v3", now)
    assert target_prompt[-1] == vocab.token_to_id("<tgt>")
    assert stack.slot.status()["model"]["prompt_layout"] == "target"
    v3 = stack.tiny.write_version(prompt_layout="sequence")
    served = stack.slot.load(v3.version)
    assert stack.slot.status()["model"]["prompt_layout"] == "sequence"
    prompt, unknown = served.prompt([*history, HistoryEntry("nope")], "v3", now)
    items = (schema.HistoryItem("v1", 0.5, 30.0, 2.0), schema.HistoryItem("v2", 1.0, 60.0, 0.0))
    assert unknown == 1
    assert prompt == sequence_prompt(items, served.index.lookup, vocab, served.prompt_len)
    assert vocab.token_to_id("<tgt>") not in prompt


def test_a_version_in_an_unknown_prompt_layout_is_refused(stack):
    v3 = stack.tiny.write_version()
    path = stack.tiny.repo.path(v3.version) / "manifest.json"
    path.write_text(path.read_text().replace('"prompt_layout": "target"', '"prompt_layout": "x"'))
    with pytest.raises(ModelLoadError, match="prompt_layout"):
        stack.slot.load(v3.version)
    assert stack.slot.served.version == 2


def test_wrong_sid_version_is_refused(stack):
    with pytest.raises(ModelLoadError, match="sid_version"):
        stack.slot.load(1, sid_version="v9")
    with pytest.raises(ModelLoadError, match="sid_version"):
        stack.slot.load(2, sid_version="v9")  # the served one too
    assert stack.slot.served.version == 2


def test_start_falls_back_to_an_older_version_when_the_newest_is_broken(tmp_path):
    with serving_stack(tmp_path, load=False) as s:
        v3 = s.tiny.write_version()
        corrupt_version(s.tiny.repo, v3.version)
        assert s.slot.load_latest().version == 2
        assert s.slot.last_error.action == "start" and s.slot.last_error.version == 3


def test_rollback_defaults_to_the_version_served_before(stack):
    with pytest.raises(ModelLoadError) as info:
        stack.slot.rollback()
    assert info.value.status == 409  # nothing before version 2
    stack.slot.load(1)
    assert stack.slot.rollback().version == 2
    assert stack.slot.history == (2, 1, 2)
    assert stack.slot.rollback(1).version == 1


def test_model_swap_keeps_an_index_that_already_holds_the_snapshot(stack):
    stack.slot.apply_delta(delta(16, 20))
    stack.slot.load(1)  # its snapshot is at seq 16 < 20: the deltas stay
    assert (stack.slot.served.index.seq, stack.slot.served.index.items) == (20, 20)


def test_model_swap_takes_the_artifacts_index_when_it_is_newer_or_another_version(stack):
    v3 = stack.tiny.write_version(snapshot=snapshot(18))
    stack.slot.load(v3.version)
    assert stack.slot.served.index.seq == 18
    v4 = stack.tiny.write_version(snapshot=snapshot(20, sid_version="v2"))
    stack.slot.load(v4.version)
    assert (stack.slot.served.index.sid_version, stack.slot.served.index.seq) == ("v2", 20)


def test_delta_swaps_the_index_atomically_and_observes_upload_to_servable(stack):
    before = stack.slot.served
    index, applied = stack.slot.apply_delta(delta(16, 18))
    assert applied == 2 and stack.slot.served.index is index
    assert before.index.seq == 16  # the old snapshot is untouched
    assert stack.slot.served.params is before.params  # same model
    assert stack.metrics.value("plum_serving_deltas_total", outcome="applied") == 1
    count = stack.metrics.registry.get_sample_value("plum_serving_upload_to_servable_seconds_count")
    assert count == 2
    again, applied = stack.slot.apply_delta(delta(16, 18))
    assert applied == 0 and again is index
    assert stack.metrics.value("plum_serving_deltas_total", outcome="duplicate") == 1


def test_delta_observes_sid_assigned_to_servable_from_each_assignments_time(stack, monkeypatch):
    sample = stack.metrics.registry.get_sample_value
    ahead = delta(16, 18)
    now_s = ahead.assignments[-1].assigned_ts / 1000 + 4.0
    monkeypatch.setattr(stack.slot, "_clock", lambda: now_s)
    stack.slot.apply_delta(ahead)
    ages = [now_s - a.assigned_ts / 1000 for a in ahead.assignments]  # 5.0 and 4.0
    assert sample("plum_serving_sid_to_servable_seconds_count") == 2
    assert sample("plum_serving_sid_to_servable_seconds_sum") == pytest.approx(sum(ages))
    assert sample("plum_serving_sid_to_servable_seconds_bucket", {"le": "2.0"}) == 0
    assert sample("plum_serving_sid_to_servable_seconds_bucket", {"le": "5.0"}) == 2
    # upload -> servable is the longer path: each upload came ASSIGNED_AFTER_MS earlier
    uploads = [now_s - a.upload_ts / 1000 for a in ahead.assignments]
    assert sample("plum_serving_upload_to_servable_seconds_sum") == pytest.approx(sum(uploads))
    assert sum(uploads) > sum(ages)


def test_an_assignment_of_unknown_time_is_not_observed(stack):
    old_sender = SidDelta.of("v1", 16, [(r[0], r[1], r[2], 0) for r in rows(16, 18)])
    stack.slot.apply_delta(old_sender)
    sample = stack.metrics.registry.get_sample_value
    assert sample("plum_serving_upload_to_servable_seconds_count") == 2
    assert sample("plum_serving_sid_to_servable_seconds_count") == 0


def test_delta_gap_and_bad_delta_change_nothing(stack):
    served = stack.slot.served
    with pytest.raises(SequenceGap) as info:
        stack.slot.apply_delta(delta(17, 19))
    assert info.value.expected_seq == 16
    with pytest.raises(DeltaError):
        stack.slot.apply_delta(SidDelta.of("v1", 16, [("dup", served.index.sid_of("v0"), 0, 0)]))
    assert stack.slot.served is served
    assert stack.slot.status()["last_error"]["action"] == "delta"


def test_delta_that_changes_the_trie_shape_is_warmed_up_before_the_swap(empty, monkeypatch):
    # The tiny vocabulary's tables are padded to every prefix it can hold, so its shapes
    # never change; without the headroom a growing index does change them.
    import serving.index
    import serving.model_slot

    monkeypatch.setattr(serving.index, "_floors", lambda slots, sizes, previous: (1,) * len(sizes))
    warmed = []

    def spy(served, batch_sizes):
        warmed.append((served.index.shapes, stack.slot.served, tuple(batch_sizes)))

    monkeypatch.setattr(serving.model_slot.Served, "warm_up", spy)
    stack = empty
    small = stack.tiny.write_version(snapshot=snapshot(4, sid_version="v2"))
    stack.slot.load(small.version)
    before = stack.slot.served
    index, _ = stack.slot.apply_delta(delta(4, 48, sid_version="v2"))
    assert index.shapes != before.index.shapes
    assert warmed[-1] == (index.shapes, before, (1, 4))  # warmed while the old one served
    assert stack.slot.served.index is index
