"""The loop closed with real processes: SID service -> publisher -> serving, trainer -> publisher.

One stack per module on the session broker (private topics): `plum tokenizer serve` gives
the videos their SIDs, a real `plum trainer run` writes orbax checkpoints, `plum serve`
answers over HTTP, and `plum publish once` / `plum publish run` gate, export and push.
The tests run in file order and build on each other's state (what a long-running
deployment would see): publish v1; admin and delta protocol; a NaN checkpoint rejected; a
corrupt artifact refused while v1 keeps answering; kill -9 of the publisher mid-push;
a new upload servable before any retrain; rollback; a SID version switch (reindex under a
second tokenizer) published with its model while a client asks in a loop.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from plum.checkpoints import CheckpointStore
from serving.artifact import ModelRepository
from serving.sid_delta import SidDelta
from streams.contracts import schema
from streams.contracts.topics import TopicNames, topic_set
from streams.kafka.admin import ensure_topics
from streams.kafka.reader import read_to_end
from tests.flink_support import JobProcess
from tests.metrics_support import catalogue_names, logged_metrics_port, scrape_until_complete
from tests.trainer_run_support import (
    LEVELS,
    TINY_TRAINER_CONFIG,
    VIDEOS,
    produce,
    sft_examples,
    tokenizer_checkpoint,
)
from trainer.config import TINY, VocabConfig
from trainer.cpt import CptConfig, build_corpus, train_cpt, vocab_for_corpus
from trainer.prompt import SidLookup

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-admin-token-" + uuid.uuid4().hex
DIM = 8

CONFIG = (
    TINY_TRAINER_CONFIG
    + """
[sid]
disambiguation_size = 16

[sid_service]
batch_size = 64
batch_time_ms = 50
metrics_port = 0

[trainer_cpt]
steps = 2
batch_size = 4
seq_len = 48

[serving]
port = 0
beam_widths = [10, 32]
batch_sizes = [1, 4]
max_wait_ms = 2.0
metrics_port = 0
log_every_s = 2.0

[publisher]
publish_every_s = 1.0
deltas_every_s = 0.3
gate_examples = 32
gate_min_examples = 8
gate_margin = 1.0
metrics_port = -1
log_every_s = 2.0
"""
)


def _plum(*args: str) -> list[str]:
    return [sys.executable, "-m", "plum.cli", *args]


def _poll(what: str, check, timeout_s: float, interval_s: float = 0.2, proc=None):
    """`check()` until it returns something truthy; fail naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        if proc is not None and not proc.alive():
            raise AssertionError(
                f"{what}: process exited {proc.proc.returncode}; log {proc.log_path}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout_s} s")
        time.sleep(interval_s)


def _produce_uploads(bootstrap: str, topic: str, videos: list[str], rng) -> None:
    """Uploads of `videos` (random DIM-d text embeddings), keyed by video id."""
    values = [schema.encode(_upload(v, rng)) for v in videos]
    produce(bootstrap, topic, values, keys=[v.encode() for v in videos])


def _upload(video: str, rng: np.random.Generator) -> schema.UploadEvent:
    emb = tuple(float(x) for x in rng.normal(size=DIM))
    return schema.UploadEvent(
        video, 1_700_000_000_000, f"title {video}", "", "c", ("t",), 60.0, {"text": emb}
    )


@dataclass
class Stack:
    bootstrap: str
    prefix: str
    topics: TopicNames
    tmp: Path
    config: Path
    env: dict[str, str]
    index_path: Path
    serving: JobProcess
    url: str
    sid_service: JobProcess
    uploads_rng: np.random.Generator
    produced_examples: int = 0

    @property
    def run_dir(self) -> Path:
        return self.tmp / "run"

    @property
    def repo(self) -> ModelRepository:
        return ModelRepository(self.tmp / "models")

    def common(self) -> list[str]:
        return ["--config", str(self.config), "--bootstrap", self.bootstrap,
                "--topic-prefix", self.prefix]  # fmt: skip

    def publisher_args(self) -> list[str]:
        return [*self.common(), "--run-dir", str(self.run_dir), "--model-repo",
                str(self.tmp / "models"), "--state-dir", str(self.tmp / "publisher"),
                "--endpoint", self.url]  # fmt: skip

    def publish_once(self) -> dict:
        done = subprocess.run(
            _plum("publish", "once", *self.publisher_args()),
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        assert lines, f"plum publish once printed no JSON: {done.stdout[-2000:]}"
        return json.loads(lines[-1])

    def produce_examples(self, n: int) -> None:
        examples = sft_examples(self.produced_examples, n)
        self.produced_examples += n
        produce(self.bootstrap, self.topics.sft_examples, [schema.encode(e) for e in examples])

    def train(self, max_steps: int) -> None:
        """`plum trainer run` until max_steps (a checkpoint at that step), as a real process."""
        done = subprocess.run(
            _plum("trainer", "run", *self.common(), "--index", str(self.index_path),
                  "--cpt", str(self.tmp / "cpt"), "--run-dir", str(self.run_dir),
                  "--max-steps", str(max_steps)),
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-4000:]

    def upload(self, videos: list[str]) -> None:
        _produce_uploads(self.bootstrap, self.topics.uploads, videos, self.uploads_rng)

    def assignments(self) -> dict[str, schema.SidAssignment]:
        recs = read_to_end(self.bootstrap, self.topics.sid_assignments)
        out = {}
        for r in recs:
            a = schema.decode_sid_assignment(r.value)
            out[a.video_id] = a
        return out

    def status(self) -> dict:
        return httpx.get(f"{self.url}/v1/status", timeout=10).json()

    def retrieve(self, history: list[str], k: int, beam: int | None = None) -> httpx.Response:
        body = {"history": [{"video_id": v} for v in history], "k": k}
        if beam is not None:
            body["beam"] = beam
        return httpx.post(f"{self.url}/v1/retrieve", json=body, timeout=30)

    def admin(self, path: str, body: dict, token: str | None = TOKEN) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return httpx.post(f"{self.url}{path}", json=body, headers=headers, timeout=120)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, kafka_bootstrap):
    tmp = tmp_path_factory.mktemp("publish-serve")
    prefix = f"ps-{uuid.uuid4().hex[:6]}."
    ensure_topics(kafka_bootstrap, topic_set(prefix))
    topics = TopicNames.with_prefix(prefix)
    config = tmp / "stack.toml"
    config.write_text(CONFIG)
    env = dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        PLUM_SERVING__ADMIN_TOKEN=TOKEN,
        PLUM_SERVING__MODEL_REPO=str(tmp / "models"),
        PLUM_SERVING__PORT_FILE=str(tmp / "serving.port"),
        # the trainer writes its prompts in the next-item layout (the other integration
        # tests train in the default "target" layout); the gate and serving must follow
        # the checkpoint's layout
        PLUM_TRAINER_DATA__PROMPT_LAYOUT="sequence",
    )
    tok = tokenizer_checkpoint(tmp / "tok", items=64, dim=DIM)
    index_path = tmp / "sid-index.sqlite"
    common = ["--config", str(config), "--bootstrap", kafka_bootstrap, "--topic-prefix", prefix]
    sid_service = JobProcess(
        _plum("tokenizer", "serve", *common, "--checkpoint", str(tok), "--index", str(index_path)),
        tmp / "sid-service.log",
        env,
    )
    serving = JobProcess(_plum("serve", "--config", str(config)), tmp / "serving.log", env)
    procs = [sid_service, serving]
    try:
        rng = np.random.default_rng(1)
        _produce_uploads(kafka_bootstrap, topics.uploads, VIDEOS, rng)
        port_file = tmp / "serving.port"
        port = _poll(
            "serving's port file",
            lambda: port_file.exists() and port_file.read_text().strip(),
            120,
            proc=serving,
        )
        url = f"http://127.0.0.1:{int(port)}"
        st = Stack(kafka_bootstrap, prefix, topics, tmp, config, env, index_path, serving, url,
                   sid_service, rng)  # fmt: skip
        got = _poll("24 SID assignments", lambda: len(st.assignments()) >= 24 or None, 120,
                    interval_s=1.0, proc=sid_service)  # fmt: skip
        assert got
        # CPT in-process (its CLI is tested in test_trainer_run), from the SIDs the service gave
        sids = {v: a.sid for v, a in st.assignments().items()}
        version = next(iter(st.assignments().values())).sid_version
        uploads = [_upload(v, np.random.default_rng(0)) for v in VIDEOS]
        vocab = vocab_for_corpus(uploads, VocabConfig(300, 1, 16), LEVELS)
        corpus = build_corpus(uploads, [], SidLookup(version, sids), vocab, seq_len=48)
        model = dataclasses.replace(TINY, d_model=32, d_ff=64, max_len=64)
        train_cpt(CptConfig(steps=2, batch_size=4, seq_len=48), model, vocab, corpus, tmp / "cpt")
        st.produce_examples(40)
        st.train(max_steps=6)
        st.produce_examples(40)  # after the checkpoint: the gate's held-out slice
        yield st
    finally:
        for p in reversed(procs):
            p.stop()


def _served_ids(stack: Stack) -> set[str]:
    return set(stack.assignments())


def test_before_a_publish_serving_is_alive_but_not_ready(stack):
    assert httpx.get(f"{stack.url}/healthz", timeout=10).status_code == 200
    ready = httpx.get(f"{stack.url}/readyz", timeout=10)
    assert ready.status_code == 503
    assert ready.headers["content-type"].startswith("application/problem+json")
    assert stack.retrieve(["v1"], k=5).status_code == 503


def test_publish_once_puts_the_newest_checkpoint_in_serving(stack):
    decision = stack.publish_once()
    assert decision["publish"]["outcome"] == "published", decision
    status = stack.status()
    assert status["ready"] is True
    assert status["model"]["version"] == 1
    assert status["model"]["step"] == 6
    assert status["index"]["items"] == 24
    # trained in the sequence layout, so the version is served in it
    assert ModelRepository(stack.tmp / "models").manifest(1).prompt_layout == "sequence"
    assert status["model"]["prompt_layout"] == "sequence"
    resp = stack.retrieve(["v1", "v2", "v3"], k=10)
    assert resp.status_code == 200, resp.text
    items = resp.json()["items"]
    assert 0 < len(items) <= 10
    assert {it["video_id"] for it in items} <= _served_ids(stack)
    scores = [it["score"] for it in items]
    assert scores == sorted(scores, reverse=True)


def test_admin_calls_without_or_with_a_wrong_token_get_401_and_change_nothing(stack):
    before = stack.status()
    for token in (None, "wrong-" + TOKEN):
        for path, body in (
            ("/v1/admin/models", {"version": 1}),
            ("/v1/admin/rollback", {}),
            ("/v1/admin/sid-deltas", {"sid_version": "x", "from_seq": 0, "to_seq": 0,
                                      "assignments": []}),
        ):  # fmt: skip
            resp = stack.admin(path, body, token=token)
            assert resp.status_code == 401, (path, token, resp.text)
            assert resp.headers["content-type"].startswith("application/problem+json")
    after = stack.status()
    same = ("version", "step", "content_hash", "loaded_at_ms")
    assert {k: after["model"][k] for k in same} == {k: before["model"][k] for k in same}
    assert after["index"] == before["index"]


def test_the_same_delta_twice_changes_nothing_and_a_gap_gets_409(stack):
    from publisher.deltas import DeltaLog

    index = stack.status()["index"]
    log = DeltaLog(stack.tmp / "publisher" / "deltas.sqlite")
    try:
        last = log.delta(index["sid_version"], index["seq"] - 3, 3)
    finally:
        log.close()
    assert last.to_seq == index["seq"] and len(last.assignments) == 3
    for _ in range(2):  # already applied (the publisher sent it): nothing changes
        resp = stack.admin("/v1/admin/sid-deltas", last.to_json())
        assert resp.status_code == 200, resp.text
        assert resp.json()["applied"] == 0
    assert stack.status()["index"] == index
    gap = SidDelta.of(index["sid_version"], index["seq"] + 5, [("gap-video", (1, 1, 1, 0), 0, 0)])
    resp = stack.admin("/v1/admin/sid-deltas", gap.to_json())
    assert resp.status_code == 409, resp.text
    assert resp.json()["expected_seq"] == index["seq"]
    assert stack.status()["index"] == index


def _nan_checkpoint(run_dir: Path) -> int:
    """A copy of the newest trainer checkpoint with NaN parameters (and NaN optimizer state,
    their moving average included when the trainer keeps one: a diverged run), one step
    later."""
    store = CheckpointStore(run_dir, max_to_keep=None, async_save=False)
    try:
        step = store.latest_step()
        state, meta = store.restore_untyped(step)
        for part in ("params", "opt_state"):
            state[part] = _tree_map(_nan_floats, state[part])
        state["step"] = np.asarray(step + 1, np.int32)
        store.save(step + 1, state, meta)
        store.wait()
        return step + 1
    finally:
        store.close()


def _tree_map(fn, tree):
    if tree is None:  # an empty optimizer state (optax's EmptyState, read back untyped)
        return None
    if isinstance(tree, dict):
        return {k: _tree_map(fn, v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_tree_map(fn, v) for v in tree)
    return fn(np.asarray(tree))


def _nan_floats(a: np.ndarray) -> np.ndarray:
    return np.full_like(a, np.nan) if np.issubdtype(a.dtype, np.floating) else a


def test_a_nan_checkpoint_is_rejected_and_never_reaches_serving(stack):
    step = _nan_checkpoint(stack.run_dir)
    versions = stack.repo.versions()
    decision = stack.publish_once()
    assert decision["publish"]["outcome"] == "rejected", decision
    assert decision["publish"]["step"] == step
    assert "non_finite" in decision["publish"]["reason"]
    assert stack.repo.versions() == versions
    assert stack.status()["model"]["version"] == 1
    # decided once: the next cycle does not gate it again
    assert stack.publish_once()["publish"]["outcome"] in ("none", "nothing_new")
    shutil.rmtree(stack.run_dir / "checkpoints" / str(step))


def test_a_corrupt_artifact_fails_to_load_and_the_old_version_keeps_answering(stack):
    repo = stack.repo
    bad = repo.path(2)
    shutil.copytree(repo.path(1), bad)
    params = sorted(p for p in (bad / "params").rglob("*") if p.is_file() and p.stat().st_size)
    params[-1].write_bytes(params[-1].read_bytes()[:-8] + b"corrupt!")
    answers: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                r = client.post(f"{stack.url}/v1/retrieve", json={"history": [{"video_id": "v3"}]})
                answers.append(r.status_code)

    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        _poll("requests before the load", lambda: len(answers) >= 3, 30)
        resp = stack.admin("/v1/admin/models", {"version": 2})
        n_at_load = len(answers)
        _poll("requests after the load", lambda: len(answers) >= n_at_load + 3, 30)
    finally:
        stop.set()
        worker.join()
    shutil.rmtree(bad)
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert answers and set(answers) == {200}, f"answers during the failed load: {set(answers)}"
    status = stack.status()
    assert status["model"]["version"] == 1
    assert status["last_error"] is not None and status["last_error"]["version"] == 2


def test_kill_9_of_the_publisher_mid_push_and_a_restart_end_on_the_new_version(stack):
    stack.produce_examples(24)
    stack.train(max_steps=9)
    stack.produce_examples(24)
    stack.upload(["late-a", "late-b"])
    args = _plum("publish", "run", *stack.publisher_args())
    log_path = stack.tmp / "publisher-1.log"
    first = JobProcess(args, log_path, stack.env)
    try:
        # kill -9 as soon as it has decided to publish (the ledger's target is written
        # before any push): mid-push, or before it, never after a clean finish
        _poll(
            "the publisher's decision to publish version 2",
            lambda: "publishing version 2" in log_path.read_text(),
            240,
            interval_s=0.05,
            proc=first,
        )
    finally:
        first.kill()
    _poll("SIDs of the late uploads", lambda: {"late-a", "late-b"} <= _served_ids(stack), 120)
    expected = _served_ids(stack)
    second_log = stack.tmp / "publisher-2.log"
    second = JobProcess(args, second_log, stack.env)
    try:
        # serving may finish the load the killed publisher asked for by itself; the restarted
        # publisher must come up, reconcile and leave it there (or push it again)
        _poll("the restarted publisher", lambda: "publisher: " in second_log.read_text(), 240,
              proc=second)  # fmt: skip
        _poll(
            "serving on version 2 with every SID",
            lambda: (
                (s := stack.status())["model"]["version"] == 2
                and s["index"]["items"] == len(expected)
            ),
            240,
            interval_s=0.5,
            proc=second,
        )
    finally:
        assert second.stop() == 0
    status = stack.status()
    assert status["model"]["step"] == 9
    assert status["index"]["seq"] == len(expected)  # each assignment applied exactly once
    assert stack.repo.versions() == [1, 2]


def test_a_new_upload_is_servable_before_any_retrain(stack):
    publisher = JobProcess(
        _plum("publish", "run", *stack.publisher_args()), stack.tmp / "publisher-3.log", stack.env
    )
    try:
        status = stack.status()
        n = status["index"]["items"]
        everything = min(32, n + 1)  # k = beam >= the index: every servable video comes back
        assert "fresh-video" not in {
            it["video_id"] for it in stack.retrieve(["v1"], k=everything, beam=32).json()["items"]
        }
        uploaded = time.monotonic()
        stack.upload(["fresh-video"])

        def returned() -> bool:
            r = stack.retrieve(["v1", "v2"], k=everything, beam=32)
            return r.status_code == 200 and "fresh-video" in {
                it["video_id"] for it in r.json()["items"]
            }

        _poll("the new upload in /v1/retrieve", returned, 120, interval_s=0.2, proc=publisher)
        latency = time.monotonic() - uploaded
        print(f"upload -> returned by /v1/retrieve: {latency:.1f} s")
        after = stack.status()
        assert after["model"]["version"] == status["model"]["version"]  # no retrain, no new model
        assert after["index"]["items"] == n + 1
    finally:
        assert publisher.stop() == 0


def test_rollback_returns_serving_to_the_earlier_version_and_it_stays(stack):
    done = subprocess.run(
        _plum("publish", "rollback", *stack.publisher_args(), "--to", "1"),
        cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert stack.status()["model"]["version"] == 1
    decision = stack.publish_once()  # nothing new: version 2 is not pushed again
    assert decision["publish"]["outcome"] != "published"
    assert stack.status()["model"]["version"] == 1
    ids = {it["video_id"] for it in stack.retrieve(["v1"], k=10).json()["items"]}
    assert ids <= _served_ids(stack)


def test_serving_and_the_publisher_emit_every_catalogue_metric(stack):
    """A new checkpoint is gated (against the rolled-back-to version 1),
    published and pushed by a `plum publish run` with /metrics, while serving's own
    /metrics has seen every kind of request, load and delta above."""
    stack.produce_examples(24)
    stack.train(max_steps=12)
    stack.produce_examples(24)
    log_path = stack.tmp / "publisher-4.log"
    publisher = JobProcess(
        _plum("publish", "run", *stack.publisher_args(), "--metrics-port", "0"),
        log_path,
        stack.env,
    )
    try:
        _poll(
            "version 3 served",
            lambda: stack.status()["model"]["version"] == 3,
            240,
            interval_s=0.5,
            proc=publisher,
        )
        assert stack.status()["model"]["step"] == 12
        assert stack.retrieve(["never-uploaded", "v1"], k=5).json()["unknown_history"] == 1
        scrape_until_complete(logged_metrics_port(log_path), catalogue_names("publisher"))
        samples = dict(
            scrape_until_complete(
                logged_metrics_port(stack.serving.log_path), catalogue_names("serving")
            )
        )
    finally:
        assert publisher.stop() == 0
    assert samples["plum_serving_model_version"] == 3
    assert samples["plum_serving_unknown_history_total"] >= 1
    assert samples["plum_serving_upload_to_servable_seconds_count"] >= 1
    # the SID service's records carry a Kafka timestamp: SID assigned -> servable measured
    assert samples["plum_serving_sid_to_servable_seconds_count"] >= 1


def test_a_sid_version_switch_goes_out_with_its_model_and_serving_answers_throughout(stack):
    """Reindex under a second tokenizer, switch the index, train (the trainer follows the
    active version), publish: serving swaps (model, index) as one pair while a client asks
    in a loop; no request fails and each answer comes from one consistent pair."""
    before = stack.status()
    old_sid, old_version = before["model"]["sid_version"], before["model"]["version"]
    tok2 = tokenizer_checkpoint(stack.tmp / "tok2", items=48, dim=DIM)
    index_args = [*stack.common(), "--index", str(stack.index_path)]

    def plum(*args: str) -> str:
        done = subprocess.run(
            _plum(*args), cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
        return done.stdout

    out = plum("tokenizer", "reindex", *index_args, "--checkpoint", str(tok2))
    new_sid = out.split(" under ")[1].split(";")[0]
    assert new_sid != old_sid, out
    plum("tokenizer", "switch", *index_args, new_sid)
    stack.produce_examples(24)
    stack.train(max_steps=15)  # resumes and follows the index's active version
    stack.produce_examples(24)
    answers: list[tuple[bool, int, dict]] = []  # (sent after the switch was seen, status, body)
    switched = threading.Event()
    stop = threading.Event()

    def ask() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                after = switched.is_set()
                r = client.post(
                    f"{stack.url}/v1/retrieve",
                    json={"history": [{"video_id": "v1"}, {"video_id": "v3"}], "k": 5},
                )
                answers.append((after, r.status_code, r.json() if r.status_code == 200 else {}))

    worker = threading.Thread(target=ask)
    worker.start()
    try:
        _poll("requests before the switch", lambda: len(answers) >= 3, 30)
        decision = stack.publish_once()
        assert decision["publish"]["outcome"] == "published", decision
        status = _poll(
            "serving on the new sid_version",
            lambda: (s := stack.status())["model"]["sid_version"] == new_sid and s,
            120,
        )
        switched.set()
        n = len(answers)
        _poll("requests after the switch", lambda: len(answers) >= n + 3, 30)
    finally:
        stop.set()
        worker.join()
    assert {code for _, code, _ in answers} == {200}, [a for a in answers if a[1] != 200][:3]
    print(f"{len(answers)} requests across the SID version switch, all answered")
    new_version = status["model"]["version"]
    assert new_version > old_version and status["index"]["sid_version"] == new_sid
    pairs = {old_version: old_sid, new_version: new_sid}
    for after, _, doc in answers:
        assert pairs[doc["model_version"]] == doc["sid_version"], doc
        assert not after or doc["sid_version"] == new_sid, doc
    assert {doc["sid_version"] for _, _, doc in answers} == {old_sid, new_sid}
    # deltas of the old version are refused now: the switch came with the model
    old = SidDelta.of(old_sid, 10_000, [("old-video", (1, 1, 1, 0), 0, 0)])
    resp = stack.admin("/v1/admin/sid-deltas", old.to_json())
    assert resp.status_code == 409, resp.text
    assert resp.json()["sid_version"] == new_sid
