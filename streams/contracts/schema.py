"""Event contracts: one frozen dataclass per topic, JSON encode/decode, validation.

Every topic carries UTF-8 JSON objects with a `schema` version field. Decoding is the
edge where bad input is caught: `decode_watch(raw, ...)` either returns a valid
`WatchEvent` or raises `ValidationError` whose `reason` is one of `REASONS` and whose
message names the offending value. Inside the system events are trusted.

The dead-letter record carries what is needed to find and re-drive a rejected record:
source topic, partition, offset, the reason code, a human message and the raw bytes
(base64, since a rejected record need not be valid UTF-8).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

SCHEMA_VERSION = 1

# Reason codes, stable strings used as the `reason` label of dead-letter metrics.
NOT_JSON = "not_json"
NOT_OBJECT = "not_object"
OVERSIZED_PAYLOAD = "oversized_payload"
UNKNOWN_SCHEMA = "unknown_schema"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
EMPTY_ID = "empty_id"
NEGATIVE_DURATION = "negative_duration"
WATCH_TIME_EXCEEDS_DURATION = "watch_time_exceeds_duration"
FUTURE_TIMESTAMP = "future_timestamp"
BAD_SATISFACTION = "bad_satisfaction"
NAN_EMBEDDING = "nan_embedding"
WRONG_EMBEDDING_LENGTH = "wrong_embedding_length"
UNKNOWN_MODALITY = "unknown_modality"
MISSING_MODALITY = "missing_modality"
LATE = "late"
# The stream job keys records by a user_id read in the JVM; this is when its own reading disagrees.
AMBIGUOUS_USER_ID = "ambiguous_user_id"
SID_SPACE_EXHAUSTED = "sid_space_exhausted"

REASONS = (
    NOT_JSON,
    NOT_OBJECT,
    OVERSIZED_PAYLOAD,
    UNKNOWN_SCHEMA,
    MISSING_FIELD,
    WRONG_TYPE,
    EMPTY_ID,
    NEGATIVE_DURATION,
    WATCH_TIME_EXCEEDS_DURATION,
    FUTURE_TIMESTAMP,
    BAD_SATISFACTION,
    NAN_EMBEDDING,
    WRONG_EMBEDDING_LENGTH,
    UNKNOWN_MODALITY,
    MISSING_MODALITY,
    LATE,
    AMBIGUOUS_USER_ID,
    SID_SPACE_EXHAUSTED,
)

# A watch may report somewhat more time than the video lasts (replays, seeking, clock
# skew between player and CDN), but not arbitrarily more.
MAX_WATCH_TO_DURATION = 1.5
DEFAULT_MAX_FUTURE_MS = 5 * 60 * 1000
DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024


class ValidationError(ValueError):
    """A record that breaks its topic's contract. `reason` is one of `REASONS`."""

    def __init__(self, reason: str, message: str):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class ValidationLimits:
    """Bounds applied at decode time; `now_ms` None means "do not check the future"."""

    now_ms: int | None = None
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    # modality name -> embedding length; None accepts any modality of any length.
    embedding_dims: Mapping[str, int] | None = None


@dataclass(frozen=True)
class WatchEvent:
    event_id: str
    user_id: str
    video_id: str
    ts: int  # event time, epoch milliseconds
    watch_time_s: float
    video_duration_s: float
    clicked: bool
    surface: str
    context_video_id: str | None = None
    satisfaction: float | None = None  # survey answer in [0, 1], when the user gave one
    schema: int = SCHEMA_VERSION

    @property
    def watch_ratio(self) -> float:
        return self.watch_time_s / self.video_duration_s if self.video_duration_s > 0 else 0.0


@dataclass(frozen=True)
class UploadEvent:
    video_id: str
    ts: int
    title: str
    description: str
    channel: str
    topics: tuple[str, ...]
    duration_s: float
    embeddings: Mapping[str, tuple[float, ...]]
    schema: int = SCHEMA_VERSION


@dataclass(frozen=True)
class SidAssignment:
    video_id: str
    sid: tuple[int, ...]
    sid_version: str
    ts: int  # when the SID was assigned (epoch ms, wall clock)
    # the upload's Kafka record timestamp (epoch ms, when it entered Kafka): the start of
    # upload -> servable, which serving measures when it applies the SID; 0 = unknown
    # (a reindex, or a record written before this field existed)
    upload_ts: int = 0
    schema: int = SCHEMA_VERSION


@dataclass(frozen=True)
class CooccurrencePair:
    a: str  # canonical order: a < b
    b: str
    count: int
    window_end: int  # epoch ms, exclusive end of the window the count covers
    schema: int = SCHEMA_VERSION


@dataclass(frozen=True)
class HistoryItem:
    video_id: str
    watch_ratio: float
    watch_time_s: float
    hours_since: float  # hours between this watch and the target watch


@dataclass(frozen=True)
class SftExample:
    event_id: str  # the target watch's event id (unique per example)
    user_id: str
    history: tuple[HistoryItem, ...]  # oldest first, before the target
    context_video_id: str | None
    target_video_id: str
    reward: float
    ts: int
    schema: int = SCHEMA_VERSION


@dataclass(frozen=True)
class DeadLetter:
    source_topic: str
    partition: int
    offset: int
    reason: str
    error: str
    raw_b64: str
    ts: int
    schema: int = SCHEMA_VERSION

    @property
    def raw(self) -> bytes:
        return base64.b64decode(self.raw_b64)

    @classmethod
    def of(
        cls,
        source_topic: str,
        partition: int,
        offset: int,
        err: ValidationError,
        raw: bytes,
        ts: int,
    ) -> DeadLetter:
        return cls(
            source_topic=source_topic,
            partition=partition,
            offset=offset,
            reason=err.reason,
            error=err.message,
            raw_b64=base64.b64encode(raw).decode("ascii"),
            ts=ts,
        )


# ---------------------------------------------------------------------------- encoding


def to_dict(event: Any) -> dict[str, Any]:
    """Plain-JSON form of an event (tuples become lists, nested dataclasses dicts).

    Shallow by design: `dataclasses.asdict` deep-copies every embedding value and was
    90% of the cost of encoding an upload.
    """
    return {name: _plain(getattr(event, name)) for name in _field_names(type(event))}


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


# Most values are scalars: answer them before the (slower) dataclass and Mapping checks.
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _plain(value: Any) -> Any:
    if type(value) in _SCALARS:
        return value
    if dataclasses.is_dataclass(value):
        return to_dict(value)
    if isinstance(value, (list, tuple)):
        if value and dataclasses.is_dataclass(value[0]):
            return [_plain(v) for v in value]
        return list(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)  # = json.dumps(...) args


def encode(event: Any) -> bytes:
    """Compact UTF-8 JSON bytes of an event; stable for equal events."""
    return _ENCODER.encode(to_dict(event)).encode("utf-8")


_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")


def encode_sid_assignment(a: SidAssignment) -> bytes:
    """`encode(a)`, byte for byte, ~10x faster: the SID service writes one per new video.

    json.dumps escapes every character outside printable ASCII (\\uXXXX: non-ASCII, DEL,
    control characters) where orjson writes some of them raw, so ids with any such
    character take the generic path and the bytes never differ.
    """
    if _PRINTABLE_ASCII.fullmatch(a.video_id) and _PRINTABLE_ASCII.fullmatch(a.sid_version):
        try:
            return orjson.dumps(
                {
                    "video_id": a.video_id,
                    "sid": list(a.sid),
                    "sid_version": a.sid_version,
                    "ts": a.ts,
                    "upload_ts": a.upload_ts,
                    "schema": a.schema,
                }
            )
        except TypeError:  # e.g. numpy integers: json.dumps has its own view of those
            pass
    return encode(a)


def encode_key(key: str | None) -> bytes | None:
    return None if key is None else key.encode("utf-8")


# ---------------------------------------------------------------------------- decoding


def parse_object(
    raw: bytes | str, limits: ValidationLimits = ValidationLimits(), *, fast: bool = False
) -> dict[str, Any]:
    """Bytes to a JSON object with a known schema version, or ValidationError.

    Bytes must be strict UTF-8 (no BOM, no UTF-16/32, no encoded surrogates) and no JSON
    string may hold an unpaired surrogate, escaped (`"\\ud800"`) or not: such text cannot
    be written back as UTF-8 (a Kafka key, an example, the reward coin's hash input), so
    it is not_json here rather than a crash later. Otherwise Python json's grammar: NaN,
    Infinity and 1e400 (infinity) are numbers, integers have up to MAX_INT_DIGITS digits,
    the last of duplicate keys wins; nesting deeper than MAX_JSON_DEPTH is not_json.

    `fast` parses with orjson (see `_fast_loads`): the same objects as the exact parse
    except that integers beyond 64 bits become floats, so use it only where a caller
    re-decodes exactly whenever the fast result fails validation (as `decode_upload` does).
    """
    size = len(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw)
    if size > limits.max_payload_bytes:
        raise ValidationError(
            OVERSIZED_PAYLOAD, f"payload is {size} bytes, limit {limits.max_payload_bytes}"
        )
    try:
        # NaN/Infinity are kept so validation can name them (nan_embedding, wrong_type)
        # rather than calling the whole record not_json.
        obj = _fast_loads(raw) if fast else _exact_loads(raw)
    except ValueError as exc:  # JSONDecodeError, UnicodeError and the limits above
        raise ValidationError(NOT_JSON, f"not UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ValidationError(NOT_OBJECT, f"expected a JSON object, got {type(obj).__name__}")
    version = obj.get("schema", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise ValidationError(
            UNKNOWN_SCHEMA, f"schema={version!r}, this code reads {SCHEMA_VERSION}"
        )
    return obj


# Nesting deeper than this is not_json (orjson alone would read up to 1024 levels, but
# json.loads's recursion depends on the caller's stack; 512 is far from both).
MAX_JSON_DEPTH = 512
# Integer literals longer than this are not_json (Python's default int_max_str_digits:
# json.loads cannot read them; written out here so the rule does not depend on the env).
MAX_INT_DIGITS = 4300


def _fast_loads(raw: bytes | str) -> Any:
    """orjson (~7x faster than json here; it refuses everything `_exact_loads` refuses but
    nesting from 513 to 1024 levels, checked here only when the record is long enough to
    hold it), and `_exact_loads` for what orjson rejects but json reads (NaN, Infinity,
    1e400, integers beyond 64 bits that are too large for a double)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _exact_loads(raw)
    if len(raw) > 2 * MAX_JSON_DEPTH and _too_deep(raw if isinstance(raw, str) else raw.decode()):
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    return obj


_SURROGATE = re.compile(r"[\ud800-\udfff]")
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def _exact_loads(raw: bytes | str) -> Any:
    """json.loads of strict UTF-8 text whose strings hold no unpaired surrogate, nested at
    most MAX_JSON_DEPTH deep, with integers of at most MAX_INT_DIGITS digits."""
    text = raw if isinstance(raw, str) else bytes(raw).decode("utf-8")
    if _SURROGATE.search(text):  # raw surrogates in str input (strict bytes decoding refuses them)
        raise UnicodeError("an unpaired surrogate")
    if _too_deep(text):
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        obj = json.loads(text, parse_int=_parse_int)
    except RecursionError:  # only on a very deep caller stack: never crash on input
        raise ValueError("nested too deep for this stack") from None
    if "\\u" in text and _has_surrogate(obj):
        raise UnicodeError("a string holds an unpaired surrogate escape")
    return obj


def _parse_int(literal: str) -> int:
    if len(literal) - literal.startswith("-") > MAX_INT_DIGITS:
        raise ValueError(f"an integer of more than {MAX_INT_DIGITS} digits")
    return int(literal)


def _too_deep(text: str) -> bool:
    """Whether (valid) JSON text nests arrays/objects more than MAX_JSON_DEPTH deep. On
    invalid text the answer does not matter: the record is not_json either way."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return False
    depth = 0
    for c in _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)):
        depth += 1 if c in "[{" else -1
        if depth > MAX_JSON_DEPTH:
            return True
    return False


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(map(_has_surrogate, value))
    return False


def _require(obj: Mapping[str, Any], name: str, kinds: tuple[type, ...], what: str) -> Any:
    if name not in obj or obj[name] is None:
        raise ValidationError(MISSING_FIELD, f"field {name!r} is missing")
    return _typed(obj[name], name, kinds, what)


def _optional(obj: Mapping[str, Any], name: str, kinds: tuple[type, ...], what: str) -> Any:
    if obj.get(name) is None:
        return None
    return _typed(obj[name], name, kinds, what)


def _typed(value: Any, name: str, kinds: tuple[type, ...], what: str) -> Any:
    # bool is an int in Python; a JSON true is never a valid number here.
    if isinstance(value, bool) and bool not in kinds:
        raise ValidationError(WRONG_TYPE, f"field {name!r} must be {what}, got {value!r}")
    if not isinstance(value, kinds):
        raise ValidationError(WRONG_TYPE, f"field {name!r} must be {what}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValidationError(WRONG_TYPE, f"field {name!r} must be finite, got {value!r}")
    return value


_isfinite = math.isfinite


def _number(obj: Mapping[str, Any], name: str, what: str, *, optional: bool = False) -> Any:
    """A required (or optional: None when absent) JSON number as a finite float.

    An integer too large for a double (it would round to infinity; float() raises
    OverflowError) is wrong_type like the infinity it stands for."""
    value = obj.get(name)
    if type(value) is float and _isfinite(value):  # the common case, checked first
        return value
    value = (_optional if optional else _require)(obj, name, _NUMBER, what)
    if value is None:
        return None
    try:
        return float(value)
    except OverflowError:
        raise ValidationError(
            WRONG_TYPE,
            f"field {name!r} must be finite, got an integer of {value.bit_length()} bits",
        ) from None


def _double(x: float | int) -> float:
    try:
        return float(x)
    except OverflowError:
        return math.inf if x > 0 else -math.inf


def _id(obj: Mapping[str, Any], name: str) -> str:
    value = _require(obj, name, (str,), "a string")
    if not value.strip():
        raise ValidationError(EMPTY_ID, f"field {name!r} is empty")
    return value


def _timestamp(obj: Mapping[str, Any], limits: ValidationLimits) -> int:
    ts = _require(obj, "ts", (int,), "an integer (epoch ms)")
    if ts < 0:
        raise ValidationError(WRONG_TYPE, f"field 'ts' must be a non-negative epoch ms, got {ts}")
    if limits.now_ms is not None and ts > limits.now_ms + limits.max_future_ms:
        ahead_ds = (ts - limits.now_ms) // 100  # integers: ts may be too large for a float
        raise ValidationError(
            FUTURE_TIMESTAMP,
            f"ts={ts} is {ahead_ds // 10}.{ahead_ds % 10} s in the future "
            f"(limit {limits.max_future_ms / 1000:.0f} s)",
        )
    return ts


_NUMBER = (int, float)
_NUMBER_TYPES = frozenset(_NUMBER)  # exact types: bool (an int subclass) is not a number here


def watch_from_dict(
    obj: Mapping[str, Any], limits: ValidationLimits = ValidationLimits()
) -> WatchEvent:
    event_id = _id(obj, "event_id")
    user_id = _id(obj, "user_id")
    video_id = _id(obj, "video_id")
    ts = _timestamp(obj, limits)
    watch_time = _number(obj, "watch_time_s", "a number of seconds")
    duration = _number(obj, "video_duration_s", "a number of seconds")
    clicked = _require(obj, "clicked", (bool,), "true or false")
    surface = _require(obj, "surface", (str,), "a string")
    context = _optional(obj, "context_video_id", (str,), "a string")
    satisfaction = _number(obj, "satisfaction", "a number in [0, 1]", optional=True)
    if watch_time < 0:
        raise ValidationError(NEGATIVE_DURATION, f"watch_time_s={watch_time} is negative")
    if duration <= 0:
        raise ValidationError(NEGATIVE_DURATION, f"video_duration_s={duration} is not positive")
    if watch_time > duration * MAX_WATCH_TO_DURATION:
        raise ValidationError(
            WATCH_TIME_EXCEEDS_DURATION,
            f"watch_time_s={watch_time} > {MAX_WATCH_TO_DURATION} x video_duration_s={duration}",
        )
    if satisfaction is not None and not 0.0 <= satisfaction <= 1.0:
        raise ValidationError(BAD_SATISFACTION, f"satisfaction={satisfaction} is outside [0, 1]")
    return WatchEvent(
        event_id=event_id,
        user_id=user_id,
        video_id=video_id,
        ts=ts,
        watch_time_s=watch_time,
        video_duration_s=duration,
        clicked=clicked,
        surface=surface,
        context_video_id=context,
        satisfaction=satisfaction,
    )


def upload_from_dict(
    obj: Mapping[str, Any], limits: ValidationLimits = ValidationLimits()
) -> UploadEvent:
    video_id = _id(obj, "video_id")
    ts = _timestamp(obj, limits)
    title = _require(obj, "title", (str,), "a string")
    description = _optional(obj, "description", (str,), "a string") or ""
    channel = _optional(obj, "channel", (str,), "a string") or ""
    topics = _optional(obj, "topics", (list,), "a list of strings") or []
    for t in topics:
        _typed(t, "topics[]", (str,), "a string")
    duration = _number(obj, "duration_s", "a number of seconds")
    if duration <= 0:
        raise ValidationError(NEGATIVE_DURATION, f"duration_s={duration} is not positive")
    raw_embeddings = _require(obj, "embeddings", (dict,), "an object of named float vectors")
    embeddings = _embeddings(raw_embeddings, limits.embedding_dims)
    return UploadEvent(
        video_id=video_id,
        ts=ts,
        title=title,
        description=description,
        channel=channel,
        topics=tuple(topics),
        duration_s=duration,
        embeddings=embeddings,
    )


def _embeddings(
    raw: Mapping[str, Any], expected: Mapping[str, int] | None
) -> dict[str, tuple[float, ...]]:
    if not raw:
        raise ValidationError(MISSING_MODALITY, "embeddings is empty")
    out: dict[str, tuple[float, ...]] = {}
    for name, vector in raw.items():
        if expected is not None and name not in expected:
            raise ValidationError(
                UNKNOWN_MODALITY, f"embedding {name!r} is not one of {sorted(expected)}"
            )
        if not isinstance(vector, list):
            raise ValidationError(WRONG_TYPE, f"embedding {name!r} must be a list of numbers")
        # Fast path first (C-level scans); the slow loop only runs to name the culprit.
        if not _NUMBER_TYPES.issuperset(map(type, vector)):
            for i, x in enumerate(vector):
                if isinstance(x, bool) or not isinstance(x, _NUMBER):
                    raise ValidationError(
                        WRONG_TYPE, f"embedding {name!r}[{i}]={x!r} is not a number"
                    )
        try:
            values = tuple(map(float, vector))
        except OverflowError:  # an integer too large for a double is as infinite as inf
            values = tuple(map(_double, vector))
        if not all(map(math.isfinite, values)):
            i = next(i for i, x in enumerate(values) if not math.isfinite(x))
            raise ValidationError(
                NAN_EMBEDDING, f"embedding {name!r}[{i}]={vector[i]!r} is not finite"
            )
        if expected is not None and len(values) != expected[name]:
            raise ValidationError(
                WRONG_EMBEDDING_LENGTH,
                f"embedding {name!r} has length {len(values)}, expected {expected[name]}",
            )
        out[name] = values
    if expected is not None:
        missing = sorted(set(expected) - set(out))
        if missing:
            raise ValidationError(MISSING_MODALITY, f"embeddings {missing} are missing")
    return out


def decode_watch(raw: bytes | str, limits: ValidationLimits = ValidationLimits()) -> WatchEvent:
    try:
        # As in decode_upload: the fast parse reads integers beyond 64 bits as floats,
        # which can only turn a valid watch invalid (ts, a non-number field) or change an
        # error, never change a valid watch (the numbers it keeps are float()-ed). A valid
        # fast result stands; errors are decided by the exact parse.
        return watch_from_dict(parse_object(raw, limits, fast=True), limits)
    except ValidationError:
        return watch_from_dict(parse_object(raw, limits), limits)


def decode_upload(raw: bytes | str, limits: ValidationLimits = ValidationLimits()) -> UploadEvent:
    try:
        # The fast parse differs from json.loads only in reading integers beyond 64 bits
        # as floats: for an upload that can turn a valid event invalid (ts must be an
        # int) or change an error's reason or message, never change a valid event (every
        # other number is float()-ed). So a valid fast result stands; errors are decided
        # by the exact parse.
        return upload_from_dict(parse_object(raw, limits, fast=True), limits)
    except ValidationError:
        return upload_from_dict(parse_object(raw, limits), limits)


def decode_sid_assignment(raw: bytes | str) -> SidAssignment:
    obj = parse_object(raw)
    sid = _require(obj, "sid", (list,), "a list of codes")
    for code in sid:
        _typed(code, "sid[]", (int,), "a non-negative integer")
        if code < 0:
            raise ValidationError(WRONG_TYPE, f"sid code {code} is negative")
    return SidAssignment(
        video_id=_id(obj, "video_id"),
        sid=tuple(sid),
        sid_version=_require(obj, "sid_version", (str,), "a string"),
        ts=_timestamp(obj, ValidationLimits()),
        upload_ts=_upload_ts(obj),
    )


def _upload_ts(obj: Mapping[str, Any]) -> int:
    """`upload_ts` of a SID assignment: absent (older records) reads as 0 = unknown."""
    value = obj.get("upload_ts", 0)
    _typed(value, "upload_ts", (int,), "an integer (epoch ms)")
    if value < 0:
        raise ValidationError(WRONG_TYPE, f"upload_ts {value} is negative")
    return value


def decode_cooccurrence(raw: bytes | str) -> CooccurrencePair:
    obj = parse_object(raw)
    return CooccurrencePair(
        a=_id(obj, "a"),
        b=_id(obj, "b"),
        count=_require(obj, "count", (int,), "an integer"),
        window_end=_require(obj, "window_end", (int,), "an integer (epoch ms)"),
    )


def decode_sft_example(raw: bytes | str) -> SftExample:
    obj = parse_object(raw)
    history = []
    for item in _require(obj, "history", (list,), "a list"):
        _typed(item, "history[]", (dict,), "an object")
        history.append(
            HistoryItem(
                video_id=_id(item, "video_id"),
                watch_ratio=float(_require(item, "watch_ratio", _NUMBER, "a number")),
                watch_time_s=float(_require(item, "watch_time_s", _NUMBER, "a number")),
                hours_since=float(_require(item, "hours_since", _NUMBER, "a number")),
            )
        )
    return SftExample(
        event_id=_id(obj, "event_id"),
        user_id=_id(obj, "user_id"),
        history=tuple(history),
        context_video_id=_optional(obj, "context_video_id", (str,), "a string"),
        target_video_id=_id(obj, "target_video_id"),
        reward=float(_require(obj, "reward", _NUMBER, "a number")),
        ts=_require(obj, "ts", (int,), "an integer (epoch ms)"),
    )


# A dead letter carries a rejected record whole (base64, 4/3 its size), so it may be
# larger than any valid input: an oversized payload must still be kept, not lost.
DEAD_LETTER_MAX_BYTES = 4 * 1024 * 1024


def decode_dead_letter(raw: bytes | str) -> DeadLetter:
    obj = parse_object(raw, ValidationLimits(max_payload_bytes=DEAD_LETTER_MAX_BYTES))
    return DeadLetter(
        source_topic=_require(obj, "source_topic", (str,), "a string"),
        partition=_require(obj, "partition", (int,), "an integer"),
        offset=_require(obj, "offset", (int,), "an integer"),
        reason=_require(obj, "reason", (str,), "a reason code"),
        error=_require(obj, "error", (str,), "a string"),
        raw_b64=_require(obj, "raw_b64", (str,), "base64 text"),
        ts=_require(obj, "ts", (int,), "an integer (epoch ms)"),
    )
