"""Malformed records, one builder per validation reason of `streams.contracts.schema`.

Each builder takes a valid watch or upload (as a plain dict) and breaks exactly one
thing, so that `decode_watch` / `decode_upload` with
`ValidationLimits(now_ms=<simulated now>, embedding_dims=<config dims>)` rejects it
with exactly that reason. The three modality reasons need `embedding_dims` to be
checked; without it those records decode as valid.

`late` is not here: lateness is decided by the stream job's watermark, not by a record.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from streams.contracts import schema

WATCH = "watch"
UPLOAD = "upload"

# 100 simulated years: in the future both by the simulated clock and by the wall clock
# of a consumer validating with time.time().
FUTURE_OFFSET_MS = 100 * 365 * 24 * 3600 * 1000
UNKNOWN_MODALITY_NAME = "smell"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def _not_json(w: dict[str, Any]) -> bytes:
    return _dumps(w)[:-9]  # truncated mid-object, as from a torn write


def _not_object(w: dict[str, Any]) -> bytes:
    return _dumps(list(w.values()))


def _oversized(u: dict[str, Any]) -> bytes:
    u = dict(u)
    filler = "lorem ipsum dolor sit amet "
    u["description"] = filler * (schema.DEFAULT_MAX_PAYLOAD_BYTES // len(filler) + 16)
    return _dumps(u)


def _unknown_schema(w: dict[str, Any]) -> bytes:
    return _dumps({**w, "schema": schema.SCHEMA_VERSION + 1})


def _missing_field(w: dict[str, Any]) -> bytes:
    return _dumps({k: v for k, v in w.items() if k != "video_id"})


def _wrong_type(w: dict[str, Any]) -> bytes:
    return _dumps({**w, "watch_time_s": str(w["watch_time_s"])})


def _empty_id(w: dict[str, Any]) -> bytes:
    return _dumps({**w, "video_id": ""})


def _negative_duration(w: dict[str, Any]) -> bytes:
    return _dumps({**w, "watch_time_s": -abs(w["watch_time_s"]) - 1.0})


def _watch_time_exceeds(w: dict[str, Any]) -> bytes:
    return _dumps({**w, "watch_time_s": round(w["video_duration_s"] * 2.0 + 1.0, 1)})


def _future_timestamp(w: dict[str, Any]) -> bytes:
    return _dumps({**w, "ts": w["ts"] + FUTURE_OFFSET_MS})


def _bad_satisfaction(w: dict[str, Any]) -> bytes:
    return _dumps({**w, "satisfaction": 1.5})


def _nan_embedding(u: dict[str, Any]) -> bytes:
    emb = {k: list(v) for k, v in u["embeddings"].items()}
    first = next(iter(emb))
    emb[first][0] = float("nan")
    return json.dumps({**u, "embeddings": emb}, separators=(",", ":"), allow_nan=True).encode(
        "utf-8"
    )


def _wrong_embedding_length(u: dict[str, Any]) -> bytes:
    emb = {k: list(v) for k, v in u["embeddings"].items()}
    first = next(iter(emb))
    emb[first] = emb[first][:-1]
    return _dumps({**u, "embeddings": emb})


def _unknown_modality(u: dict[str, Any]) -> bytes:
    emb = {k: list(v) for k, v in u["embeddings"].items()}
    emb[UNKNOWN_MODALITY_NAME] = [0.0] * 4
    return _dumps({**u, "embeddings": emb})


def _missing_modality(u: dict[str, Any]) -> bytes:
    emb = {k: list(v) for k, v in u["embeddings"].items()}
    emb.pop(list(emb)[-1])
    return _dumps({**u, "embeddings": emb})


# reason -> (which event it breaks, builder)
BAD_KINDS: dict[str, tuple[str, Callable[[dict[str, Any]], bytes]]] = {
    schema.NOT_JSON: (WATCH, _not_json),
    schema.NOT_OBJECT: (WATCH, _not_object),
    schema.OVERSIZED_PAYLOAD: (UPLOAD, _oversized),
    schema.UNKNOWN_SCHEMA: (WATCH, _unknown_schema),
    schema.MISSING_FIELD: (WATCH, _missing_field),
    schema.WRONG_TYPE: (WATCH, _wrong_type),
    schema.EMPTY_ID: (WATCH, _empty_id),
    schema.NEGATIVE_DURATION: (WATCH, _negative_duration),
    schema.WATCH_TIME_EXCEEDS_DURATION: (WATCH, _watch_time_exceeds),
    schema.FUTURE_TIMESTAMP: (WATCH, _future_timestamp),
    schema.BAD_SATISFACTION: (WATCH, _bad_satisfaction),
    schema.NAN_EMBEDDING: (UPLOAD, _nan_embedding),
    schema.WRONG_EMBEDDING_LENGTH: (UPLOAD, _wrong_embedding_length),
    schema.UNKNOWN_MODALITY: (UPLOAD, _unknown_modality),
    schema.MISSING_MODALITY: (UPLOAD, _missing_modality),
}


def make_bad(reason: str, watch: dict[str, Any], upload: dict[str, Any]) -> tuple[str, bytes]:
    """(`WATCH` or `UPLOAD`, value bytes) of a record that fails with `reason`."""
    try:
        target, build = BAD_KINDS[reason]
    except KeyError:
        raise KeyError(
            f"no malformed-record builder for {reason!r}; known: {sorted(BAD_KINDS)}"
        ) from None
    return target, build(watch if target == WATCH else upload)
