"""Plain-Python reference of the Flink job's steps 3-5, written independently of it.

It shares only the event *contract* with the job (streams.contracts.schema: what is a
valid watch and with which reason a bad one is rejected; the output dataclasses).
Lateness, ordering, sessions, pairing, windows, reward and sampling are re-implemented
here from the documented semantics (streams/flink/timeline.py, streams/flink/reward.py)
without importing them, so a bug in the job's logic cannot hide in a shared helper.

Two users, one definition:

- the Flink tests (tests/integration/test_flink_job.py, tests/unit/test_user_timeline.py)
  compare the job's output exactly with `run_reference` on a seeded stream;
- offline evaluations (`plum bench trainer-quality`) get the SFT examples and
  co-occurrence pairs the job would publish for a bounded stream from `run_bounded`,
  without a broker or a JVM.

Input: the watch-topic records as (partition, offset, raw bytes) in each partition's
order. Cross-partition order does not matter: every user's records sit in one partition.

The reference also checks the premise that makes Flink's output deterministic: every
accepted watch arrives less than `out_of_orderness_ms` behind the newest watermark `ts`
read before it from its partition. If a test stream broke that, the comparison would
be meaningless, so it raises instead.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from streams.contracts import schema


@dataclass(frozen=True)
class RefParams:
    out_of_orderness_ms: int
    allowed_lateness_ms: int
    session_gap_ms: int
    history_len: int
    pair_prev_k: int
    window: str
    window_size_ms: int
    window_slide_ms: int
    min_count: int
    w_click: float
    w_ratio: float
    w_satisfaction: float
    ratio_cap: float
    satisfaction_default: float
    sample_salt: str
    max_future_ms: int = schema.DEFAULT_MAX_FUTURE_MS

    @classmethod
    def from_flink_config(cls, cfg) -> RefParams:
        names = cls.__dataclass_fields__
        return cls(**{k: getattr(cfg, k) for k in names if hasattr(cfg, k)})


@dataclass
class RefResult:
    examples: dict[str, schema.SftExample] = field(default_factory=dict)  # by event id
    pairs: Counter = field(default_factory=Counter)  # (a, b, count, window_end) -> times
    dead: Counter = field(default_factory=Counter)  # (partition, offset, reason) -> times
    accepted: int = 0
    records_in: int = 0
    pending: int = 0  # accepted but not yet released at the final watermark

    def examples_in_time_order(self) -> list[schema.SftExample]:
        """The examples by (event time, event id): the order the job releases them in."""
        return sorted(self.examples.values(), key=lambda e: (e.ts, e.event_id))


def _watermark_ts(raw: bytes, now_ms: int, max_future_ms: int) -> int | None:
    """The `ts` the job's source uses for watermarks (integer JSON ts in [0, now+future])."""
    try:
        obj = json.loads(raw)
    except Exception:
        return None
    if not isinstance(obj, dict):
        return None
    ts = obj.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, int):
        return None
    return ts if 0 <= ts <= now_ms + max_future_ms else None


def in_backfill_range(raw: bytes, from_ms: int, to_ms: int) -> bool:
    """The backfill keeps a record iff its JSON `ts` is an integer in [from, to)."""
    try:
        obj = json.loads(raw)
    except Exception:
        return False
    ts = obj.get("ts") if isinstance(obj, dict) else None
    return isinstance(ts, int) and not isinstance(ts, bool) and from_ms <= ts < to_ms


def _reward(clicked, ratio, satisfaction, p: RefParams) -> float:
    sat = p.satisfaction_default if satisfaction is None else satisfaction
    capped = min(max(ratio, 0.0), p.ratio_cap)
    return p.w_click * (1.0 if clicked else 0.0) + p.w_ratio * capped + p.w_satisfaction * sat


def _kept(event_id: str, r: float, p: RefParams) -> bool:
    r_max = p.w_click + p.w_ratio * p.ratio_cap + p.w_satisfaction
    h = hashlib.blake2b((p.sample_salt + event_id).encode("utf-8"), digest_size=8).digest()
    u = int.from_bytes(h, "big") / 2.0**64
    return u < min(1.0, max(0.0, r / r_max))


def window_ends(ts: int, window: str, size_ms: int, slide_ms: int) -> list[int]:
    """Ends of the epoch-aligned event-time windows (tumbling, or sliding by slide_ms) that
    hold ts, ascending. The JVM's PairWindows is held to it by the shared vectors."""
    if window == "tumbling":
        start = ts - ts % size_ms
        return [start + size_ms]
    ends = []
    last_start = ts - ts % slide_ms
    start = last_start
    while start > ts - size_ms:
        ends.append(start + size_ms)
        start -= slide_ms
    return sorted(ends)


def run_reference(
    records: list[tuple[int, int, bytes]],
    p: RefParams,
    now_ms: int,
    final_watermark: int | None,
    source_topic: str,
) -> RefResult:
    """Expected outputs. `final_watermark` None: everything is released (bounded input)."""
    out = RefResult()
    limits = schema.ValidationLimits(now_ms=now_ms, max_future_ms=p.max_future_ms)
    part_max: dict[int, int] = {}
    user_max: dict[str, int] = {}
    accepted: dict[str, list[schema.WatchEvent]] = defaultdict(list)
    for partition, offset, raw in records:
        out.records_in += 1
        if raw is None:  # no value (a tombstone): the job reads it as empty bytes
            raw = b""
        wm_ts = _watermark_ts(raw, now_ms, p.max_future_ms)
        prev_part_max = part_max.get(partition)
        if wm_ts is not None and (prev_part_max is None or wm_ts > prev_part_max):
            part_max[partition] = wm_ts
        try:
            w = schema.decode_watch(raw, limits)
        except schema.ValidationError as err:
            out.dead[(partition, offset, err.reason)] += 1
            continue
        newest = user_max.get(w.user_id)
        if newest is not None and w.ts < newest - p.allowed_lateness_ms:
            out.dead[(partition, offset, schema.LATE)] += 1
            continue
        if prev_part_max is not None and w.ts <= prev_part_max - p.out_of_orderness_ms:
            raise AssertionError(
                f"test stream breaks the determinism premise: accepted watch {w.event_id} ts={w.ts} "
                f"is >= out_of_orderness behind partition {partition}'s newest ts {prev_part_max}"
            )
        user_max[w.user_id] = w.ts if newest is None else max(newest, w.ts)
        accepted[w.user_id].append(w)
        out.accepted += 1

    pair_counts: Counter = Counter()
    for user, watches in accepted.items():
        ordered = sorted(watches, key=lambda w: (w.ts, w.event_id))
        released = [w for w in ordered if final_watermark is None or w.ts <= final_watermark]
        out.pending += len(ordered) - len(released)
        session = 0
        prev: list[tuple[schema.WatchEvent, int]] = []  # (watch, session), all released so far
        for w in released:
            if not prev or w.ts - prev[-1][0].ts > p.session_gap_ms:
                session += 1
            for h, s in prev[-p.pair_prev_k :] if p.pair_prev_k else []:
                if s == session and h.video_id != w.video_id:
                    a, b = sorted((h.video_id, w.video_id))
                    for end in window_ends(w.ts, p.window, p.window_size_ms, p.window_slide_ms):
                        pair_counts[(a, b, end)] += 1
            if w.clicked:
                ratio = w.watch_time_s / w.video_duration_s
                r = _reward(True, ratio, w.satisfaction, p)
                if _kept(w.event_id, r, p):
                    hist = prev[-p.history_len :] if p.history_len else []
                    out.examples[w.event_id] = schema.SftExample(
                        event_id=w.event_id,
                        user_id=user,
                        history=tuple(
                            schema.HistoryItem(
                                video_id=h.video_id,
                                watch_ratio=h.watch_time_s / h.video_duration_s,
                                watch_time_s=h.watch_time_s,
                                hours_since=(w.ts - h.ts) / 3_600_000.0,
                            )
                            for h, _ in hist
                        ),
                        context_video_id=w.context_video_id,
                        target_video_id=w.video_id,
                        reward=r,
                        ts=w.ts,
                    )
            prev.append((w, session))
    for (a, b, end), count in pair_counts.items():
        fired = final_watermark is None or end - 1 <= final_watermark
        if fired and count >= p.min_count:
            out.pairs[(a, b, count, end)] += 1
    return out


def run_bounded(values: Iterable[bytes | None], p: RefParams, now_ms: int) -> RefResult:
    """The job's outputs for a bounded stream of watch values read from one partition in
    the order given (offsets 0, 1, ...): every accepted watch released, every window fired."""
    records = [(0, offset, raw) for offset, raw in enumerate(values)]
    return run_reference(records, p, now_ms, None, source_topic="")
