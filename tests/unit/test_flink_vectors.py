"""The Flink conformance vectors (tests/vectors/flink/): the Python reference reproduces
every committed vector, the files hold the whole corpus and every hand-written case, and
they are exactly what the generator writes today. The JVM operator's JUnit tests read the
same files; a disagreement on either side fails its suite."""

from __future__ import annotations

import base64
import json

import pytest

from streams.contracts import schema
from streams.flink.reference import window_ends
from streams.flink.reward import RewardWeights
from streams.flink.timeline import TimelineParams
from tests.vectors import flink_vectors as fv

# Every reason a watch record can get on the job's path (the upload-only and SID reasons
# cannot occur for a watch; `late` is the timeline's).
WATCH_REASONS = {
    schema.NOT_JSON,
    schema.NOT_OBJECT,
    schema.OVERSIZED_PAYLOAD,
    schema.UNKNOWN_SCHEMA,
    schema.MISSING_FIELD,
    schema.WRONG_TYPE,
    schema.EMPTY_ID,
    schema.NEGATIVE_DURATION,
    schema.WATCH_TIME_EXCEEDS_DURATION,
    schema.FUTURE_TIMESTAMP,
    schema.BAD_SATISFACTION,
    schema.AMBIGUOUS_USER_ID,
}


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return fv.read_lines(fv.OUT_DIR / fv.RECORDS)


@pytest.fixture(scope="module")
def timelines() -> list[dict]:
    return fv.read_lines(fv.OUT_DIR / fv.TIMELINES)


def raw_of(record: dict) -> bytes | None:
    return None if record["raw_b64"] is None else base64.b64decode(record["raw_b64"])


def params_of(p: dict) -> TimelineParams:
    return TimelineParams(
        allowed_lateness_ms=p["allowed_lateness_ms"],
        session_gap_ms=p["session_gap_ms"],
        history_len=p["history_len"],
        pair_prev_k=p["pair_prev_k"],
        weights=RewardWeights(
            click=p["w_click"],
            ratio=p["w_ratio"],
            satisfaction=p["w_satisfaction"],
            ratio_cap=p["ratio_cap"],
            satisfaction_default=p["satisfaction_default"],
        ),
        sample_salt=p["sample_salt"],
    )


def steps_of(line: dict) -> list[tuple]:
    steps = []
    for s in line["steps"]:
        if "watermark" in s:
            steps.append(("watermark", s["watermark"]))
        else:
            assert s["record"]["now_ms"] == fv.NOW_MS
            steps.append(("record", s["record"]["key"], raw_of(s["record"])))
    return steps


def first_differences(pairs, n: int = 5) -> str:
    lines = [
        f"{vid}: expected {want!r}, the reference gives {got!r}" for vid, want, got in pairs[:n]
    ]
    return f"{len(pairs)} disagreements, the first:\n" + "\n".join(lines)


def test_the_reference_reproduces_every_record_vector(records):
    diffs = []
    for r in records:
        got = fv.decide(r["key"], raw_of(r), r["now_ms"])
        if got != r["expect"]:
            diffs.append((r["id"], r["expect"], got))
    assert not diffs, first_differences(diffs)


def test_the_reference_reproduces_every_timeline_vector(timelines):
    diffs = []
    for t in timelines:
        got = fv.run_timeline(params_of(t["params"]), steps_of(t))
        if got != t["expect"]:
            step = next(i for i, (a, b) in enumerate(zip(t["expect"], got, strict=True)) if a != b)
            diffs.append((f"{t['id']} step {step}", t["expect"][step], got[step]))
    assert not diffs, first_differences(diffs)


@pytest.fixture(scope="module")
def windows() -> list[dict]:
    return fv.read_lines(fv.OUT_DIR / fv.WINDOWS)


def test_the_reference_reproduces_every_window_vector(windows):
    diffs = [
        (w["id"], w["expect"], got)
        for w in windows
        if (got := window_ends(w["ts"], w["window"], w["window_size_ms"], w["window_slide_ms"]))
        != w["expect"]
    ]
    assert not diffs, first_differences(diffs)


def test_the_window_vectors_cover_both_shapes_and_several_windows_per_ts(windows):
    assert {w["window"] for w in windows} == {"tumbling", "sliding"}
    assert max(len(w["expect"]) for w in windows) >= 6  # a 1 h window sliding by 10 min
    assert sum(w["id"].startswith("gen/") for w in windows) >= 300


def test_the_corpus_is_large_and_holds_every_hand_written_case(records, timelines):
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids))
    assert sum(i.startswith("gen/") for i in ids) >= 10_000
    assert {vid for vid, *_ in fv.edge_records()} <= set(ids)
    tids = [t["id"] for t in timelines]
    assert len(tids) == len(set(tids))
    assert sum(i.startswith("gen/") for i in tids) >= 300
    assert {vid for vid, *_ in fv.edge_timelines()} <= set(tids)


def test_every_watch_reason_and_valid_records_appear(records, timelines):
    reasons = {r["expect"].get("reason") for r in records}
    assert WATCH_REASONS | {None} <= reasons
    generated = {r["expect"].get("reason") for r in records if r["id"].startswith("gen/")}
    assert WATCH_REASONS | {None} <= generated
    dead = {o["dead"] for t in timelines for out in t["expect"] for o in out if "dead" in o}
    assert {schema.LATE, schema.AMBIGUOUS_USER_ID, schema.NOT_JSON} <= dead
    examples = [
        o["released"]["example"]
        for t in timelines
        for out in t["expect"]
        for o in out
        if "released" in o
    ]
    assert any(e is None for e in examples) and any(e is not None for e in examples)


def test_every_hand_written_case_shows_what_its_name_promises(records, timelines):
    expect = {r["id"]: r["expect"] for r in records}
    for vid, _key, _raw, promised in fv.edge_records():
        assert expect[vid].get("reason") == promised, vid
    outputs = {t["id"]: t["expect"] for t in timelines}
    for vid, _p, _steps, check in fv.edge_timelines():
        assert check(outputs[vid]), vid


def test_the_committed_inputs_are_what_the_generator_writes(records, timelines, windows):
    """The generator (deterministic) gives the committed inputs exactly, and the tests
    above check the committed expectations against the reference: a change of the
    reference or of the generator must be committed with its regenerated vectors
    (`python -m tests.vectors.flink_vectors`)."""
    for name, committed, fresh in (
        (fv.RECORDS, records, [fv.record_input(*r) for r in fv.record_inputs()]),
        (fv.TIMELINES, timelines, [fv.timeline_input(*t) for t in fv.timeline_inputs()]),
        (fv.WINDOWS, windows, [fv.window_input(*w) for w in fv.window_inputs()]),
    ):
        fresh = [json.loads(fv.to_text([line])) for line in fresh]  # as the file holds it
        assert len(committed) == len(fresh), f"{name}: {len(committed)} lines, now {len(fresh)}"
        committed = [{k: v for k, v in line.items() if k != "expect"} for line in committed]
        diffs = [(a["id"], a, b) for a, b in zip(committed, fresh, strict=True) if a != b]
        assert not diffs, name + ": " + first_differences(diffs, 2)
