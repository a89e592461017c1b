"""Per-user watch timeline: lateness, event-time ordering, sessions, pairs and examples.

This is the reference for the Flink job's keyed (per user) operator, which runs on the JVM
(streams/flink/jvm) and is held to this code by the shared vectors (tests/vectors/flink).
A user's state has three parts so that a record's cost does not grow with what the user
has buffered: a small `head` (read and written per record), the `pending` watches (per
record only appended to, in any order) and the released `history` (touched only when
something is released). Nothing here knows about Flink.

Semantics (the test reference in streams/flink/reference.py reproduces them
independently, so they are spelled out exactly):

* **Order.** A user's accepted watches are *released* in event-time order, ties broken
  by event id, never in arrival order. The operator buffers an accepted watch and
  releases it when Flink's watermark reaches its `ts` (an event-time timer at `ts`);
  at the end of a bounded input (backfill) the final watermark releases everything.
* **Lateness** (decided on arrival, per user, so it does not depend on how partitions
  interleave): a watch is `late` and dead-lettered when
    - `ts < max_ts_u - allowed_lateness_ms`, where `max_ts_u` is the largest `ts` among the
      user's previously accepted watches (the records of one user share a Kafka partition
      key, so their arrival order is the partition order: deterministic); or
    - `ts <= released_max_u`, the largest `ts` already released for that user (its
      successors were already emitted; accepting it would reorder history).
  The second rule depends on the watermark, i.e. on timing; it never fires when every
  record arrives less than the watermark's out-of-orderness behind the newest `ts` read
  from its partition, which is what `out_of_orderness_ms` promises. Under that promise the
  output is a pure function of each user's record sequence.
* **Sessions.** A released watch opens a new session when more than `session_gap_ms`
  passed since the user's previously released watch.
* **Pairs.** Each released watch pairs with each of the previous `pair_prev_k` released
  watches of the same user that belong to the same session and show a different video;
  a pair is `(min(v1, v2), max(v1, v2), ts of the later watch)`.
* **Examples.** A released, clicked watch gets reward r (streams.flink.reward) and is kept
  when `keep_example(event_id, r, r_max, salt)`. Its history is the user's last
  `history_len` released watches before it (any session), oldest first, each with watch
  ratio, watch time and `hours_since = (target.ts - watch.ts) / 3_600_000`.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from dataclasses import dataclass, field

from streams.flink.reward import RewardWeights, keep_example, reward

HOUR_MS = 3_600_000.0

# Positions in the accepted-watch tuple (kept as a tuple: cheap to pickle into Flink state).
TS, EVENT_ID, VIDEO_ID, WATCH_TIME, DURATION, CLICKED, CONTEXT, SATISFACTION = range(8)

# Positions in the head list. MIN_PENDING is the smallest ts among the pending watches
# (None when none are pending): the one event-time timer a user needs.
MAX_TS, RELEASED_MAX, SESSION, LAST_TS, MIN_PENDING = range(5)
# Positions in the in-memory state list [head, pending, history] (new_state, admit, release).
HEAD, PENDING, HISTORY = range(3)


@dataclass(frozen=True)
class TimelineParams:
    allowed_lateness_ms: int = 60_000
    session_gap_ms: int = 30 * 60_000
    history_len: int = 20
    pair_prev_k: int = 3
    weights: RewardWeights = field(default_factory=RewardWeights)
    sample_salt: str = ""

    def __post_init__(self) -> None:
        if self.allowed_lateness_ms < 0 or self.session_gap_ms <= 0:
            raise ValueError(
                f"bad lateness/session gap: {self.allowed_lateness_ms}, {self.session_gap_ms}"
            )
        if self.history_len < 0 or self.pair_prev_k < 0:
            raise ValueError(
                f"history_len and pair_prev_k must be >= 0, got {self.history_len}, {self.pair_prev_k}"
            )

    @property
    def keep_len(self) -> int:
        return max(self.history_len, self.pair_prev_k)

    def as_dict(self) -> dict[str, int | float | str]:
        """The flat settings the JVM operator reads (its job parameter) and the conformance
        vectors record, under these names."""
        w = self.weights
        return {
            "allowed_lateness_ms": self.allowed_lateness_ms,
            "session_gap_ms": self.session_gap_ms,
            "history_len": self.history_len,
            "pair_prev_k": self.pair_prev_k,
            "w_click": w.click,
            "w_ratio": w.ratio,
            "w_satisfaction": w.satisfaction,
            "ratio_cap": w.ratio_cap,
            "satisfaction_default": w.satisfaction_default,
            "sample_salt": self.sample_salt,
        }


def release_order(ev: tuple) -> tuple[int, str]:
    """Watches are released in (ts, event_id) order; equal keys keep their arrival order."""
    return ev[TS], ev[EVENT_ID]


def _ts(ev: tuple) -> int:
    return ev[TS]


def watch_tuple(w) -> tuple:
    """The accepted-watch tuple of a `streams.contracts.schema.WatchEvent`."""
    return (
        w.ts,
        w.event_id,
        w.video_id,
        w.watch_time_s,
        w.video_duration_s,
        w.clicked,
        w.context_video_id,
        w.satisfaction,
    )


def new_head() -> list:
    return [None, None, 0, None, None]


def accept(head: list, ev: tuple, allowed_lateness_ms: int) -> bool:
    """Whether `ev` is on time for the user (see the module doc); if so `head` records it
    and the caller buffers `ev` in the user's pending watches. False: head unchanged."""
    ts = ev[TS]
    max_ts, released = head[MAX_TS], head[RELEASED_MAX]
    if max_ts is not None and ts < max_ts - allowed_lateness_ms:
        return False
    if released is not None and ts <= released:
        return False
    if max_ts is None or ts > max_ts:
        head[MAX_TS] = ts
    if head[MIN_PENDING] is None or ts < head[MIN_PENDING]:
        head[MIN_PENDING] = ts
    return True


def release_ready(
    head: list,
    pending: list,
    history: list,
    upto_ts: int,
    p: TimelineParams,
    r_max: float,
    presorted: bool = False,
) -> tuple[list, list]:
    """Release the pending watches with ts <= upto_ts in (ts, event_id) order.

    `pending` may be in any order (it is sorted in place) unless `presorted` says it is
    already in release order. Updates `head` and `history` in place and returns
    (released, still_pending): released as (event, others, example) per watch in release
    order, where `others` lists the videos it pairs with (one entry per pair, so a video
    can repeat) and `example` is (reward, history) when the watch was sampled, else None.
    """
    if not presorted:
        pending.sort(key=release_order)  # stable: equal keys keep their arrival order
    n = bisect_right(pending, upto_ts, key=_ts)
    if n == 0:
        return [], pending
    ready, rest = pending[:n], pending[n:]
    head[MIN_PENDING] = rest[0][TS] if rest else None
    out: list[tuple[tuple, list[str], tuple[float, list] | None]] = []
    k, hl, gap, keep = p.pair_prev_k, p.history_len, p.session_gap_ms, p.keep_len
    for ev in ready:
        ts, video = ev[TS], ev[VIDEO_ID]
        last = head[LAST_TS]
        if last is None or ts - last > gap:
            head[SESSION] += 1
        session = head[SESSION]
        others = [h[0] for h in history[-k:] if h[4] == session and h[0] != video] if k else []
        example = None
        ratio = ev[WATCH_TIME] / ev[DURATION] if ev[DURATION] > 0 else 0.0
        if ev[CLICKED]:
            r = reward(True, ratio, ev[SATISFACTION], p.weights)
            if keep_example(ev[EVENT_ID], r, r_max, p.sample_salt):
                hist = [
                    (h[0], h[1], h[2], (ts - h[3]) / HOUR_MS) for h in (history[-hl:] if hl else [])
                ]
                example = (r, hist)
        out.append((ev, others, example))
        history.append((video, ratio, ev[WATCH_TIME], ts, session))
        if len(history) > keep:
            del history[: len(history) - keep]
        head[LAST_TS] = ts
        head[RELEASED_MAX] = ts
    return out, rest


# ---- one user's whole state in memory (the naive benchmark loop, tests)


def new_state() -> list:
    return [new_head(), [], []]


def admit(state: list, ev: tuple, allowed_lateness_ms: int) -> bool:
    """Buffer `ev` in the user's state; False (and state unchanged) when it is late."""
    if not accept(state[HEAD], ev, allowed_lateness_ms):
        return False
    insort(state[PENDING], ev, key=release_order)
    return True


def release(state: list, upto_ts: int, p: TimelineParams, r_max: float):
    """Release buffered watches with ts <= upto_ts in (ts, event_id) order.

    Returns (pairs, examples): pairs as (a, b, ts) tuples, examples as
    (event, reward, history) with history a list of (video_id, ratio, watch_time_s, hours_since).
    """
    released, state[PENDING] = release_ready(
        state[HEAD], state[PENDING], state[HISTORY], upto_ts, p, r_max, presorted=True
    )
    pairs: list[tuple[str, str, int]] = []
    examples: list[tuple[tuple, float, list]] = []
    for ev, others, example in released:
        ts, video = ev[TS], ev[VIDEO_ID]
        for other in others:
            pairs.append((other, video, ts) if other < video else (video, other, ts))
        if example is not None:
            examples.append((ev, example[0], example[1]))
    return pairs, examples


def from_legacy(timeline: list, history: list | None) -> tuple[list, list, list]:
    """(head, pending, history) from the single `timeline` state of earlier job versions:
    [max_ts, released_max, session, last_ts, pending] with the history in its own state,
    or, older still, with the history as a sixth element."""
    if len(timeline) > 5:
        history = timeline[5]
    pending = list(timeline[4])
    head = [*timeline[:4], min((e[TS] for e in pending), default=None)]
    return head, pending, list(history or [])
