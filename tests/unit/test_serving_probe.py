"""The retrieval probe: histories from the watch stream, requests only once serving is
ready, at its rate, each a valid /v1/retrieve body."""

from __future__ import annotations

import json
import random
import threading

import httpx

from plum.batch_cycle import Record
from serving.probe import ProbeConfig, RecentHistories, RetrievalProbe
from streams.contracts import schema


def watch(i: int, user: str, video: str) -> schema.WatchEvent:
    return schema.WatchEvent(
        event_id=f"e{i}",
        user_id=user,
        video_id=video,
        ts=1_700_000_000_000 + i,
        watch_time_s=30.0,
        video_duration_s=60.0,
        clicked=True,
        surface="home",
    )


class ListSource:
    def __init__(self, values: list[bytes]) -> None:
        self.values = values

    def take(self, n: int, _timeout_s: float) -> list[Record]:
        got, self.values = self.values[:n], self.values[n:]
        return [Record("w", 0, i, v, 0) for i, v in enumerate(got)]

    def close(self) -> None:
        pass


def test_histories_keep_each_users_newest_watches_and_forget_the_least_recent_user():
    h = RecentHistories(per_user=2, users=2)
    for i, (user, video) in enumerate([("a", "v1"), ("a", "v2"), ("b", "v3"), ("a", "v4")]):
        h.add(watch(i, user, video))
    assert [x["video_id"] for x in h.request("a", 10, 10)["history"]] == ["v2", "v4"]
    h.add(watch(9, "c", "v5"))  # b was the least recently active
    assert len(h) == 2 and h.recent_user(random.Random(0), window=1) == "c"
    body = h.request("a", 5, 20)
    assert body["k"] == 5 and body["beam"] == 20 and body["history"][0]["watch_ratio"] == 0.5


def test_the_probe_asks_only_once_serving_is_ready_and_skips_malformed_watches():
    ready = {"ok": False}
    bodies: list[dict] = []

    def serving(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/readyz":
            return httpx.Response(200 if ready["ok"] else 503)
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={"items": []})

    cfg = ProbeConfig(url="http://serving", bootstrap="unused:1", watches_topic="w", rate_per_s=50)
    probe = RetrievalProbe(cfg)
    probe._source = ListSource(
        [schema.encode(watch(i, f"u{i % 3}", f"v{i}")) for i in range(6)] + [b"{not json"]
    )
    probe._client = httpx.Client(base_url=cfg.url, transport=httpx.MockTransport(serving))
    stop = threading.Event()
    assert probe.step(stop).done == 0 and bodies == []  # not ready: nothing asked
    assert len(probe.histories) == 3  # the malformed record was skipped
    ready["ok"] = True
    sent = 0
    for _ in range(20):
        sent += probe.step(stop).done
    assert sent == len(bodies) > 0 and probe.outcomes["200"] == sent
    assert all(b["history"] and b["k"] == 10 for b in bodies)
    assert "3 users followed" in probe.describe()
