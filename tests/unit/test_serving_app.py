"""The HTTP contract of serving, in process (fastapi.testclient) on the real tiny model:
retrieval, health, status, the admin routes and their token, problem details for every
bad input (never a 500), hot swap through the API, SID deltas through the API."""

import asyncio
import json
import threading

import pytest

from serving.app import create_app
from serving.batcher import Batcher, Query
from serving.model_slot import HistoryEntry
from tests.serving_support import (
    ADMIN,
    corrupt_version,
    delta,
    serving_stack,
    snapshot,
    write_nan_version,
)

PROBLEM = "application/problem+json"


@pytest.fixture
def stack(tmp_path):
    with serving_stack(tmp_path) as s:
        yield s


@pytest.fixture
def client(stack):
    return stack.client()


def body(history=("v1", "v2"), **extra):
    return {"history": [{"video_id": v} for v in history], "beam": 10, **extra}


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    doc = response.json()
    assert doc["status"] == status and doc["title"] and doc["detail"]
    assert doc["type"] == "about:blank"
    return doc


def requests_total(stack, route: str, status: int) -> float:
    return stack.metrics.value("plum_serving_requests_total", route=route, status=str(status))


# ---------------------------------------------------------------- retrieval


def test_retrieve_returns_at_most_k_index_videos_best_first(stack, client):
    history = [
        {"video_id": "v3", "watch_ratio": 0.4, "watch_time_s": 12.5, "ts": 1_700_000_000_000},
        {"video_id": "never-seen"},
        {"video_id": "v8"},
        {"video_id": "also-unknown", "watch_ratio": 2.0},
    ]
    r = client.post(
        "/v1/retrieve", json={"history": history, "context_video_id": "v5", "k": 4, "beam": 5}
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    index = stack.slot.served.index
    assert (doc["model_version"], doc["sid_version"], doc["index_seq"]) == (2, "v1", 16)
    assert doc["unknown_history"] == 2
    assert 0 < len(doc["items"]) <= 4
    for item in doc["items"]:
        assert item["video_id"] in index.trie_video_ids
        assert tuple(item["sid"]) == index.sid_of(item["video_id"])
    scores = [i["score"] for i in doc["items"]]
    assert scores == sorted(scores, reverse=True)
    assert stack.metrics.value("plum_serving_unknown_history_total") == 2
    assert requests_total(stack, "/v1/retrieve", 200) == 1


def test_beam_is_raised_to_k_and_rounded_up_to_a_compiled_width(client):
    r = client.post("/v1/retrieve", json=body(k=10, beam=1))
    assert r.status_code == 200 and len(r.json()["items"]) == 10
    doc = assert_problem(client.post("/v1/retrieve", json=body(k=11, beam=1)), 422)
    assert doc["compiled_widths"] == [10] and "[10]" in doc["detail"]


def test_retrieve_changes_no_state(stack, client):
    before = stack.slot.status()
    for b in (body(), body(history=("zzz",)), body(k=2), {"history": []}):
        client.post("/v1/retrieve", json=b)
    after = stack.slot.status()
    for key in ("model", "index", "last_error", "history"):
        if key == "model":
            before[key].pop("age_s"), after[key].pop("age_s")
        assert after[key] == before[key]


def test_a_new_video_is_retrievable_as_soon_as_its_delta_is_applied(tmp_path):
    with serving_stack(tmp_path, load=False) as stack:
        _retrieve_a_video_once_its_delta_lands(stack, stack.client())


def _retrieve_a_video_once_its_delta_lands(stack, client):
    tiny_index = stack.tiny.write_version(snapshot=snapshot(2, sid_version="fresh"))
    assert (
        client.post(
            "/v1/admin/models", json={"version": tiny_index.version}, headers=ADMIN
        ).status_code
        == 200
    )
    ids = {
        i["video_id"]
        for i in client.post("/v1/retrieve", json=body(history=("v0",))).json()["items"]
    }
    assert ids == {"v0", "v1"}
    r = client.post("/v1/admin/sid-deltas", json=delta(2, 3, "fresh").to_json(), headers=ADMIN)
    assert r.json() == {"sid_version": "fresh", "seq": 3, "applied": 1}
    ids = {
        i["video_id"]
        for i in client.post("/v1/retrieve", json=body(history=("v0",))).json()["items"]
    }
    assert ids == {"v0", "v1", "v2"}  # no retrain: its SID tokens already exist


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b"this is not json", 400),
        (b'{"history": [', 400),
        (b"[]", 422),
        (b"{}", 422),  # history is required
        (b'{"history": "v1"}', 422),
        (b'{"history": [{"video_id": 7}]}', 422),
        (b'{"history": [{"video_id": ""}]}', 422),
        (b'{"history": [{"video_id": "v1", "extra": 1}]}', 422),
        (b'{"history": [{"video_id": "v1", "watch_ratio": -0.5}]}', 422),
        (b'{"history": [{"video_id": "v1", "watch_ratio": NaN}]}', 422),
        (b'{"history": [{"video_id": "v1", "watch_time_s": Infinity}]}', 422),
        (b'{"history": [{"video_id": "v1", "watch_time_s": 1e999}]}', 422),
        (b'{"history": [{"video_id": "v1", "ts": 1.5}]}', 422),
        (b'{"history": [{"video_id": "v1", "ts": 99999999999999999999999999}]}', 422),
        (b'{"history": [], "k": 0}', 422),
        (b'{"history": [], "k": 101}', 422),
        (b'{"history": [], "k": "5"}', 422),
        (b'{"history": [], "k": true}', 422),
        (b'{"history": [], "k": 5.0}', 422),
        (b'{"history": [], "beam": 101}', 422),
        (b'{"history": [], "beam": 0}', 422),
        (b'{"history": [], "beam": 20}', 422),  # above the compiled widths [10]
        (b'{"history": [], "user": "u1"}', 422),
        (b'{"history": [], "context_video_id": 5}', 422),
    ],
)
def test_bad_retrieve_bodies_get_a_problem_never_a_500(client, payload, status):
    r = client.post("/v1/retrieve", content=payload, headers={"content-type": "application/json"})
    assert_problem(r, status)


def test_wrong_content_type_and_a_history_too_long_are_422(tmp_path):
    with serving_stack(tmp_path, max_history=3) as s:
        client = s.client()
        assert_problem(
            client.post(
                "/v1/retrieve", content=b"history=v1", headers={"content-type": "text/plain"}
            ),
            422,
        )
        doc = assert_problem(client.post("/v1/retrieve", json=body(history=("v1",) * 4)), 422)
        assert doc["errors"][0]["loc"] == ["body", "history"]
        assert client.post("/v1/retrieve", json=body(history=("v1",) * 3)).status_code == 200


def test_bodies_over_the_limit_are_413_by_header_and_by_bytes(stack, client):
    limit = stack.cfg.max_body_bytes
    big = json.dumps(body(history=["v1"] * (limit // 10))).encode()
    assert len(big) > limit
    assert_problem(
        client.post("/v1/retrieve", content=big, headers={"content-type": "application/json"}), 413
    )

    def chunks():  # no Content-Length: the body arrives chunked and is counted as read
        for i in range(0, len(big), 4096):
            yield big[i : i + 4096]

    assert_problem(
        client.post("/v1/retrieve", content=chunks(), headers={"content-type": "application/json"}),
        413,
    )
    assert_problem(client.post("/v1/admin/sid-deltas", content=big, headers=ADMIN), 413)
    assert requests_total(stack, "/v1/retrieve", 413) == 2


def test_unknown_paths_and_methods_are_problems(stack, client):
    assert_problem(client.get("/v1/nothing"), 404)
    r = client.get("/v1/retrieve")
    assert_problem(r, 405)
    assert r.headers["allow"] == "POST"
    assert requests_total(stack, "other", 404) == 1


# ---------------------------------------------------------------- health and status


def test_not_ready_before_a_model_then_ready(tmp_path):
    with serving_stack(tmp_path, load=False) as s:
        client = s.client()
        assert client.get("/healthz").json() == {"status": "ok"}
        assert_problem(client.get("/readyz"), 503)
        assert_problem(client.post("/v1/retrieve", json=body()), 503)
        assert_problem(
            client.post("/v1/admin/sid-deltas", json=delta(0, 1).to_json(), headers=ADMIN), 503
        )
        status = client.get("/v1/status").json()
        assert status == {
            "ready": False,
            "model": None,
            "index": None,
            "last_error": None,
            "history": [],
        }
        assert (
            client.post("/v1/admin/models", json={"version": 1}, headers=ADMIN).status_code == 200
        )
        assert client.get("/readyz").status_code == 200
        assert client.post("/v1/retrieve", json=body()).status_code == 200


def test_status_describes_model_index_and_history(stack, client):
    doc = client.get("/v1/status").json()
    manifest = stack.tiny.manifests[1]
    assert doc["ready"] is True and doc["history"] == [2] and doc["last_error"] is None
    model = doc["model"]
    assert (model["version"], model["step"], model["sid_version"]) == (2, manifest.step, "v1")
    assert model["content_hash"] == manifest.content_hash
    assert model["newest_event_ts_ms"] == manifest.newest_event_ts_ms
    assert model["created_at_ms"] <= model["loaded_at_ms"] and model["age_s"] >= 0
    assert doc["index"] == {"sid_version": "v1", "seq": 16, "items": 16}


# ---------------------------------------------------------------- admin


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic dGVzdA=="},
        {"Authorization": "Bearer"},
    ],
)
def test_admin_without_or_with_a_wrong_token_is_401(client, headers):
    for path, payload in (
        ("/v1/admin/models", {"version": 1}),
        ("/v1/admin/sid-deltas", delta(16, 17).to_json()),
        ("/v1/admin/rollback", {}),
    ):
        r = client.post(path, json=payload, headers=headers)
        assert_problem(r, 401)
        assert r.headers["www-authenticate"] == "Bearer"


def test_an_empty_configured_token_closes_the_admin_api(tmp_path):
    with serving_stack(tmp_path, admin_token="") as s:
        r = s.client().post(
            "/v1/admin/models", json={"version": 1}, headers={"Authorization": "Bearer "}
        )
        assert_problem(r, 401)


def test_load_via_admin_swaps_and_the_served_version_is_a_no_op(stack, client):
    r = client.post("/v1/admin/models", json={"version": 1, "sid_version": "v1"}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["model"]["version"] == 1
    assert r.json()["history"] == [2, 1]
    again = client.post("/v1/admin/models", json={"version": 1}, headers=ADMIN)
    assert (
        again.json()["history"] == [2, 1]
        and again.json()["model"]["loaded_at_ms"] == r.json()["model"]["loaded_at_ms"]
    )


def test_failed_loads_keep_the_old_model_answering(stack, client):
    bad = stack.tiny.write_version()
    corrupt_version(stack.tiny.repo, bad.version)
    nan = write_nan_version(stack.tiny)
    answers, stop = [], threading.Event()

    def hammer():  # requests during the failed loads all succeed, on the old version
        c = stack.client()
        while not stop.is_set():
            answers.append(c.post("/v1/retrieve", json=body()))

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        doc = assert_problem(
            client.post("/v1/admin/models", json={"version": bad.version}, headers=ADMIN), 422
        )
        assert doc["version"] == bad.version and "hash" in doc["detail"]
        assert_problem(
            client.post("/v1/admin/models", json={"version": nan.version}, headers=ADMIN), 422
        )
        assert_problem(
            client.post(
                "/v1/admin/models", json={"version": 1, "sid_version": "v9"}, headers=ADMIN
            ),
            422,
        )
        assert_problem(client.post("/v1/admin/models", json={"version": 99}, headers=ADMIN), 404)
    finally:
        stop.set()
        thread.join(60)
    assert answers and all(a.status_code == 200 and a.json()["model_version"] == 2 for a in answers)
    status = client.get("/v1/status").json()
    assert status["model"]["version"] == 2
    assert status["last_error"]["action"] == "load" and status["last_error"]["version"] == 99
    assert stack.metrics.value("plum_serving_model_loads_total", outcome="failed") == 4


def test_rollback_via_admin(client):
    assert_problem(client.post("/v1/admin/rollback", headers=ADMIN), 409)
    client.post("/v1/admin/models", json={"version": 1}, headers=ADMIN)
    r = client.post("/v1/admin/rollback", headers=ADMIN)  # no body: the version before
    assert r.status_code == 200 and r.json()["model"]["version"] == 2
    r = client.post("/v1/admin/rollback", json={"version": 1}, headers=ADMIN)
    assert r.json()["model"]["version"] == 1 and r.json()["history"] == [2, 1, 2, 1]


def test_deltas_via_admin_are_idempotent_and_gaps_are_409(stack, client):
    post = lambda d: client.post("/v1/admin/sid-deltas", json=d, headers=ADMIN)  # noqa: E731
    assert post(delta(16, 19).to_json()).json() == {"sid_version": "v1", "seq": 19, "applied": 3}
    assert post(delta(16, 19).to_json()).json() == {"sid_version": "v1", "seq": 19, "applied": 0}
    doc = assert_problem(post(delta(21, 23).to_json()), 409)
    assert (doc["expected_seq"], doc["sid_version"]) == (19, "v1")
    doc = assert_problem(post(delta(19, 20, sid_version="v2").to_json()), 409)
    assert (doc["expected_seq"], doc["sid_version"]) == (19, "v1")
    malformed = delta(19, 21).to_json() | {"to_seq": 25}
    assert_problem(post(malformed), 422)
    clash = {
        "sid_version": "v1",
        "from_seq": 19,
        "to_seq": 20,
        "assignments": [{"video_id": "x", "sid": [0, 0, 0, 0]}],
    }
    assert "already video" in assert_problem(post(clash), 422)["detail"]
    assert_problem(post({"sid_version": "v1", "from_seq": "19"}), 422)
    assert client.get("/v1/status").json()["index"] == {"sid_version": "v1", "seq": 19, "items": 19}
    assert stack.metrics.value("plum_serving_deltas_total", outcome="gap") == 2


def test_a_delta_over_http_carries_each_assignments_time_to_the_freshness_histograms(stack, client):
    post = lambda d: client.post("/v1/admin/sid-deltas", json=d, headers=ADMIN)  # noqa: E731
    sample = stack.metrics.registry.get_sample_value
    assert post(delta(16, 18).to_json()).status_code == 200
    assert sample("plum_serving_sid_to_servable_seconds_count") == 2
    # an older sender's delta has no assigned_ts: applied, its time unknown, not observed
    older = delta(18, 19).to_json()
    del older["assignments"][0]["assigned_ts"]
    assert post(older).json()["applied"] == 1
    assert sample("plum_serving_sid_to_servable_seconds_count") == 2
    assert sample("plum_serving_upload_to_servable_seconds_count") == 3
    negative = delta(19, 20).to_json()
    negative["assignments"][0]["assigned_ts"] = -1
    assert_problem(post(negative), 422)


def test_a_request_whose_client_is_gone_is_dropped_before_its_search(stack):
    """Raw ASGI: the client disconnects right after sending its body while the worker is
    busy; the queued request is cancelled and never searched."""
    entered, release = threading.Event(), threading.Event()

    def busy_source():
        entered.set()
        release.wait(30)
        return stack.slot.served

    batcher = Batcher(busy_source, (1,), 0.0, stack.metrics).start()
    submitted = []
    real_submit = batcher.submit
    batcher.submit = lambda q: submitted.append(real_submit(q)) or submitted[-1]
    try:
        plug = batcher.submit(Query((HistoryEntry("v1"),), None, 10, 10))
        assert entered.wait(30)  # the worker is held inside a batch
        app = create_app(stack.slot, batcher, stack.cfg, stack.metrics)
        payload = json.dumps(body()).encode()
        messages = iter([{"type": "http.request", "body": payload, "more_body": False}])
        sent = []

        async def receive():
            return next(messages, {"type": "http.disconnect"})

        async def send(message):
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/retrieve",
            "raw_path": b"/v1/retrieve",
            "root_path": "",
            "query_string": b"",
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
        }
        asyncio.run(app(scope, receive, send))
        assert sent[0]["status"] == 503
        assert submitted[-1].cancelled()
        release.set()
        assert plug.result(30).items
    finally:
        release.set()
        batcher.close()
    assert batcher.answered == 1  # the plug only
