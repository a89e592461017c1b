"""The pure, seeded event generator of the simulator (no Kafka here).

`Simulator(cfg).records()` yields `SimRecord(topic, key, value, kind, now_ms)` in the
order they are to be produced: first the initial catalogue's uploads, then watches and
new uploads interleaved on a simulated clock. Same config and seed → byte-identical
records. Watches come from a pool of concurrent sessions; within a session the next
video is mostly from the previous watch's topic, otherwise from the user's interests
(or, rarely, any topic), and within a topic by Zipf popularity. Clicks, watch ratio and
satisfaction are sigmoids of the user–video match plus noise.

Separate random streams (spawned from one SeedSequence) drive the world, the traffic,
the malformed records and the delays, so turning on `bad_fraction` or
`out_of_order_fraction` changes where the valid records land, never what they are.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import math
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from streams.contracts import schema
from streams.contracts.schema import UploadEvent, WatchEvent
from streams.contracts.topics import TopicNames
from streams.simulator.config import SimulatorConfig
from streams.simulator.faults import BAD_KINDS, WATCH, make_bad
from streams.simulator.world import World

VALID = "valid"
TRUTH_FORMAT = "plum-simulator-truth/1"


class SimRecord(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes
    kind: str  # VALID, or the schema reason this malformed record is built to fail with
    now_ms: int  # the simulated clock when the record is produced (validate against it)


@dataclass(slots=True)
class _Session:
    user: int
    prev_video: int = -1  # -1: no watch yet in this session
    prev_topic: int = -1


_FIELDS = {cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in (WatchEvent, UploadEvent)}


def _encode(event: WatchEvent | UploadEvent) -> bytes:
    """Same bytes as `schema.encode(event)` (json writes tuples as lists), without the
    deep copy of `dataclasses.asdict` that dominated the generator's time."""
    obj = {name: getattr(event, name) for name in _FIELDS[type(event)]}
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, x))))


class Simulator:
    """One seeded run. Iterate `records()` once; read `ground_truth()` at any point."""

    def __init__(self, cfg: SimulatorConfig, topics: TopicNames | None = None):
        self.cfg = cfg
        world_ss, traffic_ss, bad_ss, delay_ss = np.random.SeedSequence(cfg.seed).spawn(4)
        self.world = World(cfg, np.random.default_rng(world_ss))
        self.rng = np.random.default_rng(traffic_ss)
        self.bad_rng = np.random.default_rng(bad_ss)
        self.delay_rng = np.random.default_rng(delay_ss)
        names = topics if topics is not None else TopicNames.with_prefix(cfg.topic_prefix)
        self.watch_topic = names.watches_replay if cfg.replay else names.watches
        self.upload_topic = names.uploads_replay if cfg.replay else names.uploads
        self.clock_ms: float = float(cfg.start_epoch_ms)
        self.end_ms: float | None = (
            cfg.start_epoch_ms + cfg.seconds * 1000.0 if cfg.seconds > 0 else None
        )
        self.emitted = 0
        self.counts: Counter[str] = Counter()  # kind -> records emitted
        self.delayed = 0
        self._watch_seq = 0
        self._bad_seq = 0
        self._bad_order: list[str] = []
        self._sessions: list[_Session] = []
        self._held: list[tuple[float, int, SimRecord]] = []  # heap of (release_ms, seq, record)

    @property
    def now_ms(self) -> int:
        return int(self.clock_ms)

    def records(self) -> Iterator[SimRecord]:
        """Every record of the run, stopping after `cfg.events` records or `cfg.seconds`."""
        limit = self.cfg.events
        for rec in self._raw():
            self.emitted += 1
            self.counts[rec.kind] += 1
            yield rec
            if limit and self.emitted >= limit:
                return

    __iter__ = records

    # ------------------------------------------------------------------ the clock

    def _raw(self) -> Iterator[SimRecord]:
        cfg, rng = self.cfg, self.rng
        for _ in range(cfg.initial_videos):
            yield from self._upload()
        self._sessions = [
            _Session(self.world.sample_user(rng)) for _ in range(cfg.concurrent_sessions)
        ]
        watch_gap_ms = 1000.0 / cfg.watches_per_sim_second
        upload_gap_ms = (
            60_000.0 / cfg.new_uploads_per_sim_minute if cfg.new_uploads_per_sim_minute > 0 else 0.0
        )
        next_watch = self.clock_ms + rng.exponential(watch_gap_ms)
        next_upload = self.clock_ms + rng.exponential(upload_gap_ms) if upload_gap_ms else math.inf
        while True:
            t = min(next_watch, next_upload)
            if self.end_ms is not None and t >= self.end_ms:
                break
            self.clock_ms = t
            yield from self._release(t)
            if next_upload <= next_watch:
                yield from self._upload()
                next_upload += rng.exponential(upload_gap_ms)
            else:
                yield from self._watch()
                next_watch += rng.exponential(watch_gap_ms)
        yield from self._release(math.inf)

    def _release(self, until_ms: float) -> Iterator[SimRecord]:
        while self._held and self._held[0][0] <= until_ms:
            _, _, held = heapq.heappop(self._held)
            rec = held._replace(now_ms=max(held.now_ms, self.now_ms))
            yield rec
            yield from self._maybe_bad()

    # ------------------------------------------------------------------ events

    def _upload(self) -> Iterator[SimRecord]:
        video = self.world.new_video(self.now_ms)
        self.world.publish(video)
        value = _encode(self.world.upload_event(video))
        yield SimRecord(self.upload_topic, video.video_id.encode(), value, VALID, self.now_ms)
        yield from self._maybe_bad()

    def _watch(self) -> Iterator[SimRecord]:
        cfg, rng, world = self.cfg, self.rng, self.world
        slot = int(rng.integers(len(self._sessions)))
        session = self._sessions[slot]
        user = session.user
        first = session.prev_video < 0
        if first or rng.random() >= cfg.session_topic_stickiness:
            topic = world.sample_interest_topic(user, rng)
        else:
            topic = session.prev_topic
        video_index = world.sample_video(topic, rng)
        if video_index == session.prev_video:
            video_index = world.sample_video(topic, rng)  # rarely the same video twice in a row
        video = world.videos[video_index]
        if first:
            surface = "home" if rng.random() < 0.7 else "search"
        else:
            surface = "watch_next" if rng.random() < 0.85 else "home"

        logit = cfg.match_scale * (world.match(user, video_index) - cfg.match_center)
        logit += rng.normal() * cfg.match_noise
        clicked = bool(rng.random() < _sigmoid(logit))
        satisfaction = None
        if clicked:
            # Can pass 1.0 (replays) but stays under the schema's 1.5 x duration bound.
            ratio = min(1.4, max(0.02, 1.15 * _sigmoid(logit + 0.5 * rng.normal())))
            if rng.random() < cfg.satisfaction_fraction:
                satisfaction = round(_sigmoid(logit + 0.5 * rng.normal()), 3)
        else:
            ratio = 0.05 * rng.random()  # autoplay preview before scrolling on
        event = WatchEvent(
            event_id=f"s{cfg.seed}-w{self._watch_seq:09d}",
            user_id=world.user_ids[user],
            video_id=video.video_id,
            ts=self.now_ms,
            watch_time_s=round(ratio * video.duration_s, 1),
            video_duration_s=video.duration_s,
            clicked=clicked,
            surface=surface,
            context_video_id=None if first else world.videos[session.prev_video].video_id,
            satisfaction=satisfaction,
        )
        self._watch_seq += 1
        session.prev_video, session.prev_topic = video_index, video.topic
        if rng.random() * cfg.mean_session_length < 1.0:
            self._sessions[slot] = _Session(world.sample_user(rng))

        rec = SimRecord(
            self.watch_topic, event.user_id.encode(), _encode(event), VALID, self.now_ms
        )
        if cfg.out_of_order_fraction > 0 and self.delay_rng.random() < cfg.out_of_order_fraction:
            delay = 1 + int(self.delay_rng.integers(max(1, cfg.max_delay_ms)))
            heapq.heappush(self._held, (self.clock_ms + delay, self._watch_seq, rec))
            self.delayed += 1
            return
        yield rec
        yield from self._maybe_bad()

    def _maybe_bad(self) -> Iterator[SimRecord]:
        cfg, rng = self.cfg, self.bad_rng
        if cfg.bad_fraction <= 0 or rng.random() >= cfg.bad_fraction:
            return
        if not self._bad_order:  # shuffled round robin: every kind shows up early
            kinds = sorted(BAD_KINDS)
            self._bad_order = [kinds[int(i)] for i in rng.permutation(len(kinds))]
        reason = self._bad_order.pop()
        world = self.world
        user = int(rng.integers(cfg.num_users))
        video = world.videos[int(rng.integers(len(world.videos)))]
        watch = schema.to_dict(
            WatchEvent(
                event_id=f"s{cfg.seed}-b{self._bad_seq:07d}",
                user_id=world.user_ids[user],
                video_id=video.video_id,
                ts=self.now_ms,
                watch_time_s=round(0.5 * video.duration_s, 1),
                video_duration_s=video.duration_s,
                clicked=True,
                surface="home",
            )
        )
        upload = schema.to_dict(world.upload_event(video))
        upload["video_id"] = f"vbad{self._bad_seq:07d}"
        self._bad_seq += 1
        target, value = make_bad(reason, watch, upload)
        if target == WATCH:
            yield SimRecord(self.watch_topic, watch["user_id"].encode(), value, reason, self.now_ms)
        else:
            yield SimRecord(
                self.upload_topic, upload["video_id"].encode(), value, reason, self.now_ms
            )

    # ------------------------------------------------------------------ ground truth

    def ground_truth(self) -> dict[str, Any]:
        """The latent world as drawn so far, with the config and what was produced.

        Layout: {"format", "seed", "config", "start_ms", "now_ms", "records",
        "counts": {kind: n}, "delayed", "topics": [{"index", "name", "prior", "centroid",
        "words"}], "projections": {modality: [[...]]}, "users": [{"user_id",
        "interests"}], "videos": [{"video_id", "topic", "topic_name", "topic_mixture",
        "latent", "popularity", "duration_s", "channel", "upload_ts"}]}.
        """
        return {
            "format": TRUTH_FORMAT,
            "seed": self.cfg.seed,
            "config": self.cfg.to_json(),
            "start_ms": self.cfg.start_epoch_ms,
            "now_ms": self.now_ms,
            "records": self.emitted,
            "counts": dict(sorted(self.counts.items())),
            "delayed": self.delayed,
            **self.world.ground_truth(),
        }


def generate(cfg: SimulatorConfig, topics: TopicNames | None = None) -> Iterator[SimRecord]:
    """The records of a seeded run (see `Simulator.records`)."""
    return Simulator(cfg, topics).records()


def write_ground_truth(path: Path | str, truth: dict[str, Any]) -> Path:
    """Write `truth` as JSON atomically (a reader never sees a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(truth, fh, separators=(",", ":"))
    os.replace(tmp, path)
    return path


def load_ground_truth(path: Path | str) -> dict[str, Any]:
    with Path(path).open(encoding="utf-8") as fh:
        truth = json.load(fh)
    if truth.get("format") != TRUTH_FORMAT:
        raise ValueError(f"{path}: format {truth.get('format')!r} is not {TRUTH_FORMAT!r}")
    return truth
