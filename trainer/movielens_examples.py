"""MovieLens-100k ratings as SFT examples, for offline evaluation against published baselines.

Each rating of a user, after their first `min_history`, becomes one example whose target is
that rating's movie and whose history is the user's previous `history_len` rated movies,
oldest first, in timeline order (`streams.datasets.movielens.rating_order_key`). The watch mapping
is the one `streams.datasets.movielens.watch_events` uses for the live stream, so an offline
example reads exactly like one the Flink job would build from the replayed watches:

| field | value |
|---|---|
| history watch ratio | `rating / 5` |
| history watch time | `ratio * MovieLensConfig.duration_s` (rounded to ms) |
| history hours_since | `(target ts - rated ts) / 1 h` |
| context | the user's previous rated movie (None for the first) |
| reward | `rating / 5` |
| event_id, ids, ts | as `watch_events` (`{prefix}-{user}-{item}-{timestamp}`, ms) |

Unlike the stream (streams.flink.reward), no example is dropped by reward sampling: an offline
evaluation wants every rating as a query.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable
from pathlib import Path

from streams.contracts.schema import HistoryItem, SftExample, WatchEvent
from streams.datasets.movielens import (
    MovieLensConfig,
    Rating,
    load,
    rating_order_key,
    watch_events,
    watch_ratio,
)

HOUR_MS = 3_600_000.0
DEFAULT_CONFIG = MovieLensConfig()


def movielens_examples(
    ratings: Iterable[Rating],
    cfg: MovieLensConfig = DEFAULT_CONFIG,
    history_len: int = 20,
    min_history: int = 1,
) -> list[SftExample]:
    """SFT examples of `ratings` (any order), in timeline order; see the module docstring."""
    if history_len < 1 or not 0 <= min_history <= history_len:
        raise ValueError(
            f"need history_len >= 1 and 0 <= min_history <= history_len, "
            f"got {history_len}, {min_history}"
        )
    ordered = sorted(ratings, key=rating_order_key)
    past: dict[str, deque[tuple[Rating, WatchEvent]]] = defaultdict(
        lambda: deque(maxlen=history_len)
    )
    out: list[SftExample] = []
    for r, w in zip(ordered, watch_events(ordered, cfg), strict=True):
        prev = past[w.user_id]
        if len(prev) >= min_history:
            history = tuple(
                HistoryItem(
                    video_id=pw.video_id,
                    watch_ratio=watch_ratio(pr.stars),
                    watch_time_s=pw.watch_time_s,
                    hours_since=(w.ts - pw.ts) / HOUR_MS,
                )
                for pr, pw in prev
            )
            out.append(
                SftExample(
                    event_id=w.event_id,
                    user_id=w.user_id,
                    history=history,
                    context_video_id=w.context_video_id,
                    target_video_id=w.video_id,
                    reward=watch_ratio(r.stars),
                    ts=w.ts,
                )
            )
        prev.append((r, w))
    return out


def load_movielens_examples(
    directory: Path | str,
    cfg: MovieLensConfig = DEFAULT_CONFIG,
    history_len: int = 20,
    min_history: int = 1,
) -> list[SftExample]:
    """`movielens_examples` of a fetched MovieLens-100k directory (streams.datasets.movielens.load)."""
    return movielens_examples(load(directory).ratings, cfg, history_len, min_history)
