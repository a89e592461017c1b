"""The client side of serving's admin API (design: "HTTP API of serving").

    POST /v1/admin/models      {"version", "sid_version"}  load, warm up, swap; 200 = status
    POST /v1/admin/sid-deltas  SidDelta JSON                200 {"sid_version", "seq", "applied"}
                                                            409 {"expected_seq", "sid_version"}
    GET  /v1/status                                         what the endpoint serves

`push_model` is confirmed by reading /v1/status back (the version must be the one
asked for); `push_deltas` sends the delta log from the endpoint's acknowledged sequence
and repairs a gap from the `expected_seq` of a 409, so nothing already acknowledged is
sent again and nothing is skipped. Every call has a bounded timeout; a model load (which
warms up every compiled search) gets `push_timeout_s`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from serving.sid_delta import SidDelta

log = logging.getLogger(__name__)

STATUS_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0
# Assignments per delta request: ~70 bytes each in JSON, so 500 stay well under serving's
# request body limit (64 KiB in the repo configs); a 413 halves it.
DELTA_MAX_ITEMS = 500
MAX_DELTA_REQUESTS = 10_000  # one push_deltas call: a bound, never reached in practice


class PushError(RuntimeError):
    """An endpoint did not take a push (unreachable, refused, or did not confirm it)."""

    def __init__(self, endpoint: str, kind: str, detail: str, status: int | None = None) -> None:
        super().__init__(f"{endpoint}: {kind} push failed: {detail}")
        self.endpoint = endpoint
        self.kind = kind
        self.detail = detail
        self.status = status  # the HTTP status, when there was a response


class SeqConflict(Exception):
    """409 from /v1/admin/sid-deltas: the endpoint's index is at `expected_seq` of
    `sid_version`."""

    def __init__(self, expected_seq: int, sid_version: str | None, detail: str) -> None:
        super().__init__(detail)
        self.expected_seq = expected_seq
        self.sid_version = sid_version


@dataclass(frozen=True)
class ServingStatus:
    """The parts of GET /v1/status the publisher acts on."""

    ready: bool
    model_version: int | None
    model_sid_version: str | None
    created_at_ms: int | None
    index_sid_version: str | None
    index_seq: int

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> ServingStatus:
        model = body.get("model") or {}
        index = body.get("index") or {}
        return cls(
            ready=bool(body.get("ready", False)),
            model_version=None if model.get("version") is None else int(model["version"]),
            model_sid_version=model.get("sid_version"),
            created_at_ms=None
            if model.get("created_at_ms") is None
            else int(model["created_at_ms"]),
            index_sid_version=index.get("sid_version"),
            index_seq=int(index.get("seq", 0) or 0),
        )


@dataclass(frozen=True)
class DeltaReply:
    sid_version: str
    seq: int
    applied: int


class ServingClient:
    """One endpoint's admin API. `transport` lets tests put a fake server behind it."""

    def __init__(
        self,
        endpoint: str,
        admin_token: str,
        push_timeout_s: float,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.push_timeout_s = push_timeout_s
        self._http = httpx.Client(
            base_url=endpoint,
            headers={"Authorization": f"Bearer {admin_token}"},
            timeout=httpx.Timeout(STATUS_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            transport=transport,
        )

    def status(self) -> ServingStatus:
        response = self._request("status", "GET", "/v1/status")
        return ServingStatus.from_json(self._json(response, "status"))

    def load_model(self, version: int, sid_version: str | None) -> ServingStatus:
        body: dict[str, Any] = {"version": int(version)}
        if sid_version is not None:
            body["sid_version"] = sid_version
        response = self._request(
            "model",
            "POST",
            "/v1/admin/models",
            json=body,
            timeout=httpx.Timeout(self.push_timeout_s, connect=CONNECT_TIMEOUT_S),
        )
        return ServingStatus.from_json(self._json(response, "model"))

    def send_delta(self, delta: SidDelta) -> DeltaReply:
        """200 -> DeltaReply; 409 -> SeqConflict; anything else -> PushError (with the
        HTTP status in `.status`, e.g. 413 for a body over serving's limit)."""
        response = self._request(
            "delta", "POST", "/v1/admin/sid-deltas", json=delta.to_json(), ok=(200, 409)
        )
        body = self._json(response, "delta")
        if response.status_code == 409:
            expected = body.get("expected_seq")
            if not isinstance(expected, int):
                raise PushError(self.endpoint, "delta", f"409 without expected_seq: {body}")
            raise SeqConflict(expected, body.get("sid_version"), str(body.get("detail", "")))
        return DeltaReply(str(body["sid_version"]), int(body["seq"]), int(body["applied"]))

    def _request(
        self, kind: str, method: str, path: str, ok: tuple[int, ...] = (200,), **kwargs: Any
    ) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as err:  # connect refused, timeout, protocol error
            raise PushError(self.endpoint, kind, f"{type(err).__name__}: {err}") from err
        if response.status_code not in ok:
            raise PushError(
                self.endpoint,
                kind,
                f"HTTP {response.status_code}: {_detail(response)}",
                response.status_code,
            )
        return response

    def _json(self, response: httpx.Response, kind: str) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError as err:
            raise PushError(self.endpoint, kind, f"not JSON: {response.text[:200]!r}") from err
        if not isinstance(body, dict):
            raise PushError(self.endpoint, kind, f"not a JSON object: {body!r:.200}")
        return body

    def close(self) -> None:
        self._http.close()


def _detail(response: httpx.Response) -> str:
    """The problem-details 'detail' (or 'title') of an error response, else its text."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or body)
    return str(body)[:200]


def push_model(client: ServingClient, version: int, sid_version: str | None) -> ServingStatus:
    """Ask the endpoint to load `version`, then confirm it from GET /v1/status."""
    client.load_model(version, sid_version)
    status = client.status()
    if status.model_version != version:
        raise PushError(
            client.endpoint,
            "model",
            f"asked for version {version}, /v1/status says {status.model_version}",
        )
    return status


def push_deltas(
    client: ServingClient,
    delta_at: Callable[[int, int], SidDelta],
    sid_version: str,
    acked_seq: int,
    last_seq: int,
    on_ack: Callable[[int], None],
    max_items: int = DELTA_MAX_ITEMS,
) -> int:
    """Bring the endpoint's index of `sid_version` from `acked_seq` to `last_seq`.

    `delta_at(from_seq, max_items)` gives the delta log's assignments after from_seq
    (DeltaLog.delta); `on_ack(seq)` records every position the endpoint confirms (a 200's
    seq, or a 409's expected_seq), so a crash resumes from there. Returns the endpoint's
    final seq. A 409 naming another sid_version, or an endpoint that stops advancing,
    raises PushError: the model push is what changes versions.
    """
    seq = acked_seq
    for _ in range(MAX_DELTA_REQUESTS):
        if seq >= last_seq:
            return seq
        delta = delta_at(seq, max_items)
        if delta.to_seq <= seq:  # the log has nothing after seq (it was cut short)
            return seq
        try:
            reply = client.send_delta(delta)
        except SeqConflict as conflict:
            if conflict.sid_version != sid_version:
                raise PushError(
                    client.endpoint,
                    "delta",
                    f"its index is {conflict.sid_version!r}, the deltas are {sid_version!r} "
                    "(waiting for the model push that switches it)",
                ) from conflict
            if conflict.expected_seq == seq:
                raise PushError(
                    client.endpoint, "delta", f"409 at from_seq {seq} says expected_seq {seq}"
                ) from conflict
            log.info(
                "%s: index at %d, not %d: re-sending from %d",
                client.endpoint,
                conflict.expected_seq,
                seq,
                conflict.expected_seq,
            )
            seq = conflict.expected_seq
            on_ack(seq)
            continue
        except PushError as err:
            if err.status == 413 and max_items > 1:  # body over serving's limit
                max_items //= 2
                continue
            raise
        if reply.sid_version != sid_version or reply.seq < delta.to_seq:
            raise PushError(
                client.endpoint,
                "delta",
                f"sent {sid_version!r} {delta.from_seq}..{delta.to_seq}, reply "
                f"{reply.sid_version!r} seq {reply.seq}",
            )
        seq = reply.seq
        on_ack(seq)
    raise PushError(
        client.endpoint, "delta", f"not at {last_seq} after {MAX_DELTA_REQUESTS} requests"
    )
