"""`plum up --data movielens`: the stack driven by a MovieLens data set through the
replay topics instead of the simulator, for real.

A small MovieLens directory (the real files' layout) stands in for the data set; the
demo, on free ports with a private state directory, fetches nothing (the files are
there), imports it into the replay topics, trains the tokenizer on its films, starts the
SID service and the Flink job, and plays the replay topics into the live topics. Then:
every film and every rating is played once into the live topics, every film gets a SID,
the Flink job's committed examples and pairs equal the reference pipeline's on the
played watches (up to the cut the committed output shows complete), a second demo on the
same state imports nothing and plays nothing again, a simulator demo on that state is
refused, and SIGTERM stops everything with exit 0."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from plum.config import REPO_ROOT, load_section
from plum.ports import free_ports
from streams.contracts import schema
from streams.contracts.topics import SID_ASSIGNMENTS, UPLOADS, WATCHES, TopicNames
from streams.flink.job import FlinkConfig
from streams.flink.reference import RefParams, run_reference
from streams.kafka.clients import read_all
from tests.flink_support import MARKERS_SETTLE_S, TEST_CONFIG, Cut, compare, read_outputs
from tests.movielens_support import write_movielens_sample
from tests.stack_support import kill_leftovers, stack_processes

pytestmark = [pytest.mark.integration, pytest.mark.slow]

log = logging.getLogger(__name__)

FILMS = 120
USERS = 30
T0 = 880_000_000  # unix seconds, late 1997
DEADLINE_S = 420.0
STOP_DEADLINE_S = 120.0


def sample(directory: Path) -> Path:
    """FILMS films; users come in twos that rate the same ten films in the same seconds
    (so the Flink job's windows see each pair twice: min_count), in three sessions days
    apart, 20 s between ratings, the first two of a session in the same second (a tie)."""
    genres = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]
    items = [
        (str(i), f"Film {i} ({1950 + i % 48})", str(1950 + i % 48), f"{genres[i % 6]} Drama")
        for i in range(1, FILMS + 1)
    ]
    ratings = []
    for u in range(1, USERS + 1):
        twin = (u + 1) // 2
        for session in range(3):
            start = T0 + session * 86_400 * 2 + twin * 977
            for j in range(10):
                item = (twin * 13 + session * 31 + j * 7) % FILMS + 1
                second = start + max(0, j - 1) * 20
                ratings.append((str(u), str(item), str(1 + (u + j) % 5), str(second)))
    return write_movielens_sample(directory, items, ratings)


def demo_env(state: Path, data_dir: Path) -> dict[str, str]:
    names = ("kafka", "controller", "flink", "flink_rest", "flink_job", "sid", "replay")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    overrides = {
        "PLUM_STATE_DIR": state,
        "PLUM_KAFKA__PORT": ports["kafka"],
        "PLUM_KAFKA__CONTROLLER_PORT": ports["controller"],
        "PLUM_FLINK__METRICS_PORT": ports["flink"],
        "PLUM_FLINK__REST_PORT": ports["flink_rest"],
        "PLUM_FLINK__JOB_METRICS_PORT": ports["flink_job"],
        "PLUM_SID_SERVICE__METRICS_PORT": ports["sid"],
        "PLUM_DEMO__REPLAY_METRICS_PORT": ports["replay"],
        "PLUM_DEMO__COMPONENTS": "simulator,flink,sid_service",  # the player takes its place
        "PLUM_DEMO__MOVIELENS_DIR": data_dir,
        "PLUM_DEMO__REPLAY_SPEED": 0.0,  # no event-time pacing: rate only
        "PLUM_DEMO__RATE": 200.0,
        "PLUM_DEMO__TOKENIZER_STEPS": 60,
        "PLUM_TOKENIZER__CODEBOOK_BASE": 16,
        "PLUM_DEMO__GRACE_S": 60.0,
    }
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def start(env: dict[str, str], log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "plum.cli", "up", "--config", str(TEST_CONFIG), *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail("the demo did not stop within the deadline after SIGTERM")
    return proc.returncode


def plum(env: dict[str, str], *words: str) -> subprocess.CompletedProcess[str]:
    """`plum WORDS --config test.toml` to its end, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "plum.cli", *words, "--config", str(TEST_CONFIG)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def wait_for(what: str, check, proc, log_path: Path, deadline_s: float = DEADLINE_S):
    deadline = time.monotonic() + deadline_s
    while True:
        got = check()
        if got:
            return got
        if proc.poll() is not None:
            pytest.fail(f"the demo exited ({proc.returncode}) before {what}:\n{tail(log_path)}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {deadline_s:.0f} s:\n{tail(log_path)}")
        time.sleep(2.0)


def wait_for_play(proc: subprocess.Popen[bytes], log_path: Path) -> None:
    """Until the demo logs that the replay topics are played to their end."""
    wait_for(
        "end of the play",
        lambda: "played to their end" in log_path.read_text(errors="replace"),
        proc,
        log_path,
    )


def tail(path: Path, n: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture()
def state(tmp_path) -> Iterator[Path]:
    """The demo's private state directory; whatever still runs with it at the end (a
    failed test's broker, kept with --keep-kafka) is killed."""
    state = tmp_path / "state"
    yield state
    left = kill_leftovers(state)
    if left:
        log.warning("killed processes the movielens demo left running: %s", left)


@pytest.mark.timeout(900)
def test_the_stack_runs_on_movielens_through_the_replay_topics(tmp_path, state):
    data_dir = sample(tmp_path / "ml")
    env = demo_env(state, data_dir)
    bootstrap = f"127.0.0.1:{env['PLUM_KAFKA__PORT']}"
    log_path = tmp_path / "demo.log"
    proc = start(env, log_path, "--data", "movielens", "--keep-kafka")
    try:
        wait_for_play(proc, log_path)
        uploads = [schema.decode_upload(r.value) for r in read_all(bootstrap, UPLOADS)]
        watches = read_all(bootstrap, WATCHES, timeout_s=60)
        assert sorted(u.video_id for u in uploads) == sorted(
            f"ml100k-m{i}" for i in range(1, FILMS + 1)
        )
        assert len(watches) == USERS * 30
        assert Counter(r.value for r in watches).most_common(1)[0][1] == 1

        def every_film_has_a_sid():
            keys = {r.key for r in read_all(bootstrap, SID_ASSIGNMENTS, timeout_s=30)}
            return len(keys) == FILMS

        wait_for("SID for every film", every_film_has_a_sid, proc, log_path)

        def examples_released():
            outs = read_outputs(bootstrap, TopicNames())
            return outs if outs["sft"] and outs["cooc"] else None

        cut = Cut.of(wait_for("examples and pairs", examples_released, proc, log_path))
        time.sleep(MARKERS_SETTLE_S)
        outs = read_outputs(bootstrap, TopicNames())
        records = sorted((r.partition, r.offset, r.value) for r in watches)
        params = RefParams.from_flink_config(
            load_section(FlinkConfig, TEST_CONFIG, "flink", env=env)
        )
        ref = run_reference(records, params, int(time.time() * 1000), None, WATCHES)
        got, want = cut.outputs(outs), cut.expected(ref)
        log.info(
            "movielens demo: %d watches, examples %d of %d (cut), pairs %d of %d",
            len(records),
            len(got["sft"]),
            len(outs["sft"]),
            len(got["cooc"]),
            len(outs["cooc"]),
        )
        assert want.examples and want.pairs and not want.dead
        compare(got, want)
    finally:
        code = stop(proc)
    assert code == 0, tail(log_path)

    # the same state again: nothing imported, nothing played twice
    again = tmp_path / "again.log"
    proc = start(env, again, "--data", "movielens", "--keep-kafka")
    try:
        wait_for_play(proc, again)
    finally:
        code = stop(proc)
    text = again.read_text(errors="replace")
    assert code == 0, tail(again)
    assert "not imported again" in text and "played to their end" in text, tail(again)
    replay_log = (state / "demo" / "logs" / "replay.log").read_text(errors="replace")
    assert "replay play plum-demo-replay: 0 records played" in replay_log
    assert len(read_all(bootstrap, WATCHES, timeout_s=60)) == USERS * 30
    # ... and a simulator demo is refused on it, with the reason, touching nothing
    refused = plum(env, "up")
    assert refused.returncode == 1 and "'movielens' data" in refused.stderr
    assert len(read_all(bootstrap, WATCHES, timeout_s=60)) == USERS * 30  # broker up
    down = plum(env, "kafka", "down")
    assert down.returncode == 0, down.stderr
    assert stack_processes(state) == []
