"""`plum probe`: users who just watched something ask serving for recommendations.

A synthetic client, as a blackbox prober is in production: it follows the live watch
topic from its end, keeps each user's newest watches, and at `rate_per_s` sends
`POST /v1/retrieve` for a recently active user with that history. It waits for
`/readyz` before asking, so a stack that is still warming up is not counted as failing.
Serving's own metrics (requests, latency by status) measure the answers; the probe logs
what it got. The demo runs it so the retrieval panels and alerts see real traffic.
"""

from __future__ import annotations

import argparse
import logging
import random
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass

import httpx

from plum.config import kafka_bootstrap
from plum.runtime import Runtime, RuntimeConfig, Step
from serving.config import MAX_BEAM, MAX_K, load_serving_config
from streams.contracts import schema
from streams.contracts.topics import TopicNames
from streams.kafka.source import TopicSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeConfig:
    url: str  # serving's base URL
    bootstrap: str
    watches_topic: str
    rate_per_s: float = 2.0  # retrieval requests per second
    k: int = 10
    beam: int = 10
    history: int = 20  # newest watches per user sent as the history
    users: int = 10_000  # users remembered (the least recently active are forgotten)
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.rate_per_s <= 0:
            raise ValueError(f"rate_per_s={self.rate_per_s} must be > 0")
        if not 1 <= self.k <= MAX_K or not 1 <= self.beam <= MAX_BEAM:
            raise ValueError(f"k={self.k}, beam={self.beam} must be in [1, {MAX_K}]")
        if self.history < 1 or self.users < 1:
            raise ValueError(f"history={self.history}, users={self.users} must be >= 1")


class RecentHistories:
    """Each user's newest watches, for the users seen most recently."""

    def __init__(self, per_user: int, users: int) -> None:
        self.per_user, self.users = per_user, users
        self._by_user: OrderedDict[str, deque[schema.WatchEvent]] = OrderedDict()

    def add(self, watch: schema.WatchEvent) -> None:
        q = self._by_user.pop(watch.user_id, None) or deque(maxlen=self.per_user)
        q.append(watch)
        self._by_user[watch.user_id] = q  # most recent last
        while len(self._by_user) > self.users:
            self._by_user.popitem(last=False)

    def __len__(self) -> int:
        return len(self._by_user)

    def request(self, user_id: str, k: int, beam: int) -> dict:
        history = [
            {"video_id": w.video_id, "watch_ratio": min(w.watch_ratio, 10.0), "ts": w.ts}
            for w in self._by_user[user_id]
        ]
        return {"history": history, "k": k, "beam": beam}

    def recent_user(self, rng: random.Random, window: int = 100) -> str:
        """A user among the `window` most recently active."""
        recent = list(self._by_user)[-window:]
        return rng.choice(recent)


class RetrievalProbe:
    """The probe as a runtime component (a step: read watches, send the requests due)."""

    def __init__(self, cfg: ProbeConfig, seed: int = 0) -> None:
        self.cfg = cfg
        self.histories = RecentHistories(cfg.history, cfg.users)
        self.outcomes: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._source: TopicSource | None = None
        self._client: httpx.Client | None = None
        self._sent = 0
        self._t0 = time.monotonic()

    def start(self) -> None:
        self._source = TopicSource(self.cfg.bootstrap, self.cfg.watches_topic, start_from="latest")
        self._client = httpx.Client(base_url=self.cfg.url, timeout=self.cfg.timeout_s)
        self._t0 = time.monotonic()

    def _read_watches(self) -> None:
        for record in self._source.take(1000, 0.2):
            try:
                self.histories.add(schema.decode_watch(record.value))
            except schema.ValidationError:
                continue  # malformed input is the Flink job's to dead-letter, not ours

    def _ready(self) -> bool:
        try:
            return self._client.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def step(self, stop: threading.Event) -> Step:
        self._read_watches()
        if not len(self.histories) or not self._ready():
            stop.wait(1.0)
            self._t0, self._sent = time.monotonic(), 0  # the rate counts from readiness
            return Step(done=0)
        due = int((time.monotonic() - self._t0) * self.cfg.rate_per_s) - self._sent
        done = 0
        for _ in range(max(0, min(due, 50))):
            user = self.histories.recent_user(self._rng)
            body = self.histories.request(user, self.cfg.k, self.cfg.beam)
            try:
                answer = self._client.post("/v1/retrieve", json=body)
                self.outcomes[str(answer.status_code)] += 1
            except httpx.HTTPError as exc:
                self.outcomes[type(exc).__name__] += 1
            self._sent += 1
            done += 1
        if done == 0:
            stop.wait(1.0 / self.cfg.rate_per_s)
        return Step(done=done)

    def checkpoint(self) -> None:
        pass

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._source is not None:
            self._source.close()

    def describe(self) -> str:
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(self.outcomes.items())) or "none yet"
        return f"{len(self.histories)} users followed; answers {answers}"


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="plum probe",
        description="ask serving for recommendations as users who just watched something",
    )
    parser.add_argument("--config", help="TOML config (default $PLUM_CONFIG or configs/demo.toml)")
    parser.add_argument("--bootstrap", help="Kafka bootstrap (default: [kafka] of the config)")
    parser.add_argument("--url", help="serving base URL (default: [serving] host and port)")
    parser.add_argument("--topic-prefix", default="", help="prefix of the topic names")
    parser.add_argument("--rate", type=float, default=2.0, help="requests per second")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--beam", type=int, default=10)
    args = parser.parse_args(argv)
    serving = load_serving_config(args.config)
    try:
        cfg = ProbeConfig(
            url=args.url or serving.base_url,
            bootstrap=args.bootstrap or kafka_bootstrap(args.config),
            watches_topic=TopicNames.with_prefix(args.topic_prefix).watches,
            rate_per_s=args.rate,
            k=args.k,
            beam=args.beam,
        )
    except ValueError as exc:
        parser.error(str(exc))
    runtime = Runtime(
        RetrievalProbe(cfg),
        RuntimeConfig(name="probe", unit="requests", progress_every_s=30.0),
    )
    runtime.run()
    return 0
