"""Every validation reason of the event contracts, and encode/decode round trips."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from streams.contracts import schema
from streams.contracts.schema import ValidationError, ValidationLimits

NOW = 1_700_000_000_000
DIMS = {"text": 3, "visual": 2}
LIMITS = ValidationLimits(now_ms=NOW, embedding_dims=DIMS)


def watch(**over) -> dict:
    base = dict(
        schema=1,
        event_id="e1",
        user_id="u1",
        video_id="v1",
        ts=NOW - 1000,
        watch_time_s=30.0,
        video_duration_s=60.0,
        clicked=True,
        surface="home",
        context_video_id="v0",
        satisfaction=0.8,
    )
    base.update(over)
    return base


def upload(**over) -> dict:
    base = dict(
        schema=1,
        video_id="v1",
        ts=NOW - 1000,
        title="t",
        description="d",
        channel="c",
        topics=["music"],
        duration_s=60.0,
        embeddings={"text": [0.1, 0.2, 0.3], "visual": [1.0, 2.0]},
    )
    base.update(over)
    return base


def raw(obj) -> bytes:
    return json.dumps(obj).encode()


def reason_of(fn, data: bytes) -> str:
    with pytest.raises(ValidationError) as info:
        fn(data, LIMITS)
    return info.value.reason


def without(obj: dict, key: str) -> dict:
    return {k: v for k, v in obj.items() if k != key}


WATCH_CASES = [
    (b"{not json", schema.NOT_JSON),
    (b"\xff\xfe", schema.NOT_JSON),
    (b"[1, 2]", schema.NOT_OBJECT),
    (raw(watch(schema=2)), schema.UNKNOWN_SCHEMA),
    (raw(without(watch(), "user_id")), schema.MISSING_FIELD),
    (raw(watch(video_id=None)), schema.MISSING_FIELD),
    (raw(watch(ts="yesterday")), schema.WRONG_TYPE),
    (raw(watch(clicked="yes")), schema.WRONG_TYPE),
    (raw(watch(watch_time_s=True)), schema.WRONG_TYPE),
    (
        b'{"schema":1,"event_id":"e","user_id":"u","video_id":"v","ts":1,"watch_time_s":NaN,'
        b'"video_duration_s":60,"clicked":true,"surface":"home"}',
        schema.WRONG_TYPE,
    ),
    (raw(watch(user_id="  ")), schema.EMPTY_ID),
    (raw(watch(watch_time_s=-1.0)), schema.NEGATIVE_DURATION),
    (raw(watch(video_duration_s=-5.0)), schema.NEGATIVE_DURATION),
    (raw(watch(video_duration_s=0)), schema.NEGATIVE_DURATION),
    (raw(watch(watch_time_s=91.0, video_duration_s=60.0)), schema.WATCH_TIME_EXCEEDS_DURATION),
    (raw(watch(ts=NOW + 10 * 60 * 1000)), schema.FUTURE_TIMESTAMP),
    (raw(watch(satisfaction=1.5)), schema.BAD_SATISFACTION),
    (raw(watch(surface="x" * 300_000)), schema.OVERSIZED_PAYLOAD),
]


@pytest.mark.parametrize(
    "data,reason", WATCH_CASES, ids=[c[1] + f"-{i}" for i, c in enumerate(WATCH_CASES)]
)
def test_bad_watch_is_rejected_with_its_reason(data, reason):
    assert reason_of(schema.decode_watch, data) == reason


UPLOAD_CASES = [
    (
        raw(upload(embeddings={"text": [0.1, float("nan"), 0.3], "visual": [1.0, 2.0]})),
        schema.NAN_EMBEDDING,
    ),
    (
        b'{"schema":1,"video_id":"v","ts":1,"title":"t","duration_s":5,'
        b'"embeddings":{"text":[0.1,Infinity,0.3],"visual":[1,2]}}',
        schema.NAN_EMBEDDING,
    ),
    (
        raw(upload(embeddings={"text": [0.1, 0.2], "visual": [1.0, 2.0]})),
        schema.WRONG_EMBEDDING_LENGTH,
    ),
    (
        raw(upload(embeddings={"text": [0.1, 0.2, 0.3], "visual": [1.0, 2.0], "smell": [1.0]})),
        schema.UNKNOWN_MODALITY,
    ),
    (raw(upload(embeddings={"text": [0.1, 0.2, 0.3]})), schema.MISSING_MODALITY),
    (raw(upload(embeddings={})), schema.MISSING_MODALITY),
    (raw(upload(embeddings={"text": "0.1,0.2,0.3", "visual": [1.0, 2.0]})), schema.WRONG_TYPE),
    (raw(upload(embeddings={"text": [0.1, "a", 0.3], "visual": [1.0, 2.0]})), schema.WRONG_TYPE),
    (raw(upload(duration_s=-3)), schema.NEGATIVE_DURATION),
    (raw(without(upload(), "title")), schema.MISSING_FIELD),
    (raw(upload(topics="music")), schema.WRONG_TYPE),
    (raw(upload(ts=NOW + 3_600_000)), schema.FUTURE_TIMESTAMP),
]


@pytest.mark.parametrize(
    "data,reason", UPLOAD_CASES, ids=[c[1] + f"-{i}" for i, c in enumerate(UPLOAD_CASES)]
)
def test_bad_upload_is_rejected_with_its_reason(data, reason):
    assert reason_of(schema.decode_upload, data) == reason


def test_every_input_reason_is_covered_by_a_case():
    covered = {r for _, r in WATCH_CASES + UPLOAD_CASES}
    # `late` is decided by the stream job from event time, `ambiguous_user_id` by the job's
    # keying, and `sid_space_exhausted` by the SID index; none is the decoder's to find.
    assert covered == set(schema.REASONS) - {
        schema.LATE,
        schema.AMBIGUOUS_USER_ID,
        schema.SID_SPACE_EXHAUSTED,
    }


def test_error_message_names_the_offending_value():
    with pytest.raises(ValidationError, match="watch_time_s=91.0 > 1.5 x video_duration_s=60.0"):
        schema.decode_watch(raw(watch(watch_time_s=91.0, video_duration_s=60.0)), LIMITS)


def test_watch_time_up_to_one_and_a_half_durations_is_valid():
    event = schema.decode_watch(raw(watch(watch_time_s=90.0, video_duration_s=60.0)), LIMITS)
    assert event.watch_ratio == pytest.approx(1.5)


def test_future_check_is_off_without_a_clock():
    far = raw(watch(ts=NOW + 10**9))  # 11.6 days ahead of NOW
    assert schema.decode_watch(far).ts == NOW + 10**9
    with pytest.raises(ValidationError) as err:  # the same record, with a clock
        schema.decode_watch(far, LIMITS)
    assert err.value.reason == schema.FUTURE_TIMESTAMP


def test_dead_letter_keeps_raw_bytes_and_reason():
    bad = b"\xff not json"
    try:
        schema.decode_watch(bad)
    except ValidationError as err:
        letter = schema.DeadLetter.of("plum.watches.v1", 3, 42, err, bad, ts=NOW)
    decoded = schema.decode_dead_letter(schema.encode(letter))
    assert decoded == letter
    assert (decoded.raw, decoded.reason, decoded.partition, decoded.offset) == (
        bad,
        "not_json",
        3,
        42,
    )


ids = st.text(
    st.characters(min_codepoint=33, max_codepoint=0x2FFF), min_size=1, max_size=12
).filter(lambda s: s.strip() != "")
finite = st.floats(min_value=0, max_value=1e6, allow_nan=False)


@st.composite
def watch_events(draw):
    duration = draw(st.floats(min_value=0.1, max_value=1e5))
    return schema.WatchEvent(
        event_id=draw(ids),
        user_id=draw(ids),
        video_id=draw(ids),
        ts=draw(st.integers(min_value=0, max_value=NOW)),
        watch_time_s=draw(st.floats(min_value=0, max_value=duration * 1.5)),
        video_duration_s=duration,
        clicked=draw(st.booleans()),
        surface=draw(st.sampled_from(["home", "search"])),
        context_video_id=draw(st.none() | ids),
        satisfaction=draw(st.none() | st.floats(min_value=0, max_value=1)),
    )


@given(watch_events())
def test_any_valid_watch_round_trips(event):
    assert schema.decode_watch(schema.encode(event), LIMITS) == event


@given(
    st.dictionaries(
        st.sampled_from(["text", "visual", "audio"]),
        st.lists(
            st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=1, max_size=8
        ),
        min_size=1,
    )
)
def test_any_finite_upload_round_trips(embeddings):
    event = schema.UploadEvent(
        video_id="v",
        ts=5,
        title="t",
        description="",
        channel="c",
        topics=("a",),
        duration_s=3.0,
        embeddings={k: tuple(v) for k, v in embeddings.items()},
    )
    assert schema.decode_upload(schema.encode(event)) == event


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_decoder(data):
    try:
        schema.decode_watch(data, LIMITS)
    except ValidationError as err:
        assert err.reason in schema.REASONS


def test_sid_and_example_records_round_trip():
    sid = schema.SidAssignment(video_id="v", sid=(3, 1, 0, 2), sid_version="tok-1", ts=9)
    assert schema.decode_sid_assignment(schema.encode(sid)) == sid
    timed = schema.SidAssignment("v", (3, 1, 0, 2), "tok-1", ts=9, upload_ts=7)
    assert schema.decode_sid_assignment(schema.encode(timed)) == timed


def test_a_sid_assignment_without_upload_ts_reads_as_unknown_and_a_negative_one_is_refused():
    old = b'{"video_id":"v","sid":[1,2],"sid_version":"t","ts":5,"schema":1}'
    assert schema.decode_sid_assignment(old).upload_ts == 0
    with pytest.raises(ValidationError):
        schema.decode_sid_assignment(old.replace(b'"ts":5', b'"ts":5,"upload_ts":-1'))
    ex = schema.SftExample(
        event_id="e",
        user_id="u",
        history=(schema.HistoryItem("v1", 0.5, 30.0, 1.25),),
        context_video_id="v1",
        target_video_id="v2",
        reward=0.7,
        ts=11,
    )
    assert schema.decode_sft_example(schema.encode(ex)) == ex
    pair = schema.CooccurrencePair(a="a", b="b", count=3, window_end=100)
    assert schema.decode_cooccurrence(schema.encode(pair)) == pair
    assert not math.isnan(ex.reward)


# decode_X(data) with the orjson fast path, and decode_X as it was before it (json.loads only).
DECODERS = {
    "upload": (schema.decode_upload, schema.upload_from_dict),
    "watch": (schema.decode_watch, schema.watch_from_dict),
}


def _outcome(fn, data: bytes):
    try:
        return fn(data)
    except ValidationError as err:
        return (err.reason, err.message)


def assert_fast_decode_is_exact(kind: str, data: bytes) -> None:
    fast, from_dict = DECODERS[kind]
    assert _outcome(lambda d: fast(d, LIMITS), data) == _outcome(
        lambda d: from_dict(schema.parse_object(d, LIMITS), LIMITS), data
    )


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        ("upload", raw(upload())),
        ("upload", raw(upload(ts=10**25))),  # beyond 64 bits: orjson would read a float
        ("upload", raw(upload(schema=10**25))),
        ("upload", raw(upload(duration_s=10**25))),
        ("upload", raw(upload(embeddings={"text": [10**25, 0.2, 0.3], "visual": [1.0, 2.0]}))),
        (
            "upload",
            b'{"schema":1,"video_id":"v1","ts":1,"title":"t","duration_s":NaN,"embeddings":{}}',
        ),
        (
            "upload",
            raw(upload(embeddings={"text": [0.1, float("inf"), 0.3], "visual": [1.0, 2.0]})),
        ),
        ("upload", raw(upload(title="\ud800"))),  # lone surrogate: json reads it, orjson does not
        ("upload", json.dumps(upload()).encode("utf-16")),
        ("upload", b"\xef\xbb\xbf" + raw(upload())),
        ("upload", b'{"schema":1,"video_id":"\xff"}'),
        ("watch", raw(watch())),
        ("watch", raw(watch(ts=10**25))),
        ("watch", raw(watch(watch_time_s=10**25, video_duration_s=10**25))),  # valid either way
        ("watch", raw(watch(watch_time_s=2**64 + 1, video_duration_s=2**65))),
        ("watch", raw(watch(satisfaction=10**25))),
        ("watch", raw(watch(user_id="\ud800"))),
        (
            "watch",
            b'{"schema":1,"event_id":"e","user_id":"u","video_id":"v","ts":1,"watch_time_s":NaN}',
        ),
        ("watch", json.dumps(watch()).encode("utf-16")),
        ("watch", b"\xef\xbb\xbf" + raw(watch())),
        ("watch", b'{"schema":1,"user_id":"a","user_id":"b"}'),
    ],
)
def test_fast_decode_gives_exactly_what_json_loads_gives(kind, data):
    assert_fast_decode_is_exact(kind, data)


@pytest.mark.parametrize("kind", sorted(DECODERS))
@given(data=st.binary(max_size=200))
def test_fast_decode_matches_json_loads_on_any_bytes(kind, data):
    assert_fast_decode_is_exact(kind, data)


@given(
    watch_time=st.integers(0, 2**80) | st.floats(0, 1e30),
    extra=st.integers(0, 2**80),
)
def test_fast_watch_decode_reads_big_numbers_as_json_loads_does(watch_time, extra):
    data = raw(watch(watch_time_s=watch_time, video_duration_s=watch_time + extra + 1))
    assert_fast_decode_is_exact("watch", data)


@given(
    video_id=st.text(max_size=12),
    sid=st.lists(st.integers(0, 2**31), min_size=1, max_size=5),
    version=st.text(max_size=12),
    ts=st.integers(0, 2**62),
    upload_ts=st.integers(0, 2**62),
)
@example(video_id="v\x7f", sid=[1], version="s", ts=0, upload_ts=0)  # DEL: json escapes it
@example(video_id="v", sid=[1], version="\x1f", ts=0, upload_ts=0)
def test_the_fast_sid_assignment_encoding_is_byte_identical(video_id, sid, version, ts, upload_ts):
    a = schema.SidAssignment(
        video_id=video_id, sid=tuple(sid), sid_version=version, ts=ts, upload_ts=upload_ts
    )
    assert schema.encode_sid_assignment(a) == schema.encode(a)


# ---- the strict text rules the JVM operator shares (tests/vectors/flink/README.md)

BAD_TEXT = [
    b"\xef\xbb\xbf" + raw(watch()),  # a UTF-8 BOM
    json.dumps(watch()).encode("utf-16"),
    json.dumps(watch()).encode("utf-32"),
    json.dumps(watch()).encode("utf-16-le"),
    raw(watch()).replace(b'"u1"', b'"u\xed\xa0\x80"'),  # an encoded surrogate (CESU)
    raw(watch()).replace(b'"u1"', b'"u\xc0\xaf"'),  # an overlong encoding
    raw(watch(user_id="\ud800")),  # escaped lone surrogates, high and low
    raw(watch(surface="x\udc00")),
    raw(watch(extra={"\udbff": 1})),  # also in a key nobody reads
    raw(watch()).replace(b'"ts":', b'"x": ' + b"[" * 512 + b"]" * 512 + b', "ts":'),  # 513 deep
    raw(watch()).replace(b'"ts":', b'"x": ' + b"1" * 4301 + b', "ts":'),
]


@pytest.mark.parametrize("data", BAD_TEXT)
def test_text_that_is_not_strict_utf8_json_is_not_json(data):
    assert reason_of(schema.decode_watch, data) == schema.NOT_JSON
    assert reason_of(schema.decode_upload, data) == schema.NOT_JSON


def test_what_strict_json_still_reads():
    pair = raw(watch(user_id="u\U0001f600"))  # escaped as a surrogate pair: one code point
    assert schema.decode_watch(pair, LIMITS).user_id == "u\U0001f600"
    nested = raw(watch()).replace(b'"ts":', b'"x": ' + b"[" * 511 + b"]" * 511 + b', "ts":')
    assert schema.decode_watch(nested, LIMITS).user_id == "u1"  # 512 levels with the object
    digits = raw(watch()).replace(b'"ts":', b'"x": -' + b"1" * 4300 + b', "ts":')
    assert schema.decode_watch(digits, LIMITS).user_id == "u1"


def test_a_lone_surrogate_in_a_python_str_is_not_json_not_a_crash():
    assert reason_of(
        schema.decode_watch, json.dumps(watch(user_id="\ud800"), ensure_ascii=False)
    ) == (schema.NOT_JSON)


@pytest.mark.parametrize("depth", [600, 1024, 1025, 100_000])
def test_deep_nesting_is_not_json_whatever_the_parser_would_do(depth):
    data = raw(watch(schema=2)).replace(
        b'"ts":', b'"x": ' + b"[" * depth + b"]" * depth + b', "ts":'
    )
    assert reason_of(schema.decode_watch, data) == schema.NOT_JSON


# 2**1024 - 2**970 is the smallest integer that rounds to 2**1024 (infinity) as a double.
HUGE = 2**1024 - 2**970


@pytest.mark.parametrize("field", ["watch_time_s", "video_duration_s", "satisfaction"])
@pytest.mark.parametrize("value", [HUGE, -HUGE, 10**400])
def test_an_integer_too_large_for_a_double_is_wrong_type_like_infinity(field, value):
    assert reason_of(schema.decode_watch, raw(watch(**{field: value}))) == schema.WRONG_TYPE


def test_the_largest_integer_below_double_overflow_is_a_number():
    w = schema.decode_watch(raw(watch(watch_time_s=HUGE - 1, video_duration_s=HUGE - 1)), LIMITS)
    assert w.watch_time_s == w.video_duration_s == 1.7976931348623157e308


def test_an_upload_with_integers_too_large_for_a_double():
    assert reason_of(schema.decode_upload, raw(upload(duration_s=HUGE))) == schema.WRONG_TYPE
    emb = {"text": [0.1, -HUGE, 0.3], "visual": [1.0, 2.0]}
    assert reason_of(schema.decode_upload, raw(upload(embeddings=emb))) == schema.NAN_EMBEDDING


@pytest.mark.parametrize("ts", [NOW + 5 * 60 * 1000 + 1, 2**63, 10**400])
def test_a_future_timestamp_of_any_size_is_future_timestamp(ts):
    assert reason_of(schema.decode_watch, raw(watch(ts=ts))) == schema.FUTURE_TIMESTAMP


# ---- exact boundaries of the value checks


def test_future_limit_is_inclusive():
    assert schema.decode_watch(raw(watch(ts=NOW + schema.DEFAULT_MAX_FUTURE_MS)), LIMITS)
    assert reason_of(
        schema.decode_watch, raw(watch(ts=NOW + schema.DEFAULT_MAX_FUTURE_MS + 1))
    ) == (schema.FUTURE_TIMESTAMP)


def test_payload_limit_is_inclusive():
    exact = raw(watch())
    exact += b" " * (schema.DEFAULT_MAX_PAYLOAD_BYTES - len(exact))
    assert schema.decode_watch(exact, LIMITS)
    assert reason_of(schema.decode_watch, exact + b" ") == schema.OVERSIZED_PAYLOAD


@pytest.mark.parametrize("space", ["\u00a0", "\u2003", "\u0085", "\u001c", "\u3000", " \t"])
def test_python_whitespace_ids_are_empty(space):
    assert reason_of(schema.decode_watch, raw(watch(user_id=space))) == schema.EMPTY_ID


@pytest.mark.parametrize("invisible", ["\u200b", "\ufeff", "\u180e", "\u0000"])
def test_invisible_but_not_space_ids_are_ids(invisible):
    assert schema.decode_watch(raw(watch(user_id=invisible)), LIMITS).user_id == invisible


@pytest.mark.parametrize("version", [1, 1.0, True])
def test_schema_version_compares_as_python_equality(version):
    assert schema.decode_watch(raw(watch(schema=version)), LIMITS).user_id == "u1"
