"""Conformance vectors of the Flink job's per-record logic, written from the Python reference.

`python -m tests.vectors.flink_vectors` (re)writes tests/vectors/flink/records.jsonl.gz,
timelines.jsonl.gz and windows.jsonl.gz (format: tests/vectors/flink/README.md). Every expectation comes
from the reference: streams.contracts.schema (decode_watch, ValidationLimits(now_ms)),
streams.flink.timeline (accept, release_ready) and streams.flink.reward; the SFT example
object is built through the contract (schema.SftExample, schema.to_dict). The JVM
operator's JUnit tests and tests/unit/test_flink_vectors.py read the same files.

Generation is deterministic (one seeded random.Random per kind): regenerating writes the
same lines. The generated corpus follows property-based testing's habits (values drawn
near every boundary, valid records mutated one field or one byte at a time, several
spellings of the same JSON); the hand-written `edge/...` cases pin the exact boundaries.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from streams.contracts import schema
from streams.flink import timeline as ut
from streams.flink.reference import window_ends
from streams.flink.reward import RewardWeights

OUT_DIR = Path(__file__).resolve().parent / "flink"
RECORDS = "records.jsonl.gz"
TIMELINES = "timelines.jsonl.gz"
WINDOWS = "windows.jsonl.gz"

NOW_MS = 1_764_000_000_000
MAX_FUTURE = schema.DEFAULT_MAX_FUTURE_MS
LIMIT = schema.DEFAULT_MAX_PAYLOAD_BYTES
LONG_MAX = 2**63 - 1
HUGE = 2**1024 - 2**970  # the smallest integer that rounds to infinity as a double

N_RECORDS = 12_000
N_TIMELINES = 400
RECORD_SEED = 13
TIMELINE_SEED = 1313

# ---------------------------------------------------------------- deciding (the reference)


def decide(key: str, raw: bytes | None, now_ms: int) -> dict:
    """The expected decision on one record the job keyed by `key` (a null value is read
    as empty bytes, as the job does)."""
    try:
        w = schema.decode_watch(b"" if raw is None else raw, schema.ValidationLimits(now_ms=now_ms))
    except schema.ValidationError as err:
        return {"valid": False, "reason": err.reason}
    if w.user_id != key:
        return {"valid": False, "reason": schema.AMBIGUOUS_USER_ID}
    watch = schema.to_dict(w)
    del watch["schema"]
    return {"valid": True, "watch": watch}


def b64(raw: bytes | None) -> str | None:
    return None if raw is None else base64.b64encode(raw).decode("ascii")


def record_input(vid: str, key: str, raw: bytes | None, now_ms: int = NOW_MS) -> dict:
    return {"id": vid, "key": key, "raw_b64": b64(raw), "now_ms": now_ms}


def record_line(vid: str, key: str, raw: bytes | None, now_ms: int = NOW_MS) -> dict:
    return {**record_input(vid, key, raw, now_ms), "expect": decide(key, raw, now_ms)}


# A timeline step: ("record", key, raw) or ("watermark", ts).
Step = tuple


def run_timeline(p: ut.TimelineParams, steps: list[Step], now_ms: int = NOW_MS) -> list[list]:
    """The expected outputs of each step for one user's state (see the README)."""
    head, pending, history = ut.new_head(), [], []
    r_max = p.weights.max_reward()
    out: list[list] = []
    user_id = None  # the key every valid record of the sequence shares
    for step in steps:
        if step[0] == "record":
            _, key, raw = step
            d = decide(key, raw, now_ms)
            if not d["valid"]:
                out.append([{"dead": d["reason"]}])
                continue
            w = d["watch"]
            if user_id is not None and w["user_id"] != user_id:
                raise ValueError(f"one sequence, two users: {user_id!r}, {w['user_id']!r}")
            user_id = w["user_id"]
            ev = (
                w["ts"],
                w["event_id"],
                w["video_id"],
                w["watch_time_s"],
                w["video_duration_s"],
                w["clicked"],
                w["context_video_id"],
                w["satisfaction"],
            )
            if ut.accept(head, ev, p.allowed_lateness_ms):
                pending.append(ev)
                out.append([])
            else:
                out.append([{"dead": schema.LATE}])
            continue
        released, pending = ut.release_ready(head, pending, history, step[1], p, r_max)
        out.append([_released(ev, others, example, user_id) for ev, others, example in released])
    return out


def _released(ev: tuple, others: list[str], example, user_id: str) -> dict:
    obj = None
    if example is not None:
        r, hist = example
        obj = schema.to_dict(
            schema.SftExample(
                event_id=ev[ut.EVENT_ID],
                user_id=user_id,
                history=tuple(schema.HistoryItem(*h) for h in hist),
                context_video_id=ev[ut.CONTEXT],
                target_video_id=ev[ut.VIDEO_ID],
                reward=r,
                ts=ev[ut.TS],
            )
        )
    return {
        "released": {
            "event_id": ev[ut.EVENT_ID],
            "video_id": ev[ut.VIDEO_ID],
            "ts": ev[ut.TS],
            "others": list(others),
            "example": obj,
        }
    }


def timeline_input(vid: str, p: ut.TimelineParams, steps: list[Step]) -> dict:
    return {
        "id": vid,
        "params": p.as_dict(),
        "steps": [
            {"record": {"key": s[1], "raw_b64": b64(s[2]), "now_ms": NOW_MS}}
            if s[0] == "record"
            else {"watermark": s[1]}
            for s in steps
        ],
    }


def timeline_line(vid: str, p: ut.TimelineParams, steps: list[Step]) -> dict:
    return {**timeline_input(vid, p, steps), "expect": run_timeline(p, steps)}


# ---------------------------------------------------------------- writing JSON by hand

FIELDS = (
    "schema",
    "event_id",
    "user_id",
    "video_id",
    "ts",
    "watch_time_s",
    "video_duration_s",
    "clicked",
    "surface",
    "context_video_id",
    "satisfaction",
)


@dataclass(frozen=True)
class Lit:
    """A JSON literal written as is (NaN, 1e400, 5.0e0, an escape-heavy string...)."""

    text: str


def watch_obj(**over) -> dict:
    base = {
        "schema": 1,
        "event_id": "e1",
        "user_id": "u1",
        "video_id": "v1",
        "ts": NOW_MS - 60_000,
        "watch_time_s": 30.0,
        "video_duration_s": 60.0,
        "clicked": True,
        "surface": "home",
        "context_video_id": "v0",
        "satisfaction": 0.5,
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not DROP}


DROP = object()  # watch_obj(field=DROP): the field is absent


def dumps(value, rng: random.Random | None = None) -> str:
    """JSON text of `value`; with `rng`, in one of several equivalent spellings."""
    if isinstance(value, Lit):
        return value.text
    if isinstance(value, dict):
        items = list(value.items())
        sep = _ws(rng)
        return (
            "{"
            + sep
            + ("," + _ws(rng)).join(
                dumps(k, rng) + _ws(rng) + ":" + _ws(rng) + dumps(v, rng) for k, v in items
            )
            + _ws(rng)
            + "}"
        )
    if isinstance(value, list):
        return "[" + ("," + _ws(rng)).join(dumps(v, rng) for v in value) + "]"
    if isinstance(value, str):
        return _string(value, rng)
    if value is True or value is False or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        if rng is not None and abs(value) < 10**15 and rng.random() < 0.05:
            return rng.choice([f"{value}", f"{value}e0", f"{value}.0", f"{value}0e-1"])
        return str(value)
    if isinstance(value, float):
        text = json.dumps(value)  # NaN / Infinity literals as Python writes them
        if rng is not None and rng.random() < 0.1 and value == value and abs(value) != float("inf"):
            text = rng.choice([text, text.upper(), f"{value:.17e}", f"{value:.17E}"])
        return text
    raise TypeError(type(value))


def _ws(rng: random.Random | None) -> str:
    if rng is None or rng.random() < 0.8:
        return ""
    return "".join(rng.choice(" \t\n\r") for _ in range(rng.randint(1, 3)))


def _string(s: str, rng: random.Random | None) -> str:
    if rng is None:
        return json.dumps(s, ensure_ascii=False)
    mode = rng.random()
    if mode < 0.5:
        return json.dumps(s, ensure_ascii=mode < 0.25)
    # every character in one of its spellings: itself, \uXXXX (pairs above U+FFFF), \/
    out = ['"']
    for c in s:
        if c in '"\\' or c < " ":
            out.append(json.dumps(c)[1:-1])
        elif rng.random() < 0.3:
            cp = ord(c)
            if cp > 0xFFFF:
                cp -= 0x10000
                out.append(f"\\u{0xD800 + (cp >> 10):04x}\\u{0xDC00 + (cp & 0x3FF):04X}")
            else:
                out.append(f"\\u{cp:04x}" if rng.random() < 0.5 else f"\\u{cp:04X}")
        elif c == "/" and rng.random() < 0.5:
            out.append("\\/")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def enc(obj, rng: random.Random | None = None, lead: str = "", trail: str = "") -> bytes:
    return (lead + dumps(obj, rng) + trail).encode("utf-8", "surrogatepass")


# ---------------------------------------------------------------- hand-written records

PY_SPACES = [
    "\u00a0",
    "\u2003",
    "\u0085",
    "\u001c",
    "\u001d",
    "\u001e",
    "\u001f",
    "\u3000",
    "\u2028",
    "\u2029",
    "\u000b",
    "\u000c",
    " \t\n\r",
    "\u1680",
    "\u202f",
    "\u205f",
]
NOT_SPACES = ["\u200b", "\ufeff", "\u180e", "\u2060", "\u0000", "\u00ad", "\u200d"]


def padded(obj: dict, size: int, inside: bool = False) -> bytes:
    """`obj` as exactly `size` bytes: whitespace after it, or a longer surface string."""
    text = enc(obj)
    if inside:
        obj = dict(obj, surface=obj["surface"] + "x" * (size - len(text)))
        return enc(obj)
    return text + b" " * (size - len(text))


def edge_records() -> Iterator[tuple[str, str, bytes | None, str | None]]:
    """(id, key, raw, the reason or None = valid that the id promises)."""
    w = watch_obj
    E = schema
    ok = enc(w())
    yield "edge/valid_plain", "u1", ok, None
    yield "edge/valid_python_json_dumps", "u1", json.dumps(w()).encode(), None
    yield "edge/valid_whitespace_around", "u1", b" \t\r\n" + ok + b"\n\r\t ", None
    yield "edge/valid_no_optionals", "u1", enc(w(context_video_id=DROP, satisfaction=DROP)), None
    yield "edge/valid_null_optionals", "u1", enc(w(context_video_id=None, satisfaction=None)), None
    yield "edge/valid_schema_absent", "u1", enc(w(schema=DROP)), None
    yield "edge/valid_schema_1.0", "u1", enc(w(schema=1.0)), None
    yield "edge/valid_schema_true", "u1", enc(w(schema=True)), None
    yield "edge/valid_schema_1e0", "u1", enc(w(schema=Lit("1e0"))), None
    yield "edge/valid_int_seconds", "u1", enc(w(watch_time_s=30, video_duration_s=60)), None
    yield (
        "edge/valid_exponent_numbers",
        "u1",
        enc(w(watch_time_s=Lit("3E1"), video_duration_s=Lit("0.6e+2"))),
        None,
    )
    yield (
        "edge/valid_negative_zero_watch",
        "u1",
        enc(w(watch_time_s=-0.0, satisfaction=Lit("-0.0"))),
        None,
    )
    yield "edge/valid_negative_zero_int", "u1", enc(w(watch_time_s=Lit("-0"))), None
    yield (
        "edge/valid_denormal",
        "u1",
        enc(w(watch_time_s=5e-324, video_duration_s=Lit("4.9e-324"))),
        None,
    )
    yield (
        "edge/valid_max_double",
        "u1",
        enc(w(watch_time_s=HUGE - 1, video_duration_s=1.7976931348623157e308)),
        None,
    )
    yield (
        "edge/valid_big_int_seconds",
        "u1",
        enc(w(watch_time_s=2**64 + 1, video_duration_s=2**65)),
        None,
    )
    yield (
        "edge/valid_many_digits",
        "u1",
        enc(w(watch_time_s=Lit("30.000000000000000000000000001"))),
        None,
    )
    yield "edge/valid_ts_zero", "u1", enc(w(ts=0)), None
    yield "edge/valid_ts_exactly_now_plus_max_future", "u1", enc(w(ts=NOW_MS + MAX_FUTURE)), None
    yield (
        "edge/valid_watch_exactly_1.5x",
        "u1",
        enc(w(watch_time_s=90.0, video_duration_s=60.0)),
        None,
    )
    yield (
        "edge/valid_watch_1.5x_rounding",
        "u1",
        enc(w(watch_time_s=0.30000000000000004, video_duration_s=0.2)),
        None,
    )
    yield "edge/valid_satisfaction_0", "u1", enc(w(satisfaction=0)), None
    yield "edge/valid_satisfaction_1", "u1", enc(w(satisfaction=1)), None
    yield "edge/valid_satisfaction_1.0", "u1", enc(w(satisfaction=1.0)), None
    yield "edge/valid_watch_time_zero", "u1", enc(w(watch_time_s=0)), None
    yield "edge/valid_unclicked", "u1", enc(w(clicked=False)), None
    yield "edge/valid_duplicate_key_last_wins", "u1", b'{"user_id":"u9",' + ok[1:], None
    yield "edge/valid_duplicate_ts_last_wins", "u1", ok[:-1] + b',"ts":5}', None
    yield (
        "edge/valid_unknown_fields",
        "u1",
        enc(w(extra={"a": [1, {"b": None}], "c": Lit("NaN")})),
        None,
    )
    yield "edge/valid_surface_empty", "u1", enc(w(surface="")), None
    yield "edge/valid_surface_spaces", "u1", enc(w(surface="  ")), None
    yield "edge/valid_id_with_spaces_around", " u1 ", enc(w(user_id=" u1 ")), None
    yield (
        "edge/valid_supplementary_raw",
        "u\U0001f600",
        enc(w(user_id="u\U0001f600", event_id="\U0010ffff", video_id="\U0001d400")),
        None,
    )
    yield (
        "edge/valid_supplementary_escaped",
        "u\U0001f600",
        enc(w(user_id=Lit('"u\\ud83d\\ude00"'))),
        None,
    )
    yield "edge/valid_escapes", 'u"\\/\n', enc(w(user_id=Lit('"u\\"\\\\\\/\\n"'))), None
    yield "edge/valid_nul_in_id", "u\u0000", enc(w(user_id="u\u0000")), None
    yield "edge/valid_noncharacter", "\uffff", enc(w(user_id="\uffff")), None
    yield "edge/valid_depth_512", "u1", ok[:-1] + b',"x":' + b"[" * 511 + b"]" * 511 + b"}", None
    yield "edge/valid_int_4300_digits", "u1", ok[:-1] + b',"x":-' + b"9" * 4300 + b"}", None
    yield "edge/valid_size_exactly_limit", "u1", padded(w(), LIMIT), None
    yield "edge/valid_size_exactly_limit_inside", "u1", padded(w(), LIMIT, inside=True), None
    for c in NOT_SPACES:
        yield f"edge/valid_id_not_python_space_{ord(c):04x}", c, enc(w(user_id=c)), None
    for i, c in enumerate(PY_SPACES):
        yield f"edge/empty_id_python_space_{i:02d}", c, enc(w(user_id=c)), E.EMPTY_ID
        yield f"edge/empty_id_python_space_event_{i:02d}", "u1", enc(w(event_id=c + c)), E.EMPTY_ID
    yield "edge/empty_id_empty_string", "", enc(w(user_id="")), E.EMPTY_ID
    yield "edge/empty_id_video", "u1", enc(w(video_id="")), E.EMPTY_ID

    yield "edge/oversized_one_byte_over", "u1", padded(w(), LIMIT + 1), E.OVERSIZED_PAYLOAD
    yield (
        "edge/oversized_one_byte_over_inside",
        "u1",
        padded(w(), LIMIT + 1, inside=True),
        E.OVERSIZED_PAYLOAD,
    )
    yield "edge/oversized_not_json", "", b"\xff" * (LIMIT + 1), E.OVERSIZED_PAYLOAD
    yield "edge/not_json_exactly_limit", "", b"\xff" * LIMIT, E.NOT_JSON

    yield "edge/not_json_null_value", "", None, E.NOT_JSON
    yield "edge/not_json_empty", "", b"", E.NOT_JSON
    yield "edge/not_json_whitespace", "", b" \n", E.NOT_JSON
    yield "edge/not_json_truncated", "", ok[:-1], E.NOT_JSON
    yield "edge/not_json_truncated_half", "", ok[: len(ok) // 2], E.NOT_JSON
    yield "edge/not_json_trailing_garbage", "u1", ok + b"x", E.NOT_JSON
    yield "edge/not_json_two_objects", "u1", ok + ok, E.NOT_JSON
    yield "edge/not_json_trailing_formfeed", "u1", ok + b"\x0c", E.NOT_JSON
    yield "edge/not_json_trailing_nbsp", "u1", ok + "\u00a0".encode(), E.NOT_JSON
    yield "edge/not_json_invalid_utf8", "", ok.replace(b'"u1"', b'"u\xff"'), E.NOT_JSON
    yield (
        "edge/not_json_latin1",
        "",
        enc(w(surface="caf")).replace(b'"caf"', b'"caf\xe9"'),
        E.NOT_JSON,
    )
    yield "edge/not_json_overlong_utf8", "", ok.replace(b'"u1"', b'"u\xc0\xaf"'), E.NOT_JSON
    yield "edge/not_json_encoded_surrogate", "", ok.replace(b'"u1"', b'"u\xed\xa0\x80"'), E.NOT_JSON
    yield (
        "edge/not_json_beyond_u10ffff",
        "",
        ok.replace(b'"u1"', b'"u\xf4\x90\x80\x80"'),
        E.NOT_JSON,
    )
    yield "edge/not_json_bom", "u1", b"\xef\xbb\xbf" + ok, E.NOT_JSON
    yield "edge/not_json_utf16", "u1", json.dumps(w()).encode("utf-16"), E.NOT_JSON
    yield "edge/not_json_utf16le", "u1", json.dumps(w()).encode("utf-16-le"), E.NOT_JSON
    yield "edge/not_json_utf16be", "u1", json.dumps(w()).encode("utf-16-be"), E.NOT_JSON
    yield "edge/not_json_utf32", "u1", json.dumps(w()).encode("utf-32"), E.NOT_JSON
    yield (
        "edge/not_json_lone_high_surrogate_escape",
        "",
        enc(w(user_id=Lit('"u\\ud800"'))),
        E.NOT_JSON,
    )
    yield (
        "edge/not_json_lone_low_surrogate_escape",
        "",
        enc(w(user_id=Lit('"u\\udc00"'))),
        E.NOT_JSON,
    )
    yield (
        "edge/not_json_reversed_surrogate_pair",
        "",
        enc(w(surface=Lit('"\\ude00\\ud83d"'))),
        E.NOT_JSON,
    )
    yield (
        "edge/not_json_lone_surrogate_in_unread_key",
        "u1",
        enc(w(extra={Lit('"\\udbff"'): 1})),
        E.NOT_JSON,
    )
    yield (
        "edge/not_json_lone_surrogate_in_nested",
        "u1",
        enc(w(extra=[[Lit('"\\ud800x"')]])),
        E.NOT_JSON,
    )
    yield (
        "edge/not_json_depth_513",
        "u1",
        ok[:-1] + b',"x":' + b"[" * 512 + b"]" * 512 + b"}",
        E.NOT_JSON,
    )
    yield (
        "edge/not_json_depth_1025_invalid_schema",
        "u1",
        enc(w(schema=2))[:-1] + b',"x":' + b"[" * 1025 + b"]" * 1025 + b"}",
        E.NOT_JSON,
    )
    yield "edge/not_json_int_4301_digits", "u1", ok[:-1] + b',"x":' + b"9" * 4301 + b"}", E.NOT_JSON
    yield "edge/not_json_single_quotes", "", b"{'schema': 1}", E.NOT_JSON
    yield "edge/not_json_trailing_comma", "u1", ok[:-1] + b",}", E.NOT_JSON
    yield "edge/not_json_leading_zero", "u1", enc(w(ts=Lit("0" + str(NOW_MS)))), E.NOT_JSON
    yield "edge/not_json_plus_sign", "u1", enc(w(watch_time_s=Lit("+30"))), E.NOT_JSON
    yield "edge/not_json_hex", "u1", enc(w(watch_time_s=Lit("0x1e"))), E.NOT_JSON
    yield "edge/not_json_dot_only", "u1", enc(w(watch_time_s=Lit("30."))), E.NOT_JSON
    yield "edge/not_json_nan_lowercase", "u1", enc(w(watch_time_s=Lit("nan"))), E.NOT_JSON
    yield "edge/not_json_raw_control_char", "", enc(w(surface=Lit('"a\tb"'))), E.NOT_JSON
    yield "edge/not_json_bad_escape", "", enc(w(surface=Lit('"a\\x41"'))), E.NOT_JSON
    yield "edge/not_json_comment", "u1", b"/*c*/" + ok, E.NOT_JSON
    yield "edge/not_json_nul_byte_after", "u1", ok + b"\x00", E.NOT_JSON

    yield "edge/not_object_array", "", b"[1, 2]", E.NOT_OBJECT
    yield "edge/not_object_null", "", b"null", E.NOT_OBJECT
    yield "edge/not_object_string", "", b'"u1"', E.NOT_OBJECT
    yield "edge/not_object_number", "", b"1", E.NOT_OBJECT
    yield "edge/not_object_true", "", b"true", E.NOT_OBJECT
    yield "edge/not_object_nan", "", b"NaN", E.NOT_OBJECT
    yield "edge/not_object_array_of_watch", "", b"[" + ok + b"]", E.NOT_OBJECT

    for name, v in [
        ("2", 2),
        ("0", 0),
        ("1.5", 1.5),
        ("string_1", "1"),
        ("null", None),
        ("false", False),
        ("nan", Lit("NaN")),
        ("list", [1]),
        ("obj", {}),
        ("1.0000000000000002", 1.0000000000000002),
        ("huge", HUGE),
        ("-1", -1),
    ]:
        yield f"edge/unknown_schema_{name}", "u1", enc(w(schema=v)), E.UNKNOWN_SCHEMA
    yield "edge/unknown_schema_before_missing", "", b'{"schema":2}', E.UNKNOWN_SCHEMA

    yield "edge/missing_everything", "", b"{}", E.MISSING_FIELD
    for f in FIELDS:
        if f in ("schema", "context_video_id", "satisfaction"):
            continue
        yield f"edge/missing_field_{f}", "u1", enc(w(**{f: DROP})), E.MISSING_FIELD
        yield f"edge/missing_field_null_{f}", "u1", enc(w(**{f: None})), E.MISSING_FIELD

    bad = {
        "event_id": [5, True, ["e"], {"a": 1}, 1.5],
        "user_id": [5, False, [], {}],
        "video_id": [0, 1e3],
        "ts": [
            "5",
            1.0,
            1.5,
            1e3,
            Lit("1E3"),
            True,
            False,
            Lit("NaN"),
            Lit("Infinity"),
            Lit("1e400"),
            [1],
            -1,
            -(2**63),
            -HUGE,
            Lit(f"{NOW_MS}.0"),
        ],
        "watch_time_s": [
            True,
            False,
            "30",
            Lit("NaN"),
            Lit("Infinity"),
            Lit("-Infinity"),
            Lit("1e400"),
            Lit("-1e400"),
            HUGE,
            -HUGE,
            10**400,
            [30],
            {},
        ],
        "video_duration_s": [True, "60", Lit("NaN"), Lit("Infinity"), Lit("1e309"), HUGE, 10**400],
        "clicked": [1, 0, "true", 1.0, Lit("NaN"), []],
        "surface": [1, True, ["home"], {}],
        "context_video_id": [1, False, ["v"], {}],
        "satisfaction": [
            True,
            False,
            "0.5",
            Lit("NaN"),
            Lit("Infinity"),
            Lit("-Infinity"),
            HUGE,
            -HUGE,
            10**400,
            [0.5],
        ],
    }
    for f, values in bad.items():
        for i, v in enumerate(values):
            yield f"edge/wrong_type_{f}_{i:02d}", "u1", enc(w(**{f: v})), E.WRONG_TYPE

    yield "edge/negative_watch_time", "u1", enc(w(watch_time_s=-1.0)), E.NEGATIVE_DURATION
    yield "edge/negative_watch_time_tiny", "u1", enc(w(watch_time_s=-5e-324)), E.NEGATIVE_DURATION
    yield "edge/negative_duration", "u1", enc(w(video_duration_s=-60.0)), E.NEGATIVE_DURATION
    yield "edge/zero_duration", "u1", enc(w(video_duration_s=0)), E.NEGATIVE_DURATION
    yield "edge/negative_zero_duration", "u1", enc(w(video_duration_s=-0.0)), E.NEGATIVE_DURATION
    yield "edge/negative_big_int_watch", "u1", enc(w(watch_time_s=-(2**70))), E.NEGATIVE_DURATION

    yield (
        "edge/watch_time_just_above_1.5x",
        "u1",
        enc(w(watch_time_s=90.00000000000001, video_duration_s=60.0)),
        E.WATCH_TIME_EXCEEDS_DURATION,
    )
    yield (
        "edge/watch_time_1.5x_plus_1",
        "u1",
        enc(w(watch_time_s=91, video_duration_s=60)),
        E.WATCH_TIME_EXCEEDS_DURATION,
    )
    yield (
        "edge/watch_time_max_double_over_small",
        "u1",
        enc(w(watch_time_s=1.7976931348623157e308, video_duration_s=1e308)),
        E.WATCH_TIME_EXCEEDS_DURATION,
    )

    yield "edge/future_one_ms_over", "u1", enc(w(ts=NOW_MS + MAX_FUTURE + 1)), E.FUTURE_TIMESTAMP
    yield "edge/future_long_max", "u1", enc(w(ts=LONG_MAX)), E.FUTURE_TIMESTAMP
    yield "edge/future_beyond_long", "u1", enc(w(ts=2**64)), E.FUTURE_TIMESTAMP
    yield "edge/future_huge_int", "u1", enc(w(ts=10**400)), E.FUTURE_TIMESTAMP

    yield (
        "edge/satisfaction_just_above_1",
        "u1",
        enc(w(satisfaction=1.0000000000000002)),
        E.BAD_SATISFACTION,
    )
    yield "edge/satisfaction_just_below_0", "u1", enc(w(satisfaction=-5e-324)), E.BAD_SATISFACTION
    yield "edge/satisfaction_2", "u1", enc(w(satisfaction=2)), E.BAD_SATISFACTION
    yield "edge/satisfaction_minus_1", "u1", enc(w(satisfaction=-1)), E.BAD_SATISFACTION
    yield "edge/satisfaction_finite_huge_int", "u1", enc(w(satisfaction=10**30)), E.BAD_SATISFACTION

    yield "edge/ambiguous_key_differs", "u2", ok, E.AMBIGUOUS_USER_ID
    yield "edge/ambiguous_key_empty", "", ok, E.AMBIGUOUS_USER_ID
    yield (
        "edge/ambiguous_duplicate_first_value",
        "u9",
        b'{"user_id":"u9",' + ok[1:],
        E.AMBIGUOUS_USER_ID,
    )
    yield "edge/ambiguous_key_stripped", "u1", enc(w(user_id=" u1")), E.AMBIGUOUS_USER_ID
    yield (
        "edge/ambiguous_key_utf16_vs_codepoint",
        "u\ud83d",
        enc(w(user_id="u\U0001f600")),
        E.AMBIGUOUS_USER_ID,
    )

    # the order of the checks: the first failing check decides
    yield "edge/order_oversized_before_not_json", "", b"{" * (LIMIT + 1), E.OVERSIZED_PAYLOAD
    yield "edge/order_schema_before_fields", "u1", enc(w(schema=3, ts="x")), E.UNKNOWN_SCHEMA
    yield (
        "edge/order_missing_before_wrong_type",
        "u1",
        enc(w(event_id=DROP, ts="x")),
        E.MISSING_FIELD,
    )
    yield (
        "edge/order_event_id_type_before_missing_user",
        "u1",
        enc(w(event_id=1, user_id=DROP)),
        E.WRONG_TYPE,
    )
    yield (
        "edge/order_empty_event_before_missing_user",
        "u1",
        enc(w(event_id=" ", user_id=DROP)),
        E.EMPTY_ID,
    )
    yield (
        "edge/order_wrong_type_before_negative",
        "u1",
        enc(w(watch_time_s=-1.0, clicked="x")),
        E.WRONG_TYPE,
    )
    yield (
        "edge/order_future_before_wrong_type",
        "u1",
        enc(w(ts=NOW_MS + MAX_FUTURE + 1, watch_time_s="x")),
        E.FUTURE_TIMESTAMP,
    )
    yield (
        "edge/order_satisfaction_type_before_negative",
        "u1",
        enc(w(watch_time_s=-1.0, satisfaction="x")),
        E.WRONG_TYPE,
    )
    yield (
        "edge/order_negative_before_exceeds",
        "u1",
        enc(w(watch_time_s=100.0, video_duration_s=-1.0)),
        E.NEGATIVE_DURATION,
    )
    yield (
        "edge/order_exceeds_before_satisfaction",
        "u1",
        enc(w(watch_time_s=100.0, video_duration_s=1.0, satisfaction=7)),
        E.WATCH_TIME_EXCEEDS_DURATION,
    )
    yield "edge/order_schema_not_checked_after_json", "", b'{"schema":1', E.NOT_JSON
    yield "edge/order_negative_ts_wrong_type_before_future", "u1", enc(w(ts=-1)), E.WRONG_TYPE
    yield "edge/order_invalid_before_ambiguous", "u2", enc(w(surface=1)), E.WRONG_TYPE


# ---------------------------------------------------------------- generated records

ID_CHARS = (
    "abcdefghijklmnopqrstuvwxyz0123456789-_:/."
    + "éüßñ中文日本語ÅΩж"
    + '"\\'
    + "\U0001f600\U0001d400\U00010000\U0010fffd\uffff\ue000"
)


def gen_id(rng: random.Random, prefix: str) -> str:
    r = rng.random()
    if r < 0.55:
        return f"{prefix}{rng.randrange(10 ** rng.randint(1, 6))}"
    if r < 0.85:
        return "".join(rng.choice(ID_CHARS) for _ in range(rng.randint(1, 8)))
    if r < 0.88:  # whitespace-only in Python's sense: empty_id
        return "".join(rng.choice(PY_SPACES) for _ in range(rng.randint(0, 3)))
    if r < 0.97:  # invisible but not space: a valid id
        return rng.choice(NOT_SPACES) * rng.randint(1, 2)
    return rng.choice(PY_SPACES) + f"{prefix}{rng.randrange(100)}" + rng.choice(PY_SPACES)


def gen_ts(rng: random.Random):
    r = rng.random()
    if r < 0.7:
        return NOW_MS - rng.randrange(10 * 86_400_000)
    return rng.choice(
        [
            0,
            1,
            NOW_MS,
            NOW_MS + MAX_FUTURE,
            NOW_MS + MAX_FUTURE + 1,
            NOW_MS + MAX_FUTURE - 1,
            NOW_MS + rng.randrange(2 * MAX_FUTURE),
            -1,
            -rng.randrange(1, 10**6),
            LONG_MAX,
            2**63,
            2**64 + 5,
            10 ** rng.randint(19, 40),
            rng.randrange(NOW_MS),
        ]
    )


def gen_seconds(rng: random.Random, scale: float):
    r = rng.random()
    if r < 0.6:
        return round(rng.uniform(0, scale), rng.randint(0, 6))
    if r < 0.75:
        return rng.randrange(int(scale) + 1)
    return rng.choice(
        [
            0,
            0.0,
            -0.0,
            5e-324,
            1e-7,
            1.7976931348623157e308,
            2**53 + 1,
            2**64,
            -1,
            -0.5,
            rng.uniform(-scale, 0),
            scale * 1e6,
        ]
    )


def gen_watch(rng: random.Random) -> dict:
    dur = rng.choice([gen_seconds(rng, 3600.0), round(rng.uniform(1, 600), 3)])
    r = rng.random()
    if isinstance(dur, (int, float)) and dur > 0 and r < 0.6:
        watch = round(rng.uniform(0, 1.5 * float(dur)), rng.randint(0, 4))
    elif isinstance(dur, (int, float)) and dur > 0 and r < 0.7:
        watch = rng.choice([1.5 * dur, dur * 1.5 + 1e-9, float(dur) * 1.5000000000000002, dur])
    else:
        watch = gen_seconds(rng, 3600.0)
    obj = {
        "schema": 1,
        "event_id": gen_id(rng, "e"),
        "user_id": gen_id(rng, "u"),
        "video_id": gen_id(rng, "v"),
        "ts": gen_ts(rng),
        "watch_time_s": watch,
        "video_duration_s": dur,
        "clicked": rng.random() < 0.6,
        "surface": rng.choice(["home", "search", "", "related", "🏠", "a/b"]),
    }
    if rng.random() < 0.6:
        obj["context_video_id"] = rng.choice([None, gen_id(rng, "v")])
    if rng.random() < 0.6:
        obj["satisfaction"] = rng.choice(
            [
                None,
                round(rng.random(), 3),
                0,
                1,
                0.0,
                1.0,
                1.0000000000000002,
                -5e-324,
                1.5,
                -0.1,
                rng.uniform(-1, 2),
            ]
        )
    return obj


WRONG_VALUES: list = [
    True,
    False,
    None,
    "x",
    "",
    "1",
    [],
    [1],
    {},
    {"a": 1},
    1.5,
    0,
    -1,
    Lit("NaN"),
    Lit("Infinity"),
    Lit("-Infinity"),
    Lit("1e400"),
    Lit("-1e400"),
    HUGE,
    10**400,
    2**64,
]


def mutate(rng: random.Random, obj: dict) -> dict:
    obj = dict(obj)
    kind = rng.random()
    field = rng.choice(FIELDS)
    if kind < 0.3:
        obj.pop(field, None)
    elif kind < 0.45:
        obj[field] = None
    elif kind < 0.85:
        obj[field] = rng.choice(WRONG_VALUES)
    else:
        obj[rng.choice(["extra", "x", "schema_v", "user"])] = rng.choice(WRONG_VALUES + [[[[1]]]])
    return obj


def shuffled(rng: random.Random, obj: dict) -> dict:
    items = list(obj.items())
    if rng.random() < 0.3:
        rng.shuffle(items)
    return dict(items)


def with_duplicate(rng: random.Random, text: bytes, obj: dict) -> bytes:
    """Prepend a duplicate of one key with another value (the last one, the original, wins)."""
    field = rng.choice(list(obj) or ["user_id"])
    dup = dumps({field: rng.choice(["u-first", 7, None, Lit("NaN"), "", "e0"])})
    return dup[:-1].encode() + b"," + text[1:] if text.startswith(b"{") and text != b"{}" else text


def corrupt(rng: random.Random, text: bytes) -> bytes | None:
    r = rng.random()
    if r < 0.25 and text:
        return text[: rng.randrange(len(text))]
    if r < 0.4 and text:
        i = rng.randrange(len(text))
        return (
            text[:i]
            + bytes([rng.choice([0x80, 0xBF, 0xC0, 0xC1, 0xF5, 0xFF, 0xED, 0xE0, 0xF0])])
            + text[i:]
        )
    if r < 0.5:
        return b"\xef\xbb\xbf" + text
    if r < 0.6:
        return text.decode("utf-8", "surrogatepass").encode(
            rng.choice(["utf-16", "utf-16-le", "utf-16-be", "utf-32"]), "surrogatepass"
        )
    if r < 0.65:
        return None
    if r < 0.7:
        return rng.choice([b"", b" ", b"\n", b"{", b"}", b"nul", b"tru", b'"', b"[", b"{}", b"[]"])
    if r < 0.8 and text:
        i = rng.randrange(len(text))
        return (
            text[:i]
            + rng.choice([b"\x00", b"\x1f", b",", b"}", b"]", b":", b'"', b"\\", b"\x7f"])
            + text[i:]
        )
    if r < 0.9:
        return (
            rng.choice([b"[", b'"', b"1", b"null", b"true", b"NaN", b"-0", b"1e400"])
            + (text if rng.random() < 0.5 else b"")
            + (b"]" if rng.random() < 0.3 else b"")
        )
    return bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))


def key_for(rng: random.Random, obj: dict) -> str:
    """The key the job would give the record (its user_id string), sometimes another one
    (a JVM reading that disagrees: ambiguous_user_id when the record is otherwise valid)."""
    uid = obj.get("user_id")
    key = uid if isinstance(uid, str) else ""
    if rng.random() < 0.04:
        key = rng.choice(["", key + "x", key.strip(), "u-first", key[:-1], key.upper()])
    return key


def generated_records(
    n: int = N_RECORDS, seed: int = RECORD_SEED
) -> Iterator[tuple[str, bytes | None]]:
    rng = random.Random(seed)
    for i in range(n):
        obj = gen_watch(rng)
        r = rng.random()
        if r < 0.35:
            for _ in range(rng.choice([1, 1, 1, 2])):
                obj = mutate(rng, obj)
        obj = shuffled(rng, obj)
        lead = trail = ""
        if rng.random() < 0.1:
            lead = "".join(rng.choice(" \t\n\r") for _ in range(rng.randint(1, 3)))
            trail = "".join(rng.choice(" \t\n\r") for _ in range(rng.randint(0, 3)))
        text = enc(obj, rng, lead, trail)
        if rng.random() < 0.05:
            text = with_duplicate(rng, text, obj)
        key = key_for(rng, obj)
        raw: bytes | None = text
        if rng.random() < 0.12:
            raw = corrupt(rng, text)
        if i % 1000 == 999:  # a few at the payload limit: whitespace-padded, this size or one more
            raw = text + b" " * (LIMIT - len(text) + rng.randint(0, 1))
        yield key, raw


# ---------------------------------------------------------------- timelines


def watch_raw(
    eid: str,
    ts: int,
    video: str = "v1",
    user: str = "u1",
    clicked: bool = True,
    watch: float = 60.0,
    dur: float = 60.0,
    sat: float | None = 1.0,
    ctx: str | None = None,
) -> bytes:
    obj = {
        "schema": 1,
        "event_id": eid,
        "user_id": user,
        "video_id": video,
        "ts": ts,
        "watch_time_s": watch,
        "video_duration_s": dur,
        "clicked": clicked,
        "surface": "home",
        "context_video_id": ctx,
    }
    if sat is not None:
        obj["satisfaction"] = sat
    return json.dumps(obj).encode()


def R(eid: str, ts: int, video: str = "v1", key: str = "u1", **kw) -> Step:
    return ("record", key, watch_raw(eid, ts, video, user=kw.pop("user", key), **kw))


def WM(ts: int) -> Step:
    return ("watermark", ts)


T0 = NOW_MS - 86_400_000
ALL = WM(LONG_MAX)


def tparams(**kw) -> ut.TimelineParams:
    w = kw.pop("weights", RewardWeights())
    base = dict(
        allowed_lateness_ms=1000,
        session_gap_ms=10_000,
        history_len=3,
        pair_prev_k=2,
        sample_salt="",
    )
    base.update(kw)
    return ut.TimelineParams(weights=w, **base)


def edge_timelines() -> Iterator[tuple[str, ut.TimelineParams, list[Step], Callable[[list], bool]]]:
    """(id, params, steps, a check that the expectation shows what the id promises)."""

    def dead(out, i):
        return out[i] == [{"dead": schema.LATE}]

    def acc(out, i):
        return out[i] == []

    def rel(out, i):
        return [r["released"]["event_id"] for r in out[i]]

    def others(out, i):
        return {r["released"]["event_id"]: r["released"]["others"] for r in out[i]}

    def ex(out, i):
        return {r["released"]["event_id"]: r["released"]["example"] for r in out[i]}

    p = tparams()
    yield (
        "edge/lateness_exactly_allowed_behind",
        p,
        [R("a", T0 + 10_000), R("b", T0 + 9_000), R("c", T0 + 8_999), ALL],
        lambda o: acc(o, 1) and dead(o, 2) and rel(o, 3) == ["b", "a"],
    )
    yield (
        "edge/lateness_zero",
        tparams(allowed_lateness_ms=0),
        [R("a", T0 + 10), R("b", T0 + 10), R("c", T0 + 9), ALL],
        lambda o: acc(o, 1) and dead(o, 2),
    )
    yield (
        "edge/lateness_measured_from_max_not_last",
        p,
        [R("a", T0 + 10_000), R("b", T0 + 9_500), R("c", T0 + 9_000), R("d", T0 + 8_999), ALL],
        lambda o: acc(o, 2) and dead(o, 3),
    )
    yield (
        "edge/ts_equal_released_max_is_late",
        p,
        [
            R("a", T0 + 1000),
            WM(T0 + 1000),
            R("b", T0 + 1000),
            R("c", T0 + 999),
            R("d", T0 + 1001),
            ALL,
        ],
        lambda o: rel(o, 1) == ["a"] and dead(o, 2) and dead(o, 3) and acc(o, 4),
    )
    yield (
        "edge/late_record_does_not_move_max",
        p,
        [R("a", T0 + 10_000), R("b", T0 + 5_000), R("c", T0 + 9_000), ALL],
        lambda o: dead(o, 1) and acc(o, 2),
    )
    yield (
        "edge/session_gap_exact_and_plus_one",
        tparams(session_gap_ms=1000, pair_prev_k=3, allowed_lateness_ms=10_000),
        [
            R("a", T0, "v1"),
            R("b", T0 + 1000, "v2"),
            R("c", T0 + 2001, "v3"),
            R("d", T0 + 3001, "v4"),
            ALL,
        ],
        lambda o: others(o, 4) == {"a": [], "b": ["v1"], "c": [], "d": ["v3"]},
    )
    yield (
        "edge/session_gap_across_watermarks",
        tparams(session_gap_ms=1000, pair_prev_k=3),
        [
            R("a", T0, "v1"),
            WM(T0),
            R("b", T0 + 1000, "v2"),
            WM(T0 + 1000),
            R("c", T0 + 2001, "v3"),
            ALL,
        ],
        lambda o: others(o, 3) == {"b": ["v1"]} and others(o, 5) == {"c": []},
    )
    yield (
        "edge/equal_ts_ordered_by_event_id",
        tparams(pair_prev_k=5),
        [R("c", T0, "v3"), R("a", T0, "v1"), R("b", T0, "v2"), ALL],
        lambda o: rel(o, 3) == ["a", "b", "c"],
    )
    yield (
        "edge/equal_ts_code_point_not_utf16",
        tparams(pair_prev_k=5),
        [
            R("e\U00010000", T0, "v2"),
            R("e\uffff", T0, "v1"),
            R("e\U0001f600", T0, "v4"),
            R("e\ue000", T0, "v3"),
            ALL,
        ],
        lambda o: rel(o, 4) == ["e\ue000", "e\uffff", "e\U00010000", "e\U0001f600"],
    )
    yield (
        "edge/equal_ts_and_id_keep_arrival_order",
        tparams(pair_prev_k=5),
        [R("same", T0, "v2"), R("same", T0, "v1"), ALL],
        lambda o: [r["released"]["video_id"] for r in o[2]] == ["v2", "v1"],
    )
    yield (
        "edge/history_exactly_len_and_one_longer",
        tparams(history_len=3, pair_prev_k=0),
        [R(f"e{i}", T0 + i * 1000, f"v{i}") for i in range(5)] + [ALL],
        lambda o: (
            [len(e["history"]) for e in ex(o, 5).values()] == [0, 1, 2, 3, 3]
            and ex(o, 5)["e4"]["history"][0]["video_id"] == "v1"
        ),
    )
    yield (
        "edge/history_len_0",
        tparams(history_len=0, pair_prev_k=0),
        [R(f"e{i}", T0 + i, f"v{i}") for i in range(3)] + [ALL],
        lambda o: all(e["history"] == [] for e in ex(o, 3).values()),
    )
    yield (
        "edge/pair_prev_k_boundary",
        tparams(pair_prev_k=2, history_len=0),
        [R(f"e{i}", T0 + i, f"v{i}") for i in range(4)] + [ALL],
        lambda o: others(o, 4) == {"e0": [], "e1": ["v0"], "e2": ["v0", "v1"], "e3": ["v1", "v2"]},
    )
    yield (
        "edge/pair_prev_k_0",
        tparams(pair_prev_k=0),
        [R(f"e{i}", T0 + i, f"v{i}") for i in range(3)] + [ALL],
        lambda o: all(v == [] for v in others(o, 3).values()),
    )
    yield (
        "edge/keep_len_is_max_of_history_and_k",
        tparams(pair_prev_k=3, history_len=1),
        [R(f"e{i}", T0 + i, f"v{i}") for i in range(5)] + [ALL],
        lambda o: others(o, 5)["e4"] == ["v1", "v2", "v3"] and len(ex(o, 5)["e4"]["history"]) == 1,
    )
    yield (
        "edge/same_video_never_paired",
        tparams(pair_prev_k=3),
        [R("a", T0, "v1"), R("b", T0 + 1, "v1"), R("c", T0 + 2, "v2"), R("d", T0 + 3, "v1"), ALL],
        lambda o: others(o, 4) == {"a": [], "b": [], "c": ["v1", "v1"], "d": ["v2"]},
    )
    yield (
        "edge/watermark_at_pending_ts_releases_below_not",
        p,
        [
            R("a", T0 + 5000),
            R("b", T0 + 5001),
            WM(T0 + 4999),
            WM(T0 + 5000),
            WM(T0 + 5000),
            WM(T0 + 5001),
        ],
        lambda o: o[2] == [] and rel(o, 3) == ["a"] and o[4] == [] and rel(o, 5) == ["b"],
    )
    yield (
        "edge/watermark_below_everything",
        p,
        [R("a", T0 + 5000), WM(0), WM(-(2**63)), WM(T0), ALL],
        lambda o: o[1] == o[2] == o[3] == [] and rel(o, 4) == ["a"],
    )
    yield (
        "edge/no_implicit_final_watermark",
        p,
        [R("a", T0 + 5000), R("b", T0 + 6000), WM(T0 + 5500)],
        lambda o: rel(o, 2) == ["a"],
    )
    yield (
        "edge/unclicked_no_example_still_pairs",
        tparams(pair_prev_k=3),
        [R("a", T0, "v1", clicked=False), R("b", T0 + 1, "v2", clicked=False), ALL],
        lambda o: all(e is None for e in ex(o, 2).values()) and others(o, 2)["b"] == ["v1"],
    )
    yield (
        "edge/invalid_and_ambiguous_do_not_touch_state",
        p,
        [
            R("a", T0 + 10_000),
            ("record", "u1", b"{"),
            ("record", "u1", None),
            R("b", T0 + 20_000, key="u1", user="u2"),
            ("record", "", watch_raw("c", T0 + 20_000, user="")),
            R("d", T0 + 9_000),
            ALL,
        ],
        lambda o: (
            o[1] == [{"dead": "not_json"}]
            and o[2] == [{"dead": "not_json"}]
            and o[3] == [{"dead": "ambiguous_user_id"}]
            and o[4] == [{"dead": "empty_id"}]
            and acc(o, 5)
        ),
    )
    yield (
        "edge/future_timestamp_in_sequence",
        p,
        [R("a", NOW_MS + MAX_FUTURE), R("b", NOW_MS + MAX_FUTURE + 1), ALL],
        lambda o: acc(o, 0) and o[1] == [{"dead": "future_timestamp"}],
    )
    yield (
        "edge/reward_sampling_full_and_none",
        tparams(weights=RewardWeights(click=1.0, ratio=1.0, satisfaction=0.0)),
        [R("a", T0, "v1", watch=60.0, dur=60.0), R("b", T0 + 1, "v2", watch=0.0, dur=60.0), ALL],
        lambda o: ex(o, 2)["a"] is not None and ex(o, 2)["a"]["reward"] == 2.0,
    )
    yield (
        "edge/hours_since_exact_division",
        tparams(history_len=5, pair_prev_k=0, session_gap_ms=10**12),
        [R("a", T0 - 7 * 3_600_000 - 1, "v1"), R("b", T0 - 123_457, "v2"), R("c", T0, "v3"), ALL],
        lambda o: (
            [h["hours_since"] for h in ex(o, 3)["c"]["history"]]
            == [(7 * 3_600_000 + 1) / 3_600_000.0, 123_457 / 3_600_000.0]
        ),
    )
    yield (
        "edge/negative_zero_and_ratio_cap",
        tparams(history_len=3, weights=RewardWeights(ratio_cap=0.5)),
        [R("a", T0, "v1", watch=-0.0, sat=None), R("b", T0 + 1, "v2", watch=90.0, sat=0.0), ALL],
        lambda o: ex(o, 2)["b"] is not None and ex(o, 2)["b"]["history"][0]["watch_ratio"] == 0.0,
    )
    yield (
        "edge/watermark_long_min_and_max",
        p,
        [WM(-(2**63)), R("a", 0), WM(0), R("b", LONG_MAX >> 40), ALL],
        lambda o: rel(o, 2) == ["a"],
    )


def gen_params(rng: random.Random) -> ut.TimelineParams:
    weights = rng.choice(
        [
            RewardWeights(),
            RewardWeights(
                click=0.5, ratio=2.0, satisfaction=1.0, ratio_cap=1.5, satisfaction_default=0.25
            ),
            RewardWeights(click=1.0, ratio=0.0, satisfaction=0.0),
            RewardWeights(
                click=0.1, ratio=0.3, satisfaction=0.7, ratio_cap=2.0, satisfaction_default=0.0
            ),
            RewardWeights(
                click=0.0, ratio=1.0, satisfaction=0.1, ratio_cap=0.8, satisfaction_default=1.0
            ),
        ]
    )
    return ut.TimelineParams(
        allowed_lateness_ms=rng.choice([0, 1, 500, 1000, 60_000]),
        session_gap_ms=rng.choice([1, 1000, 5000, 60_000, 1_800_000]),
        history_len=rng.choice([0, 1, 2, 3, 5, 20]),
        pair_prev_k=rng.choice([0, 1, 2, 3, 5]),
        weights=weights,
        sample_salt=rng.choice(["", "s1", "salt-ü", "😀", "plum"]),
    )


EVENT_IDS = ["a", "b", "e\uffff", "e\U00010000", "e\ue000", "e\U0001f600", "Z", "é", "e-1", "e-10"]


def gen_timeline(rng: random.Random, p: ut.TimelineParams) -> list[Step]:
    user = rng.choice(["u1", "user-ü", "😀", "u 2", "\u200b"])
    videos = [f"v{i}" for i in range(rng.choice([1, 2, 3, 5, 20]))] + ["vé", "v\U0001f600"]
    n = rng.randint(3, 40)
    steps: list[Step] = []
    max_ts = T0 + rng.randrange(10**6)
    pending_ts: list[int] = []
    L, G = p.allowed_lateness_ms, p.session_gap_ms
    for i in range(n):
        r = rng.random()
        if r < 0.2:  # a watermark: at a pending ts, just below, far below, far above
            choices = [
                max_ts - rng.randrange(2 * L + 2),
                max_ts,
                max_ts + rng.randrange(G + 1),
                max_ts - 10**6,
            ]
            if pending_ts:
                t = rng.choice(pending_ts)
                choices += [t, t - 1, t, t + 1]
            steps.append(WM(rng.choice(choices)))
            continue
        delta = rng.choice(
            [
                0,
                0,
                1,
                -1,
                G,
                G + 1,
                -L,
                -L - 1,
                -L + 1,
                rng.randrange(2 * G + 2),
                -rng.randrange(L + 2),
                rng.randrange(1000),
                3 * G,
            ]
        )
        ts = max(0, max_ts + delta)
        eid = rng.choice(EVENT_IDS + [f"e{i}", f"e{i:03d}", f"{rng.randrange(100)}"])
        dur = rng.choice([60.0, 30.0, 120.5, 7.3])
        raw = watch_raw(
            eid,
            ts,
            rng.choice(videos),
            user=user,
            clicked=rng.random() < 0.7,
            watch=dur * rng.choice([0.0, 0.25, 0.5, 1.0, 1.5, round(rng.uniform(0, 1.6), 3)]),
            dur=dur,
            sat=rng.choice([None, None, 0.0, 1.0, 0.25, round(rng.random(), 4)]),
            ctx=rng.choice([None, "v0", "vé"]),
        )
        key = user
        r = rng.random()
        if r < 0.03:
            key = user + "x"  # ambiguous_user_id
        elif r < 0.06:
            raw = raw[:-3]  # not_json
        elif r < 0.07:
            raw = None
        steps.append(("record", key, raw))
        if key == user and raw is not None and raw.endswith(b"}"):
            max_ts = max(max_ts, ts)
            pending_ts.append(ts)
    if rng.random() < 0.8:
        steps.append(ALL)
    return steps


def generated_timelines(
    n: int = N_TIMELINES, seed: int = TIMELINE_SEED
) -> Iterator[tuple[ut.TimelineParams, list[Step]]]:
    rng = random.Random(seed)
    for _ in range(n):
        p = gen_params(rng)
        yield p, gen_timeline(rng, p)


# ---------------------------------------------------------------- files


def record_inputs(n: int = N_RECORDS) -> Iterator[tuple[str, str, bytes | None]]:
    """(id, key, raw) of every record vector, hand-written first."""
    for vid, key, raw, _promised in edge_records():
        yield vid, key, raw
    for i, (key, raw) in enumerate(generated_records(n)):
        yield f"gen/{i:06d}", key, raw


def timeline_inputs(n: int = N_TIMELINES) -> Iterator[tuple[str, ut.TimelineParams, list[Step]]]:
    """(id, params, steps) of every timeline vector, hand-written first."""
    for vid, p, steps, _check in edge_timelines():
        yield vid, p, steps
    for i, (p, steps) in enumerate(generated_timelines(n)):
        yield f"gen/{i:06d}", p, steps


def record_lines(n: int = N_RECORDS) -> Iterator[dict]:
    promises = {vid: promised for vid, _k, _r, promised in edge_records()}
    for vid, key, raw in record_inputs(n):
        line = record_line(vid, key, raw)
        got = line["expect"].get("reason")
        if vid in promises and got != promises[vid]:
            raise AssertionError(
                f"{vid}: the reference says {got}, the case promises {promises[vid]}"
            )
        yield line


def timeline_lines(n: int = N_TIMELINES) -> Iterator[dict]:
    checks = {vid: check for vid, _p, _s, check in edge_timelines()}
    for vid, p, steps in timeline_inputs(n):
        line = timeline_line(vid, p, steps)
        if vid in checks and not checks[vid](line["expect"]):
            raise AssertionError(f"{vid}: the reference gives {line['expect']}")
        yield line


def to_text(lines) -> bytes:
    return b"".join(
        json.dumps(line, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode() + b"\n"
        for line in lines
    )


# ---------------------------------------------------------------- pair windows

# (window, size_ms, slide_ms): the job's shapes, a slide that does not divide the size, and
# windows shorter than a second.
WINDOW_SHAPES = (
    ("tumbling", 30_000, 10_000),
    ("tumbling", 3_600_000, 600_000),
    ("tumbling", 250, 250),
    ("sliding", 30_000, 10_000),
    ("sliding", 3_600_000, 600_000),
    ("sliding", 7_000, 3_000),
    ("sliding", 1_000, 1_000),
)
WINDOW_SEED = 131313


def window_inputs(per_shape: int = 60) -> Iterator[tuple[str, str, int, int, int]]:
    """(id, window, size_ms, slide_ms, ts): each shape at its boundaries (0, a window's first
    and last ms, a slide's), then random event times."""
    rng = random.Random(WINDOW_SEED)
    for window, size, slide in WINDOW_SHAPES:
        shape = f"{window}/{size}/{slide}"
        for ts in sorted(
            {0, 1, slide - 1, slide, slide + 1, size - 1, size, size + 1, 2 * size - 1}
        ):
            yield f"edge/{shape}/{ts}", window, size, slide, ts
        for i in range(per_shape):
            ts = rng.choice((rng.randrange(0, 10 * size), rng.randrange(0, NOW_MS)))
            yield f"gen/{shape}/{i:03d}", window, size, slide, ts


def window_input(vid: str, window: str, size: int, slide: int, ts: int) -> dict:
    return {"id": vid, "window": window, "window_size_ms": size, "window_slide_ms": slide, "ts": ts}


def window_line(vid: str, window: str, size: int, slide: int, ts: int) -> dict:
    return {
        **window_input(vid, window, size, slide, ts),
        "expect": window_ends(ts, window, size, slide),
    }


def window_lines() -> Iterator[dict]:
    for args in window_inputs():
        yield window_line(*args)


def write_gz(path: Path, data: bytes) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    path.write_bytes(buf.getvalue())


def read_lines(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def main(argv: list[str] | None = None) -> int:
    out = Path(argv[0]) if argv else OUT_DIR
    out.mkdir(parents=True, exist_ok=True)
    for name, lines in (
        (RECORDS, record_lines()),
        (TIMELINES, timeline_lines()),
        (WINDOWS, window_lines()),
    ):
        data = to_text(lines)
        write_gz(out / name, data)
        n = data.count(b"\n")
        print(f"{out / name}: {n} lines, {(out / name).stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
