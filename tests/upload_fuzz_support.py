"""Malformed upload records of every kind the upload contract distinguishes, embedding
reasons included, sent by the outside client of tests.fuzz_support.

Each builder breaks one valid upload (a dict) in a randomly chosen way and says which
reason `streams.contracts.schema.decode_upload` must give with the SID service's limits
(its tokenizer's modalities and their lengths); `fuzz_uploads` checks every record
against the contract before it is sent, so a count by reason is known up front.
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from collections.abc import Mapping
from typing import Any

from streams.contracts import schema
from tests import fuzz_support as fz
from tests.fuzz_support import dumps

HUGE_FIELD_CHARS = 200_000  # a large upload the contract still accepts (limit 256 KiB)
NEAR_BROKER_LIMIT = 1_000_000  # oversized for the contract, just under the topic's 1 MiB

_REQUIRED = ("video_id", "ts", "title", "duration_s", "embeddings")
_NON_FINITE: list[Any] = [float("nan"), float("inf"), float("-inf"), 1e400, 10**400]


def _with_embedding(u: dict, name: str, vector: Any) -> dict:
    return {**u, "embeddings": {**u["embeddings"], name: vector}}


def _wrong_type(u: dict, rng: random.Random) -> str:
    name = rng.choice(
        ["video_id", "ts", "title", "description", "channel", "topics", "topics[]"]
        + ["duration_s", "embeddings", "embedding", "embedding[]"]
    )
    modality = rng.choice(sorted(u["embeddings"]))
    vector = list(u["embeddings"][modality])
    if name == "embedding":  # one modality's vector is not a list
        return dumps(_with_embedding(u, modality, rng.choice(["0.1,0.2", 3, {"0": 0.1}, None])))
    if name == "embedding[]":  # one element of a vector is not a number
        vector[rng.randrange(len(vector))] = rng.choice(["0.1", True, None, [0.1], {"x": 1}])
        return dumps(_with_embedding(u, modality, vector))
    if name == "topics[]":
        return dumps({**u, "topics": [*u["topics"], rng.choice([1, None, ["x"], {"t": 1}])]})
    choices: list[Any]
    if name == "ts":
        choices = ["1700000000000", float(u["ts"]), -1, True, [u["ts"]], {"ms": u["ts"]}]
    elif name == "duration_s":
        choices = ["1.0", True, [1.0], {"s": 1}, *_NON_FINITE]
    elif name == "topics":
        choices = ["travel", 3, {"travel": 1}, True]
    elif name == "embeddings":
        choices = [[vector], "text", 1.5, True]
    else:  # video_id, title, description, channel
        choices = [17, 1.5, False, ["x"], {"id": "x"}]
    return dumps({**u, name: rng.choice(choices)})


def _negative_duration(u: dict, rng: random.Random) -> str:
    return dumps({**u, "duration_s": rng.choice([0, 0.0, -0.0, -1.0, -rng.uniform(0, 1e6)])})


def _non_finite_embedding(u: dict, rng: random.Random) -> str:
    modality = rng.choice(sorted(u["embeddings"]))
    vector = list(u["embeddings"][modality])
    vector[rng.randrange(len(vector))] = rng.choice(_NON_FINITE)
    return dumps(_with_embedding(u, modality, vector))


def _wrong_embedding_length(u: dict, rng: random.Random) -> str:
    modality = rng.choice(sorted(u["embeddings"]))
    vector = list(u["embeddings"][modality])
    vector = rng.choice(
        [
            lambda: vector[: rng.randrange(len(vector))],  # shorter, down to []
            lambda: vector + [0.5] * rng.randint(1, 64),  # longer
            lambda: vector * 2,
        ]
    )()
    return dumps(_with_embedding(u, modality, vector))


def _unknown_modality(u: dict, rng: random.Random) -> str:
    embeddings = dict(u["embeddings"])
    name = rng.choice(sorted(embeddings))
    if rng.random() < 0.5:  # one more, first or last
        extra = rng.choice(["depth", "Text", "text ", "thumbnail", ""])
        vector = embeddings[name]
        embeddings = (
            {extra: vector, **embeddings} if rng.random() < 0.5 else {**embeddings, extra: vector}
        )
    else:  # one renamed
        embeddings[name.upper()] = embeddings.pop(name)
    return dumps({**u, "embeddings": embeddings})


def _missing_modality(u: dict, rng: random.Random) -> str:
    if rng.random() < 0.2:
        return dumps({**u, "embeddings": {}})
    drop = rng.choice(sorted(u["embeddings"]))
    return dumps({**u, "embeddings": {k: v for k, v in u["embeddings"].items() if k != drop}})


# kind -> (reason it must get, builder). Several kinds may share a reason.
KINDS: Mapping[str, tuple[str, fz.Builder]] = {
    **fz.shared_kinds("video_id", _REQUIRED, ("video_id",), _wrong_type),
    "negative_duration": (schema.NEGATIVE_DURATION, _negative_duration),
    "future_timestamp": (schema.FUTURE_TIMESTAMP, fz.future_timestamp),
    "non_finite_embedding": (schema.NAN_EMBEDDING, _non_finite_embedding),
    "wrong_embedding_length": (schema.WRONG_EMBEDDING_LENGTH, _wrong_embedding_length),
    "unknown_modality": (schema.UNKNOWN_MODALITY, _unknown_modality),
    "missing_modality": (schema.MISSING_MODALITY, _missing_modality),
    "oversized": (
        schema.OVERSIZED_PAYLOAD,
        functools.partial(fz.oversized, pad_field="description"),
    ),
}


def fuzz_uploads(
    valid: list[dict], count: int, seed: int, limits: schema.ValidationLimits
) -> tuple[list[tuple[str, str]], Counter]:
    """`count` malformed uploads, each a copy of one of `valid` broken one way, as
    (key: its video_id when it is a string, value line), and the count per reason."""
    decode = functools.partial(schema.decode_upload, limits=limits)
    lines: list[tuple[str, str]] = []
    by_reason: Counter = Counter()
    for at, line, reason in fz.break_records(KINDS, valid, count, seed, decode):
        video_id = valid[at]["video_id"]
        lines.append((video_id, line))
        by_reason[reason] += 1
    return lines, by_reason


def huge_but_valid(u: dict, i: int) -> dict:
    """A valid upload of ~200 KB (a huge description) under a new video id."""
    return {**u, "video_id": f"{u['video_id']}-huge-{i}", "description": "d" * HUGE_FIELD_CHARS}


def near_broker_limit(u: dict, i: int) -> str:
    """An upload of ~1 MB: oversized for the contract, still stored by the broker; its
    dead letter (base64, 4/3 the size) is larger than the uploads topic would take."""
    return dumps(
        {**u, "video_id": f"{u['video_id']}-big-{i}", "description": "b" * NEAR_BROKER_LIMIT}
    )
