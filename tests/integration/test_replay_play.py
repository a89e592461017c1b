"""`plum replay play` against the real broker: a MovieLens sample imported into the
replay topics is played into the live topics whole, exactly once, uploads before the
watches of their film, stamped with the time it was played; an injected failure before a
commit and a rerun leave every record exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from plum.config import REPO_ROOT
from streams.contracts.schema import decode_upload, decode_watch
from streams.datasets import cli as data_cli
from streams.datasets import movielens as ml
from streams.kafka.clients import read_all
from streams.replay.copy import ORIGIN_HEADER
from streams.replay.play import PlayOptions, PlayRequest, play
from tests.movielens_support import write_movielens_sample

pytestmark = pytest.mark.integration

ITEMS = [
    (str(i), f"Film {i} (199{i % 10})", f"199{i % 10}", "Drama Comedy" if i % 2 else "Action")
    for i in range(1, 13)
]
T0 = 880_000_000  # unix seconds, 1997


def ratings() -> list[tuple[str, str, str, str]]:
    """Nine users rating films in bursts; several ratings share a second (ties)."""
    out = []
    for u in range(1, 10):
        for j in range(8):
            item = (u * 5 + j * 7) % 12 + 1
            second = T0 + u * 600 + (j // 3) * 40  # three ratings in each second
            out.append((str(u), str(item), str(1 + (u + j) % 5), str(second)))
    return out


@pytest.fixture()
def imported(kafka_bootstrap, topics, tmp_path) -> data_cli.ImportCounts:
    directory = write_movielens_sample(tmp_path / "ml", ITEMS, ratings())
    return data_cli.import_movielens(
        directory, kafka_bootstrap, topics, ml.MovieLensConfig(), fetch_script=Path("/absent")
    )


def routes(topics) -> tuple[tuple[str, str], ...]:
    return ((topics.uploads_replay, topics.uploads), (topics.watches_replay, topics.watches))


def stored(bootstrap: str, topic: str) -> list[tuple]:
    """(partition, key, value, headers without the origin, origin) in each partition's order."""
    out = []
    for r in read_all(bootstrap, topic, timeout_s=60):
        headers = list(r.headers or [])
        origins = [v.decode() for k, v in headers if k == ORIGIN_HEADER]
        rest = [(k, v) for k, v in headers if k != ORIGIN_HEADER]
        out.append((r.partition, r.key, r.value, rest, origins, r.timestamp))
    return out


def play_command(bootstrap: str, prefix: str, play_id: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "plum.cli", "replay", "play", "--id", play_id] + [
        "--bootstrap",
        bootstrap,
        "--topic-prefix",
        prefix,
        *extra,
    ]


def assert_played_exactly(bootstrap: str, topics, since_ms: int) -> None:
    for replay, live in routes(topics):
        want = read_all(bootstrap, replay, timeout_s=60)
        got = stored(bootstrap, live)
        origins = Counter(o for g in got for o in g[4])
        assert all(len(g[4]) == 1 for g in got), "each played record has one origin header"
        twice = [o for o, c in origins.items() if c > 1]
        assert not twice, f"played twice: {twice[:5]}"
        assert len(got) == len(want), f"{live}: {len(got)} played of {len(want)}"
        by_partition = {}
        for g in got:
            by_partition.setdefault(g[0], []).append(g)
        for p, records in by_partition.items():
            # partition p -> partition p, in the replay partition's order, bytes unchanged
            replayed = [r for r in want if r.partition == p]
            assert [g[4][0] for g in records] == [f"{replay}/{p}/{r.offset}" for r in replayed]
            assert [(g[1], g[2]) for g in records] == [(r.key, r.value) for r in replayed]
        assert all(g[5] >= since_ms for g in got), "played records carry the wall time"


def test_the_import_is_played_whole_in_event_time_order_and_a_rerun_plays_nothing(
    kafka_bootstrap, topics, topic_prefix, imported
):
    since_ms = int(time.time() * 1000) - 1
    t0 = time.monotonic()
    result = play(
        kafka_bootstrap, PlayRequest(routes(topics), "play-test", max_rate=400, batch_records=16)
    )
    seconds = time.monotonic() - t0
    assert result.finished and result.played == imported.total and result.earlier == 0
    assert result.transactions >= imported.total // 16
    # the rate cap holds: n records at 400/s cannot take less than (n - 1) / 400 s
    assert seconds >= (imported.total - 1) / 400
    assert_played_exactly(kafka_bootstrap, topics, since_ms)

    uploads = {decode_upload(g[2]).video_id: g[5] for g in stored(kafka_bootstrap, topics.uploads)}
    watches = [(decode_watch(g[2]), g[5]) for g in stored(kafka_bootstrap, topics.watches)]
    assert len(uploads) == len(ITEMS) and len(watches) == len(ratings())
    # the merge across topics: no watch is played before the upload of its film
    assert all(uploads[w.video_id] <= played_at for w, played_at in watches)

    again = subprocess.run(
        play_command(kafka_bootstrap, topic_prefix, "play-test"),
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    assert "0 records played" in again.stdout and f"({imported.total} played by" in again.stdout
    assert_played_exactly(kafka_bootstrap, topics, since_ms)


def test_a_failure_before_a_commit_leaves_nothing_and_a_rerun_plays_the_rest_once(
    kafka_bootstrap, topics, imported
):
    request = PlayRequest(routes(topics), "play-fail", batch_records=10)

    def fail_third(player):
        if player.result.transactions == 2:
            player.producer.flush()  # the records are on the broker, not committed
            raise RuntimeError("injected failure before commit")

    with pytest.raises(RuntimeError, match="injected"):
        play(kafka_bootstrap, request, PlayOptions(before_commit=fail_third))
    live = [r for _, t in routes(topics) for r in read_all(kafka_bootstrap, t, timeout_s=60)]
    assert 0 < len(live) <= 20
    raw = [
        r
        for _, t in routes(topics)
        for r in read_all(kafka_bootstrap, t, isolation_level="read_uncommitted")
    ]
    assert len(raw) > len(live)  # the failed transaction's records reached the log, aborted

    result = play(kafka_bootstrap, request)
    assert result.finished and result.earlier == len(live)
    assert result.played + len(live) == imported.total
    assert_played_exactly(kafka_bootstrap, topics, 0)


def test_a_play_stopped_by_sigterm_exits_0_and_a_rerun_finishes_it_once(
    kafka_bootstrap, topics, topic_prefix, imported, tmp_path
):
    log_path = tmp_path / "play.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            play_command(kafka_bootstrap, topic_prefix, "play-stop", "--max-rate", "60"),
            cwd=REPO_ROOT,
            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not read_all(kafka_bootstrap, topics.watches, timeout_s=30):
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "nothing played after 60 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_path.read_text()
    assert "stopped before the end; resume with --id play-stop" in text, text
    before = sum(len(read_all(kafka_bootstrap, t, timeout_s=30)) for _, t in routes(topics))
    assert 0 < before < imported.total  # stopped midway (~17 s of playing were left)

    result = play(kafka_bootstrap, PlayRequest(routes(topics), "play-stop"))
    assert result.finished and result.earlier == before
    assert result.played + before == imported.total
    assert_played_exactly(kafka_bootstrap, topics, 0)
