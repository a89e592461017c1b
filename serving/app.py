"""The HTTP API of serving (FastAPI): retrieval, status, health and the admin routes.

Routes (bodies are the pydantic models below; /openapi.json is generated from them):

    POST /v1/retrieve            top-k videos for a history, by trie-constrained beam search
    GET  /v1/status              model, SID index, last error, load history
    GET  /healthz, GET /readyz   alive; a model and an index are loaded (else 503)
    POST /v1/admin/models        load a version of the model repository (hot swap)
    POST /v1/admin/sid-deltas    apply a SID delta (serving/sid_delta.py)
    POST /v1/admin/rollback      load an earlier version (default: the one before)

Errors are RFC 9457 problem details (application/problem+json): malformed JSON is 400,
a body that breaks the schema 422 (with the validation errors), a body over
max_body_bytes 413 (Content-Length and the bytes actually read are both checked), a
missing or wrong admin token 401 with WWW-Authenticate (compared with
hmac.compare_digest; an empty configured token closes the admin API), no model yet 503.
Bad input never reaches a 500. Request models forbid unknown fields and are strict (no
"5" for 5), so what the server accepts is what the spec says.

The retrieval route changes no state: it only queues a query for the batcher
(serving/batcher.py) and waits for its future.
"""

import asyncio
import hmac
import logging
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from monitoring.metrics import Metrics
from plum.problems import PROBLEM_JSON, ProblemError, problem_response
from serving.batcher import Batcher, Overloaded, Query
from serving.config import MAX_BEAM, MAX_K, ServingConfig
from serving.index import SequenceGap
from serving.model_slot import HistoryEntry, ModelLoadError, ModelSlot, NotReady
from serving.sid_delta import DeltaError, SidDelta

log = logging.getLogger(__name__)

# A retrieval waits at most this long for its batch (queue + search); then 503. Far above
# any healthy latency: it bounds a handler when the worker is stuck, it is not a target.
REQUEST_TIMEOUT_S = 30.0
MAX_ID_LEN = 256  # video ids are short; a longer one is not a video of any index
MAX_TS_MS = 2**53  # epoch ms as a JSON-safe integer (hours_since stays a finite float)


# ---------------------------------------------------------------- problem details


class Problem(BaseModel):
    """RFC 9457 problem details; extra members (e.g. expected_seq) are allowed."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str


def _problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for problem answers (content set in `_openapi`)."""
    return {code: {"description": HTTPStatus(code).phrase} for code in codes}


# ---------------------------------------------------------------- request / response bodies

_STRICT = ConfigDict(extra="forbid", strict=True)


class HistoryItemIn(BaseModel):
    model_config = _STRICT

    video_id: str = Field(min_length=1, max_length=MAX_ID_LEN)
    watch_ratio: float = Field(1.0, ge=0.0, allow_inf_nan=False)
    watch_time_s: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    ts: int | None = Field(None, ge=0, le=MAX_TS_MS, description="epoch ms of the watch")


def retrieve_request_model(max_history: int) -> type[BaseModel]:
    """The /v1/retrieve body; history's length limit comes from the config."""

    class RetrieveRequest(BaseModel):
        model_config = _STRICT

        history: list[HistoryItemIn] = Field(max_length=max_history)
        context_video_id: str | None = Field(
            None,
            min_length=1,
            max_length=MAX_ID_LEN,
            description="the video the user is on; read only by a model trained in the "
            '"target" prompt layout (the served version\'s manifest says which)',
        )
        k: int = Field(10, ge=1, le=MAX_K)
        beam: int = Field(
            20, ge=1, le=MAX_BEAM, description="raised to k, then to a compiled width"
        )

    return RetrieveRequest


class ItemOut(BaseModel):
    video_id: str
    sid: list[int]
    score: float


class RetrieveResponse(BaseModel):
    model_version: int
    sid_version: str
    index_seq: int
    items: list[ItemOut]
    unknown_history: int


class ModelInfo(BaseModel):
    version: int
    step: int
    sid_version: str
    newest_event_ts_ms: int
    created_at_ms: int
    loaded_at_ms: int
    age_s: float
    content_hash: str
    prompt_layout: str = Field(description="how its prompts are written (trainer.prompt)")


class IndexInfo(BaseModel):
    sid_version: str
    seq: int
    items: int


class ErrorInfo(BaseModel):
    action: str
    version: int | None = None
    detail: str
    at_ms: int


class StatusResponse(BaseModel):
    ready: bool
    model: ModelInfo | None
    index: IndexInfo | None
    last_error: ErrorInfo | None
    history: list[int]


class Health(BaseModel):
    status: str


class LoadModelRequest(BaseModel):
    model_config = _STRICT

    version: int = Field(ge=1)
    sid_version: str | None = None


class RollbackRequest(BaseModel):
    model_config = _STRICT

    version: int | None = Field(None, ge=1, description="default: the version served before")


class DeltaAssignmentIn(BaseModel):
    model_config = _STRICT

    video_id: str = Field(min_length=1, max_length=MAX_ID_LEN)
    sid: list[int] = Field(min_length=1, max_length=16)
    upload_ts: int = Field(
        0, ge=0, le=MAX_TS_MS, description="the upload's Kafka timestamp, epoch ms; 0 = unknown"
    )
    assigned_ts: int = Field(
        0,
        ge=0,
        le=MAX_TS_MS,
        description="the SID assignment record's Kafka timestamp, epoch ms; 0 = unknown",
    )


class SidDeltaIn(BaseModel):
    model_config = _STRICT

    sid_version: str = Field(min_length=1)
    from_seq: int = Field(ge=0)
    to_seq: int = Field(ge=0)
    assignments: list[DeltaAssignmentIn]


class DeltaResponse(BaseModel):
    sid_version: str
    seq: int
    applied: int


# ---------------------------------------------------------------- ASGI middleware


class _TooBig:
    """The 413 answer, built only when it is sent (most requests never need it)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(413, f"request body exceeds {self.limit} bytes")
        await response(scope, receive, send)


class BodyLimit:
    """413 for a body over `limit` bytes: by Content-Length before reading, and by the
    bytes read (a chunked or lying client), so no handler ever sees a larger body."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = _TooBig(self.limit)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await problem_response(400, "invalid Content-Length")(scope, receive, send)
                    return
                if declared > self.limit:
                    await too_big(scope, receive, send)
                    return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.limit:
                await too_big(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class Observe:
    """plum_serving_requests_total{route,status} and plum_serving_request_seconds{route}
    for every answer, 413s and 500s included; route = the request's path when the API
    has it (every path is static), else "other", so the label stays bounded."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: frozenset[str]) -> None:
        self.app = app
        self.routes = routes
        self.total = metrics.counter("plum_serving_requests_total")
        self.seconds = metrics.histogram("plum_serving_request_seconds")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            route = scope["path"] if scope["path"] in self.routes else "other"
            self.total.labels(route=route, status=str(status)).inc()
            self.seconds.labels(route=route).observe(time.perf_counter() - started)


# ---------------------------------------------------------------- the app


async def _disconnected(receive: Receive) -> None:
    """Returns when the client goes away (the body is already read, so the next ASGI
    message is http.disconnect: on a dropped connection, or once the answer is sent)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _validation_problem(_request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [
        {
            "loc": [str(p) for p in e.get("loc", ())],
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in exc.errors()
    ]
    if any(e["type"] == "json_invalid" for e in errors):
        return problem_response(400, "the request body is not valid JSON", errors=errors)
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(first["loc"])
    return problem_response(422, f"{where}: {first['msg']}", errors=errors)


def _http_problem(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    return problem_response(exc.status_code, detail, headers=exc.headers)


def _raised_problem(_request: Request, exc: ProblemError) -> JSONResponse:
    return problem_response(exc.status, exc.detail, headers=exc.headers, **exc.extra)


def _internal_problem(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return problem_response(500, f"internal error: {type(exc).__name__}")


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """FastAPI's spec with every 4xx/5xx answer as a Problem in application/problem+json
    (what the server really sends), instead of its default HTTPValidationError."""

    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        ref = {"$ref": "#/components/schemas/Problem"}
        for path_item in spec["paths"].values():
            for operation in path_item.values():
                for code, response in operation.get("responses", {}).items():
                    if int(code) >= 400:
                        response["content"] = {PROBLEM_JSON: {"schema": ref}}
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        schemas["Problem"] = Problem.model_json_schema()
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = spec
        return spec

    return build


def create_app(slot: ModelSlot, batcher: Batcher, cfg: ServingConfig, metrics: Metrics) -> FastAPI:
    """The ASGI app over a model slot and a (started) batcher; no global state, so tests
    build as many as they like."""
    app = FastAPI(
        title="PLUM serving",
        version="1",
        description=__doc__.split("\n\n")[0],
        docs_url=None,
        redoc_url=None,
    )
    RetrieveRequest = retrieve_request_model(cfg.max_history)  # noqa: N806 - a class
    bearer = HTTPBearer(auto_error=False, description="the [serving] admin_token")
    token = cfg.admin_token.encode()

    def require_admin(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
    ) -> None:
        given = credentials.credentials.encode() if credentials is not None else b""
        # compare_digest runs in time independent of where the strings differ; an empty
        # configured token means the admin API is closed, whatever is sent.
        if not token or not hmac.compare_digest(given, token):
            raise ProblemError(
                401, "a valid admin bearer token is required", {"WWW-Authenticate": "Bearer"}
            )

    @app.post(
        "/v1/retrieve",
        response_model=RetrieveResponse,
        responses=_problems(400, 413, 422, 503),
        summary="top-k videos for a watch history",
    )
    async def retrieve(body: RetrieveRequest, request: Request) -> RetrieveResponse:  # type: ignore[valid-type]
        beam = max(body.beam, body.k)
        width = cfg.width_for(beam)
        if width is None:
            raise ProblemError(
                422,
                f"beam {beam} (beam raised to k) exceeds the compiled beam widths "
                f"{list(cfg.beam_widths)}",
                compiled_widths=list(cfg.beam_widths),
            )
        if not slot.ready:
            raise ProblemError(503, "no model is loaded yet")
        query = Query(
            history=tuple(
                HistoryEntry(h.video_id, h.watch_ratio, h.watch_time_s, h.ts) for h in body.history
            ),
            context_video_id=body.context_video_id,
            k=body.k,
            width=width,
        )
        answer = asyncio.wrap_future(batcher.submit(query))
        gone = asyncio.ensure_future(_disconnected(request.receive))
        try:
            done, _ = await asyncio.wait(
                {answer, gone}, timeout=REQUEST_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            gone.cancel()
        if answer not in done:
            # Still queued: cancelling drops it before its search (a client that timed out
            # or went away costs no compute); already searching: it finishes unheard.
            answer.cancel()
            if gone in done:
                raise ProblemError(503, "the client disconnected before the answer")
            raise ProblemError(503, f"no answer within {REQUEST_TIMEOUT_S:.0f} s")
        try:
            result = answer.result()
        except NotReady as err:
            raise ProblemError(503, str(err)) from err
        except Overloaded as err:
            raise ProblemError(503, f"overloaded: {err}", {"Retry-After": "1"}) from err
        return RetrieveResponse(
            model_version=result.model_version,
            sid_version=result.sid_version,
            index_seq=result.index_seq,
            items=[
                ItemOut(video_id=i.video_id, sid=list(i.sid), score=i.score) for i in result.items
            ],
            unknown_history=result.unknown_history,
        )

    @app.get("/v1/status", response_model=StatusResponse, summary="what is served")
    def status() -> dict[str, Any]:
        return slot.status()

    @app.get("/healthz", response_model=Health, summary="the process is alive")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        response_model=Health,
        responses=_problems(503),
        summary="a model and a SID index are loaded",
    )
    def readyz() -> dict[str, str]:
        if not slot.ready:
            raise ProblemError(503, "no model is loaded yet")
        return {"status": "ready"}

    def _load(call: Callable[[], Any], version: int | None) -> dict[str, Any]:
        try:
            call()
        except ModelLoadError as err:
            extra = {"version": version} if version is not None else {}
            raise ProblemError(err.status, err.detail, **extra) from err
        return slot.status()

    @app.post(
        "/v1/admin/models",
        response_model=StatusResponse,
        responses=_problems(400, 401, 404, 413, 422),
        dependencies=[Depends(require_admin)],
        summary="load a version of the model repository (built and warmed up, then swapped)",
    )
    def load_model(request: LoadModelRequest) -> dict[str, Any]:
        return _load(lambda: slot.load(request.version, request.sid_version), request.version)

    @app.post(
        "/v1/admin/rollback",
        response_model=StatusResponse,
        responses=_problems(400, 401, 404, 409, 413, 422),
        dependencies=[Depends(require_admin)],
        summary="serve an earlier version (default: the one served before the current)",
    )
    def rollback(request: RollbackRequest | None = None) -> dict[str, Any]:
        version = request.version if request is not None else None
        return _load(lambda: slot.rollback(version), version)

    @app.post(
        "/v1/admin/sid-deltas",
        response_model=DeltaResponse,
        responses=_problems(400, 401, 409, 413, 422, 503),
        dependencies=[Depends(require_admin)],
        summary="apply a SID delta (atomic, idempotent; a gap is 409 with expected_seq)",
    )
    def sid_deltas(body: SidDeltaIn) -> DeltaResponse:
        try:
            delta = SidDelta.from_json(body.model_dump())
        except DeltaError as err:
            metrics.counter("plum_serving_deltas_total").labels(outcome="rejected").inc()
            raise ProblemError(422, str(err)) from err
        try:
            index, applied = slot.apply_delta(delta)
        except NotReady as err:
            raise ProblemError(503, str(err)) from err
        except SequenceGap as gap:
            raise ProblemError(
                409, gap.detail, expected_seq=gap.expected_seq, sid_version=gap.sid_version
            ) from gap
        except DeltaError as err:
            raise ProblemError(422, str(err)) from err
        return DeltaResponse(sid_version=index.sid_version, seq=index.seq, applied=applied)

    app.add_exception_handler(RequestValidationError, _validation_problem)
    app.add_exception_handler(StarletteHTTPException, _http_problem)
    app.add_exception_handler(ProblemError, _raised_problem)
    app.add_exception_handler(Exception, _internal_problem)
    app.openapi = _openapi(app)  # type: ignore[method-assign]

    routes = frozenset(route.path for route in app.routes if hasattr(route, "path"))
    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes)
    app.add_middleware(Observe, metrics=metrics, routes=routes)  # outermost: sees 413s too
    return app
