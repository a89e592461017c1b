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
| event_id, ids, ts | as `watch_events` (`{prefix}-{user}-{timestamp}-{tie:04d}-{item}`, ms) |

Unlike the stream (streams.flink.reward), no example is dropped by reward sampling: an offline
evaluation wants every rating as a query.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from streams.contracts.schema import HistoryItem, SftExample, WatchEvent
from streams.datasets.movielens import (
    MovieLensConfig,
    Rating,
    load,
    rating_order_key,
    user_id,
    video_id,
    watch_events,
    watch_ratio,
)
from trainer.prompt import HOUR_MS

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


# ---------------------------------------------------------------------------- protocol


@dataclass(frozen=True)
class LeaveLastOut:
    """The standard MovieLens-100k protocol's split of one ratings file.

    Per user, in timeline order (stable on the timestamp, ties in file order): the last
    rating is test, the second to last validation, the rest training. `train_ratings` are
    the training interactions (the first rating of each user included, which is history
    only, never a target); `held` names every validation and test interaction by
    (user id, video id), the identity of a rating (nobody rates a film twice).
    """

    examples: list[SftExample]  # every rating after a user's first, timeline order
    train: list[SftExample]
    validation: list[SftExample]  # one per user
    test: list[SftExample]  # one per user
    train_ratings: list[Rating]  # timeline order
    held: frozenset[tuple[str, str]]  # (user_id, video_id) of validation and test

    def scored(self, on: str) -> list[SftExample]:
        """The slice a run is scored on: "fresh" = test, "validation" = validation."""
        if on not in ("fresh", "validation"):
            raise ValueError(f"score on {on!r}: must be 'fresh' or 'validation'")
        return self.test if on == "fresh" else self.validation


def _timelines(ordered: Iterable[Rating]) -> dict[str, list[Rating]]:
    """Each user's ratings, from ratings already in timeline order."""
    per_user: dict[str, list[Rating]] = defaultdict(list)
    for r in ordered:
        per_user[r.user_id].append(r)
    return per_user


def _newest(timelines: dict[str, list[Rating]], n: int) -> list[Rating]:
    """Each user's `n` newest ratings (none for n = 0)."""
    return [r for rs in timelines.values() for r in rs[len(rs) - n :]]


def _less(ordered: list[Rating], dropped: Iterable[Rating]) -> list[Rating]:
    """`ordered` without the rating objects in `dropped`, in order."""
    ids = {id(r) for r in dropped}
    return [r for r in ordered if id(r) not in ids]


def without_newest(ratings: Iterable[Rating], n: int) -> list[Rating]:
    """`ratings` in timeline order less each user's `n` newest (n = 0: all of them).

    The standard split applied to what is left is the same protocol `n` ratings earlier:
    its test film is the rating `n` places before each user's real test film. A diagnostic
    replicate of the split, never the reported protocol."""
    if n < 0:
        raise ValueError(f"drop {n} newest ratings: must be >= 0")
    ordered = sorted(ratings, key=rating_order_key)
    return _less(ordered, _newest(_timelines(ordered), n))


def leave_last_out_split(
    ratings: Iterable[Rating], cfg: MovieLensConfig = DEFAULT_CONFIG, history_len: int = 50
) -> LeaveLastOut:
    """The split above; every user needs at least 3 ratings (MovieLens-100k has >= 20)."""
    from trainer.eval import leave_last_out

    ordered = sorted(ratings, key=rating_order_key)
    per_user = _timelines(ordered)
    short = [u for u, rs in per_user.items() if len(rs) < 3]
    if short:
        raise ValueError(f"users {short[:5]} have fewer than 3 ratings: no train/val/test")
    held_ratings = _newest(per_user, 2)
    train_ratings = _less(ordered, held_ratings)
    examples = movielens_examples(ordered, cfg, history_len=history_len)
    train, validation, test = leave_last_out(examples)
    held = frozenset((user_id(r.user_id, cfg), video_id(r.item_id, cfg)) for r in held_ratings)
    return LeaveLastOut(examples, train, validation, test, train_ratings, held)


def training_pairs(
    train: Iterable[SftExample], min_reward: float = 0.8
) -> list[tuple[str, str, str]]:
    """(user, context video, target video) of consecutive well-rated films of training
    examples: the tokenizer's co-occurrence pairs, with the user so each pair's two
    interactions can be named (the leakage test does)."""
    return [
        (e.user_id, e.context_video_id, e.target_video_id)
        for e in train
        if e.context_video_id is not None and e.reward >= min_reward
    ]
