"""The admin API client against a fake serving with serving's semantics: a model push is
confirmed by /v1/status, deltas go from the acknowledged seq, a gap (409) is repaired from
expected_seq, nothing acknowledged is sent again, failures are PushError."""

import httpx
import numpy as np
import pytest

from publisher.deltas import DeltaLog
from publisher.push import PushError, ServingClient, push_deltas, push_model
from serving.artifact import ModelRepository
from tests.publisher_support import (
    SID_VERSION,
    TOKEN,
    URL_A,
    FakeServing,
    assignment,
    records,
    transport,
)


@pytest.fixture
def world(tmp_path):
    """A delta log of 10 assignments; version 1 exported with the first 3 of them."""
    deltas = DeltaLog(tmp_path / "state")
    deltas.ingest("t", records([assignment(i) for i in range(3)], "t"))
    vocab = tmp_path / "vocab"
    vocab.mkdir()
    (vocab / "vocab.json").write_text("{}")
    repo = ModelRepository(tmp_path / "models")
    repo.write(
        {"w": np.ones(2, np.float32)},
        vocab,
        deltas.snapshot(SID_VERSION),
        step=1,
        model_config={},
        max_prompt_len=8,
        newest_event_ts_ms=0,
    )
    deltas.ingest("t", records([assignment(i) for i in range(3, 10)], "t", first_offset=3))
    server = FakeServing(repo)
    client = ServingClient(URL_A, TOKEN, 5.0, transport({URL_A: server}))
    yield deltas, server, client
    client.close()
    deltas.close()


def send(deltas, client, acked, max_items=3, version=SID_VERSION):
    acks = []
    seq = push_deltas(
        client,
        lambda from_seq, n: deltas.delta(version, from_seq, n),
        version,
        acked,
        deltas.seq(version),
        acks.append,
        max_items,
    )
    return seq, acks


def test_a_model_push_is_confirmed_by_status(world):
    _, server, client = world
    status = push_model(client, 1, SID_VERSION)
    assert server.loads == [1]
    assert (status.model_version, status.index_sid_version, status.index_seq) == (1, "v1", 3)
    assert push_model(client, 1, SID_VERSION).model_version == 1  # already served: no reload
    assert server.loads == [1]


def test_a_push_the_status_does_not_confirm_fails(world):
    _, server, client = world
    server.lie_about_version = 7
    with pytest.raises(PushError, match="asked for version 1, /v1/status says 7"):
        push_model(client, 1, SID_VERSION)


@pytest.mark.parametrize(
    ("setup", "message", "status"),
    [
        (lambda s: None, "HTTP 404", 404),
        (lambda s: setattr(s, "token", "other"), "HTTP 401", 401),
        (lambda s: setattr(s, "down", True), "ConnectError", None),
    ],
)
def test_refused_or_unreachable_pushes_raise_push_error(world, setup, message, status):
    _, server, client = world
    setup(server)
    with pytest.raises(PushError, match=message) as err:
        push_model(client, 2 if status == 404 else 1, SID_VERSION)
    assert err.value.status == status and err.value.kind in ("model", "status")


def test_deltas_go_from_the_acknowledged_seq_in_chunks(world):
    deltas, server, client = world
    push_model(client, 1, SID_VERSION)
    seq, acks = send(deltas, client, 3)
    assert seq == 10 and acks == [6, 9, 10]
    assert [(d["from_seq"], d["to_seq"], d["status"]) for d in server.deltas] == [
        (3, 6, 200),
        (6, 9, 200),
        (9, 10, 200),
    ]
    assert server.video_ids() == [f"v{i}" for i in range(10)]
    server.deltas.clear()
    assert send(deltas, client, 10) == (10, [])  # nothing new: nothing sent
    assert server.deltas == []


def test_each_assignment_goes_out_with_its_assignment_records_timestamp(world):
    deltas, server, client = world
    push_model(client, 1, SID_VERSION)
    send(deltas, client, 3, max_items=7)
    sent = [ts for d in server.deltas for ts in d["assigned_ts"]]
    assert sent == [assignment(i).ts for i in range(3, 10)]


def test_a_gap_is_repaired_from_expected_seq_and_nothing_is_applied_twice(world):
    deltas, server, client = world
    push_model(client, 1, SID_VERSION)  # the index is at 3 (the artifact's snapshot)
    seq, acks = send(deltas, client, 8)  # the ledger says 8: serving restarted since
    assert seq == 10 and acks == [3, 6, 9, 10]
    assert [(d["from_seq"], d["status"]) for d in server.deltas] == [
        (8, 409),
        (3, 200),
        (6, 200),
        (9, 200),
    ]
    assert server.video_ids() == [f"v{i}" for i in range(10)]


def test_an_endpoint_ahead_of_the_acknowledgement_answers_duplicates(world):
    deltas, server, client = world
    push_model(client, 1, SID_VERSION)
    send(deltas, client, 3)
    seq, acks = send(deltas, client, 0)  # the ledger lost its acknowledgement
    assert seq == 10 and acks == [10]  # the first reply says where it is
    assert server.video_ids() == [f"v{i}" for i in range(10)]


def test_another_sid_version_is_not_pushed_as_a_delta(world):
    deltas, server, client = world
    push_model(client, 1, SID_VERSION)
    deltas.ingest("t", records([assignment(0, "v2")], "t", first_offset=10))
    with pytest.raises(PushError, match="its index is 'v1', the deltas are 'v2'"):
        send(deltas, client, 0, version="v2")


def test_a_body_over_the_limit_is_sent_in_smaller_deltas(world):
    deltas, server, client = world
    push_model(client, 1, SID_VERSION)
    server.max_body = 400  # about 3 assignments
    seq, _ = send(deltas, client, 3, max_items=7)
    assert seq == 10 and server.video_ids() == [f"v{i}" for i in range(10)]
    assert server.too_large >= 1 and all(d["status"] == 200 for d in server.deltas)
    assert max(d["to_seq"] - d["from_seq"] for d in server.deltas) <= 3


def test_every_call_has_a_bounded_timeout():
    client = ServingClient(URL_A, TOKEN, 7.0)
    try:
        timeout = client._http.timeout
        assert isinstance(timeout, httpx.Timeout)
        assert timeout.read is not None and timeout.connect is not None
    finally:
        client.close()
