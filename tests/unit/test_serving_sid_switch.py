"""A SID version switch in serving: a model of a new sid_version arrives with its own
complete index and replaces the served (model, index) pair as one unit, with requests
answered throughout, each by one consistent pair; deltas of the old version are refused
after it; an incomplete new index is refused and the old pair keeps serving; a rollback
across the switch restores the old pair with its deltas."""

import threading

import pytest

from serving.artifact import SWITCH_MIN_COVERAGE, snapshot_of, switch_shortfall
from serving.sid_delta import SidDelta
from tests.serving_support import (
    ADMIN,
    BASE_TS,
    delta,
    serving_stack,
    sid,
    video_id,
)

OLD, NEW = "v1", "sidv2"
SHIFT = 24  # under NEW, video i has the SID video i + 24 has under OLD: every SID differs


def new_sid(i: int) -> tuple[int, ...]:
    return sid(i + SHIFT)


def new_rows(start: int, stop: int) -> list[tuple[str, tuple[int, ...], int, int]]:
    return [(video_id(i), new_sid(i), BASE_TS + i * 1000, 0) for i in range(start, stop)]


def new_snapshot(n_videos: int, seq: int | None = None):
    """Videos v0 .. v{n-1} under NEW (the reindex of the same videos)."""
    return snapshot_of(
        NEW, n_videos if seq is None else seq, [r[:3] for r in new_rows(0, n_videos)]
    )


@pytest.fixture
def stack(tmp_path):
    """Serving model version 2 with the OLD index v0 .. v15 (seq 16)."""
    with serving_stack(tmp_path) as s:
        yield s


def load(client, version: int):
    return client.post("/v1/admin/models", json={"version": version}, headers=ADMIN)


def retrieve(client, history=("v1", "v2")):
    return client.post(
        "/v1/retrieve", json={"history": [{"video_id": v} for v in history], "k": 5, "beam": 10}
    )


def assert_consistent(doc: dict, pairs: dict[int, str]) -> None:
    """The answer comes from one (model, index) pair: the model version goes with its
    sid_version, and every item's SID is that version's SID of the item."""
    assert pairs[doc["model_version"]] == doc["sid_version"], doc
    of = new_sid if doc["sid_version"] == NEW else sid
    for item in doc["items"]:
        i = int(item["video_id"][1:])
        assert tuple(item["sid"]) == of(i), (doc["sid_version"], item)


def test_a_complete_new_version_switches_model_and_index_as_one_pair(stack):
    client = stack.client()
    v3 = stack.tiny.write_version(snapshot=new_snapshot(16))
    r = load(client, v3.version)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert (doc["model"]["version"], doc["model"]["sid_version"]) == (3, NEW)
    assert doc["index"] == {"sid_version": NEW, "seq": 16, "items": 16}
    answer = retrieve(client).json()
    assert (answer["model_version"], answer["sid_version"], answer["index_seq"]) == (3, NEW, 16)
    assert_consistent(answer, {2: OLD, 3: NEW})


def test_requests_during_the_switch_all_succeed_each_from_one_pair(stack):
    v3 = stack.tiny.write_version(snapshot=new_snapshot(16))
    answers: list[tuple[bool, dict]] = []  # (sent after the load answered, the answer)
    failures: list[str] = []
    swapped = threading.Event()
    stop = threading.Event()

    def ask() -> None:
        client = stack.client()
        n = 0
        while not stop.is_set():
            after_swap = swapped.is_set()
            r = retrieve(client, history=(f"v{n % 16}", f"v{(n + 5) % 16}"))
            n += 1
            if r.status_code != 200:
                failures.append(f"{r.status_code} {r.text}")
            else:
                answers.append((after_swap, r.json()))

    def wait_for(n: int) -> None:
        for _ in range(6000):  # at most 60 s
            if len(answers) >= n or failures:
                return
            stop.wait(0.01)
        raise AssertionError(f"only {len(answers)} answers of {n} within 60 s")

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        wait_for(6)  # the old pair answers first
        r = load(stack.client(), v3.version)  # built and warmed while the threads ask
        assert r.status_code == 200, r.text
        swapped.set()
        wait_for(len(answers) + 9)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []
    for _, doc in answers:
        assert_consistent(doc, {2: OLD, 3: NEW})
    assert OLD in {doc["sid_version"] for _, doc in answers}
    late = [doc["sid_version"] for after_swap, doc in answers if after_swap]
    assert late and set(late) == {NEW}  # sent after the swap: the new pair only


def test_old_version_deltas_are_refused_after_the_switch_and_new_ones_applied(stack):
    client = stack.client()
    assert (
        load(client, stack.tiny.write_version(snapshot=new_snapshot(16)).version).status_code == 200
    )

    def post(d: SidDelta):
        return client.post("/v1/admin/sid-deltas", json=d.to_json(), headers=ADMIN)

    r = post(delta(16, 17, sid_version=OLD))
    assert r.status_code == 409, r.text
    doc = r.json()
    assert (doc["sid_version"], doc["expected_seq"]) == (NEW, 16)
    assert OLD in doc["detail"] and NEW in doc["detail"]
    assert stack.metrics.value("plum_serving_deltas_total", outcome="gap") == 1
    r = post(SidDelta.of(NEW, 16, new_rows(16, 18)))
    assert r.json() == {"sid_version": NEW, "seq": 18, "applied": 2}
    assert stack.slot.served.index.sid_of("v17") == new_sid(17)


@pytest.mark.parametrize(
    ("snap", "why"),
    [
        (lambda: new_snapshot(8), "holds 8 of the 16 videos served"),
        (lambda: new_snapshot(16, seq=20), "numbered to seq 20 but holds 16"),
    ],
    ids=["missing-videos", "not-dense"],
)
def test_a_new_version_without_a_complete_index_is_refused_and_the_old_pair_serves(
    stack, snap, why
):
    client = stack.client()
    before = stack.slot.served
    v3 = stack.tiny.write_version(snapshot=snap())
    r = load(client, v3.version)
    assert r.status_code == 422, r.text
    assert why in r.json()["detail"] and "incomplete" in r.json()["detail"]
    assert stack.slot.served is before
    status = client.get("/v1/status").json()
    assert (status["model"]["version"], status["index"]["sid_version"]) == (2, OLD)
    assert status["last_error"]["action"] == "load" and status["last_error"]["version"] == 3
    answer = retrieve(client)
    assert answer.status_code == 200 and answer.json()["sid_version"] == OLD
    assert_consistent(answer.json(), {2: OLD})
    # old-version deltas keep flowing to the old pair
    r = client.post("/v1/admin/sid-deltas", json=delta(16, 17).to_json(), headers=ADMIN)
    assert r.json() == {"sid_version": OLD, "seq": 17, "applied": 1}


def test_rollback_across_the_switch_restores_the_old_pair_with_its_deltas(stack):
    client = stack.client()
    stack.slot.apply_delta(delta(16, 18))  # the old index moved past its snapshot (16)
    v3 = stack.tiny.write_version(snapshot=new_snapshot(18))
    assert load(client, v3.version).status_code == 200
    stack.slot.apply_delta(SidDelta.of(NEW, 18, new_rows(18, 20)))  # the new one moves on too
    r = client.post("/v1/admin/rollback", headers=ADMIN)
    assert r.status_code == 200, r.text
    doc = r.json()
    # an older version is not held to the new index's coverage (20 > its 18 videos)
    assert (doc["model"]["version"], doc["index"]) == (
        2,
        {"sid_version": OLD, "seq": 18, "items": 18},
    )
    assert_consistent(retrieve(client).json(), {2: OLD})
    r = client.post("/v1/admin/sid-deltas", json=delta(18, 19).to_json(), headers=ADMIN)
    assert r.json() == {"sid_version": OLD, "seq": 19, "applied": 1}
    # and forward again: the new version's index comes back with its deltas
    assert load(client, v3.version).json()["index"] == {"sid_version": NEW, "seq": 20, "items": 20}


def test_a_switch_tolerates_the_newest_few_videos_missing_not_more():
    """Videos uploaded between the export and the push follow as deltas of the new version."""
    served = [f"x{i}" for i in range(200)]
    snap = lambda n: snapshot_of(NEW, n, [(f"x{i}", (i,), 0) for i in range(n)])  # noqa: E731
    assert switch_shortfall(snap(200), served) is None
    assert switch_shortfall(snap(198), served) is None  # 99.0%
    assert "197 of the 200 videos served" in switch_shortfall(snap(197), served)
    assert switch_shortfall(snap(0), []) is None  # nothing served: nothing to cover
    assert SWITCH_MIN_COVERAGE == 0.99
