"""Per-user timeline logic (streams/user_timeline.py): lateness, order, sessions, pairs,
examples; and a property test against the independent reference."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.contracts import schema
from streams.flink import timeline as ut
from streams.flink.reference import RefParams, run_reference
from streams.flink.reward import RewardWeights

# Sampling always on (r_max tiny relative to any clicked reward) where a test needs examples.
P = ut.TimelineParams(
    allowed_lateness_ms=10_000,
    session_gap_ms=60_000,
    history_len=3,
    pair_prev_k=2,
    weights=RewardWeights(),
    sample_salt="",
)


def ev(ts, eid, video, clicked=True, watch=5.0, dur=10.0, ctx=None, sat=None):
    return (ts, eid, video, watch, dur, clicked, ctx, sat)


def run(events, p=P, upto=10**15, r_max=1e-9):
    state = ut.new_state()
    late = [e[1] for e in events if not ut.admit(state, e, p.allowed_lateness_ms)]
    pairs, examples = ut.release(state, upto, p, r_max)
    return state, late, pairs, examples


def test_watch_behind_the_users_newest_by_more_than_allowed_lateness_is_late():
    _, late, _, _ = run([ev(100_000, "a", "v1"), ev(95_000, "b", "v2"), ev(89_999, "c", "v3")])
    assert late == ["c"]  # 95_000 is within 10 s of 100_000; 89_999 is not


def test_watch_at_or_before_an_already_released_one_is_late():
    state = ut.new_state()
    assert ut.admit(state, ev(1000, "a", "v1"), 10_000)
    ut.release(state, 1000, P, 1.0)
    assert not ut.admit(state, ev(1000, "b", "v2"), 10_000)
    assert not ut.admit(state, ev(999, "c", "v2"), 10_000)
    assert ut.admit(state, ev(1001, "d", "v2"), 10_000)


def test_release_is_in_event_time_order_not_arrival_order():
    _, _, pairs, examples = run([ev(3000, "c", "v3"), ev(1000, "a", "v1"), ev(2000, "b", "v2")])
    assert [e[0][1] for e in examples] == ["a", "b", "c"]
    assert [h[0] for h in examples[2][2]] == ["v1", "v2"]


def test_equal_timestamps_are_ordered_by_event_id():
    _, _, _, examples = run([ev(1000, "b", "v2"), ev(1000, "a", "v1")])
    assert [e[0][1] for e in examples] == ["a", "b"]


def test_release_stops_at_the_watermark():
    state, _, _, examples = run([ev(1000, "a", "v1"), ev(5000, "b", "v2")], upto=4999)
    assert [e[0][1] for e in examples] == ["a"]
    assert [e[1] for e in state[ut.PENDING]] == ["b"]


def test_each_watch_pairs_with_previous_k_of_its_session_in_canonical_order():
    events = [ev(1000 * i, f"e{i}", v) for i, v in enumerate(["v3", "v1", "v2", "v4"], start=1)]
    _, _, pairs, _ = run(events)
    assert pairs == [
        ("v1", "v3", 2000),
        ("v2", "v3", 3000),
        ("v1", "v2", 3000),
        ("v1", "v4", 4000),
        ("v2", "v4", 4000),  # k = 2: v3 is too far back
    ]


def test_no_pairs_across_a_session_gap_and_no_self_pairs():
    events = [
        ev(0, "a", "v1"),
        ev(1000, "b", "v1"),
        ev(1000 + 60_001, "c", "v2"),
        ev(1000 + 60_002, "d", "v3"),
    ]
    _, _, pairs, _ = run(events)
    assert pairs == [("v2", "v3", 61_002)]


def test_example_carries_history_features_context_and_reward():
    events = [
        ev(0, "a", "v1", watch=2.0, dur=8.0),
        ev(1_800_000, "b", "v2", ctx="v1", watch=10.0, dur=10.0, sat=0.9),
    ]
    _, _, _, examples = run(events)
    target, r, hist = examples[1]
    assert target[ut.CONTEXT] == "v1" and target[ut.VIDEO_ID] == "v2"
    assert hist == [("v1", 0.25, 2.0, 0.5)]  # ratio 2/8, watched 2 s, 30 min = 0.5 h earlier
    assert r == 1.0 + 1.0 * 1.0 + 0.5 * 0.9


def test_history_is_capped_and_spans_sessions():
    events = [ev(i * 100_000, f"e{i}", f"v{i}") for i in range(6)]  # every watch its own session
    _, _, pairs, examples = run(events)
    assert pairs == []
    assert [h[0] for h in examples[-1][2]] == ["v2", "v3", "v4"]


def test_unclicked_watches_are_never_examples():
    _, _, _, examples = run([ev(0, "a", "v1", clicked=False), ev(1, "b", "v2", clicked=False)])
    assert examples == []


# ---------------------------------------------------------------- exact boundaries


def test_a_watch_exactly_allowed_lateness_behind_is_on_time_and_one_ms_more_is_late():
    _, late, _, _ = run([ev(100_000, "a", "v1"), ev(90_000, "b", "v2"), ev(89_999, "c", "v3")])
    assert late == ["c"]


def test_a_gap_of_exactly_session_gap_stays_in_the_session_and_one_ms_more_opens_one():
    events = [ev(0, "a", "v1"), ev(60_000, "b", "v2"), ev(120_001, "c", "v3")]
    _, _, pairs, _ = run(events)
    assert pairs == [("v1", "v2", 60_000)]


def test_equal_timestamps_order_by_code_point_not_utf16_unit():
    # U+FFFF < U+10000 as code points; as UTF-16 units U+10000 (D800 DC00) sorts first.
    _, _, _, examples = run([ev(1000, "e\U00010000", "v2"), ev(1000, "e\uffff", "v1")])
    assert [e[0][1] for e in examples] == ["e\uffff", "e\U00010000"]


def test_history_exactly_history_len_long_then_the_oldest_drops():
    events = [ev(i * 1000, f"e{i}", f"v{i}") for i in range(5)]
    _, _, _, examples = run(events)  # history_len 3
    assert [[h[0] for h in e[2]] for e in examples[3:]] == [["v0", "v1", "v2"], ["v1", "v2", "v3"]]


def test_zero_history_len_gives_empty_histories_while_pairs_still_look_back():
    p = ut.TimelineParams(allowed_lateness_ms=10_000, history_len=0, pair_prev_k=2)
    _, _, pairs, examples = run([ev(0, "a", "v1"), ev(1, "b", "v2")], p=p)
    assert pairs == [("v1", "v2", 1)] and [e[2] for e in examples] == [[], []]


def test_zero_pair_prev_k_gives_no_pairs_while_histories_still_fill():
    p = ut.TimelineParams(allowed_lateness_ms=10_000, history_len=3, pair_prev_k=0)
    _, _, pairs, examples = run([ev(0, "a", "v1"), ev(1, "b", "v2")], p=p)
    assert pairs == [] and [len(e[2]) for e in examples] == [0, 1]


def test_history_len_above_pair_prev_k_is_exact():
    p = ut.TimelineParams(allowed_lateness_ms=10_000, history_len=2, pair_prev_k=4)
    _, _, _, examples = run([ev(i, f"e{i}", f"v{i}") for i in range(4)], p=p)
    assert [h[0] for h in examples[-1][2]] == ["v1", "v2"]


def test_release_ready_sorts_any_pending_order_by_ts_then_event_id():
    head, history = ut.new_head(), []
    pending = [ev(2, "a", "v3"), ev(1, "c", "v2"), ev(1, "b", "v1")]
    for e in pending:
        assert ut.accept(head, e, 10_000)
    released, rest = ut.release_ready(head, pending, history, 10, P, 1e-9)
    assert [r[0][1] for r in released] == ["b", "c", "a"] and rest == []


def test_a_watermark_at_a_pending_ts_releases_it_and_one_below_does_not():
    state = ut.new_state()
    assert ut.admit(state, ev(5000, "a", "v1"), 0)
    assert ut.release(state, 4999, P, 1e-9) == ([], [])
    _, examples = ut.release(state, 5000, P, 1e-9)
    assert [e[0][1] for e in examples] == ["a"]


# ---------------------------------------------------------------- property: job logic == reference

REF = RefParams(
    out_of_orderness_ms=10**12,
    allowed_lateness_ms=5_000,
    session_gap_ms=20_000,
    history_len=3,
    pair_prev_k=2,
    window="tumbling",
    window_size_ms=10_000,
    window_slide_ms=10_000,
    min_count=1,
    w_click=1.0,
    w_ratio=1.0,
    w_satisfaction=0.5,
    ratio_cap=1.0,
    satisfaction_default=0.5,
    sample_salt="p",
)
TP = ut.TimelineParams(
    allowed_lateness_ms=REF.allowed_lateness_ms,
    session_gap_ms=REF.session_gap_ms,
    history_len=REF.history_len,
    pair_prev_k=REF.pair_prev_k,
    weights=RewardWeights(),
    sample_salt=REF.sample_salt,
)

watch_st = st.tuples(
    st.sampled_from(["u1", "u2", "u3"]),
    st.integers(0, 120_000),
    st.sampled_from(["v1", "v2", "v3", "v4"]),
    st.booleans(),
    st.floats(0.0, 1.4),
    st.one_of(st.none(), st.floats(0.0, 1.0)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(watch_st, max_size=40))
def test_timeline_agrees_with_the_independent_reference(watches):
    records, events = [], []
    for i, (user, ts, video, clicked, ratio, sat) in enumerate(watches):
        w = schema.WatchEvent(
            event_id=f"e{i:03d}",
            user_id=user,
            video_id=video,
            ts=1_700_000_000_000 + ts,
            watch_time_s=round(ratio * 10.0, 1),
            video_duration_s=10.0,
            clicked=clicked,
            surface="home",
            satisfaction=sat,
        )
        records.append((0, i, schema.encode(w)))
        events.append(w)
    expected = run_reference(
        records, REF, now_ms=1_800_000_000_000, final_watermark=None, source_topic="t"
    )
    states: dict[str, list] = {}
    late, pairs, examples = set(), Counter(), {}
    for i, w in enumerate(events):
        s = states.setdefault(w.user_id, ut.new_state())
        if not ut.admit(s, ut.watch_tuple(w), TP.allowed_lateness_ms):
            late.add((0, i, schema.LATE))
    for s in states.values():
        ps, exs = ut.release(s, 10**15, TP, TP.weights.max_reward())
        for a, b, ts in ps:
            pairs[(a, b, ts - ts % REF.window_size_ms + REF.window_size_ms)] += 1
        for e, r, hist in exs:
            examples[e[ut.EVENT_ID]] = (r, [h[0] for h in hist], [h[3] for h in hist])
    assert late == set(expected.dead)
    assert Counter({(a, b, c, end): 1 for (a, b, end), c in pairs.items()}) == expected.pairs
    assert examples == {
        k: (x.reward, [h.video_id for h in x.history], [h.hours_since for h in x.history])
        for k, x in expected.examples.items()
    }


def test_flink_job_example_encoding_decodes_to_the_schema_example():
    # The Flink operator builds the example JSON directly with orjson (no dataclass round
    # trip); the text may differ from schema.encode where JSON allows, the example not.
    from streams.flink.job import _encode_example

    e = ev(1_000, "e1", "v9", ctx="v3", sat=0.25, watch=7, dur=9.5)
    hist = [("v1", 0.5, 5.0, 0.25), ("v2", 1.0, 12, 1e-7), ("v\u00e9", 1.5, 1e16, 3.0)]
    for h, ctx_e in ((hist, e), ([], ev(2, "e2", "v8"))):
        want = schema.SftExample(
            event_id=ctx_e[ut.EVENT_ID],
            user_id='u\u00e9"1',
            history=tuple(schema.HistoryItem(*x) for x in h),
            context_video_id=ctx_e[ut.CONTEXT],
            target_video_id=ctx_e[ut.VIDEO_ID],
            reward=0.75,
            ts=ctx_e[ut.TS],
        )
        text = _encode_example(ctx_e, 'u\u00e9"1', 0.75, h)
        assert schema.decode_sft_example(text) == want
        assert json.loads(text) == json.loads(schema.encode(want))  # same keys and values


def test_state_of_earlier_job_versions_converts_to_head_pending_history():
    pending = [ev(3000, "c", "v3"), ev(2000, "b", "v2")]
    history = [("v1", 0.5, 5.0, 1000, 1)]
    want = ([5000, 1000, 1, 1000, 2000], pending, history)
    # the one-state version kept the history as a sixth element ...
    assert ut.from_legacy([5000, 1000, 1, 1000, list(pending), list(history)], None) == want
    # ... the next one in its own state
    assert ut.from_legacy([5000, 1000, 1, 1000, list(pending)], list(history)) == want
    assert ut.from_legacy([None, None, 0, None, []], None) == ([None, None, 0, None, None], [], [])


def test_released_state_continues_exactly_after_conversion():
    events = [ev(1000 * i, f"e{i}", f"v{i % 3}") for i in range(1, 9)]
    whole = ut.new_state()
    for e in events:
        assert ut.admit(whole, e, P.allowed_lateness_ms)
    ut.release(whole, 4000, P, 1e-9)
    head, pending, history = ut.from_legacy(
        [*whole[ut.HEAD][:4], list(whole[ut.PENDING])], list(whole[ut.HISTORY])
    )
    released, rest = ut.release_ready(head, pending, history, 10**15, P, 1e-9)
    assert ut.release(whole, 10**15, P, 1e-9)[1] == [
        (e, x[0], x[1]) for e, _, x in released if x is not None
    ]
    assert rest == [] and head == whole[ut.HEAD]


def test_a_record_keyed_under_another_user_is_dead_lettered_not_mixed_in():
    from streams.flink.job import validate_keyed_watch

    raw = json.dumps(
        {
            "schema": 1,
            "event_id": "e",
            "user_id": "u1",
            "video_id": "v",
            "ts": 5,
            "watch_time_s": 1.0,
            "video_duration_s": 2.0,
            "clicked": True,
            "surface": "home",
        }
    ).encode()
    assert validate_keyed_watch("u1", raw, 10_000)[ut.EVENT_ID] == "e"
    with pytest.raises(schema.ValidationError, match="'u1' was read as 'u2'") as err:
        validate_keyed_watch("u2", raw, 10_000)
    assert err.value.reason == schema.AMBIGUOUS_USER_ID
    with pytest.raises(schema.ValidationError) as err:
        validate_keyed_watch("", b"", 10_000)  # a record with no value
    assert err.value.reason == schema.NOT_JSON
