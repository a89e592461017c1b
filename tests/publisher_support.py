"""Shared by the publisher unit tests: a fake serving (its admin API semantics, in memory,
behind httpx.MockTransport), SID assignment records, a tiny trainer run directory and fake
Kafka inputs. No broker, no server process."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx
import jax
import numpy as np

from plum.batch_cycle import Record
from plum.checkpoints import CheckpointStore
from publisher.config import PublisherConfig
from publisher.deltas import DeltaLog
from serving.artifact import (
    SID_INDEX,
    ArtifactError,
    IndexSnapshot,
    ModelRepository,
    switch_shortfall,
)
from serving.sid_delta import DeltaError, SidDelta
from streams.contracts import schema
from streams.contracts.topics import SID_ASSIGNMENTS
from tests.trainer_data_support import LEVELS, N_VIDEOS, example, tiny_vocab
from trainer.config import TINY, ModelConfig
from trainer.model import init_params
from trainer.prompt import SidLookup
from trainer.step import OptimizerConfig, ParamsEmaState, init_state, make_optimizer
from trainer.vocab import Vocab

TOKEN = "test-admin-token"
URL_A = "http://serving-a:8400"
URL_B = "http://serving-b:8400"
SID_VERSION = "v1"
MAX_PROMPT_LEN = 40  # 3 history items of 7 tokens + 8 = 29 fit; + 4 SID slots <= max_len
UPLOAD_TS = 1_700_000_000_000
ASSIGNED_AFTER_MS = 250  # upload -> SID assigned in these fixtures (the record's timestamp)


# ------------------------------------------------------------------ SID assignments


def sid_of(i: int) -> tuple[int, ...]:
    """The SID of video v{i}: the i-th code tuple of LEVELS and disambiguation code 0 (the
    layout of tests.trainer_data_support.lookup)."""
    codes = np.unravel_index(i, LEVELS)
    return (*(int(c) for c in codes), 0)


def assignment(i: int, version: str = SID_VERSION, sid: tuple[int, ...] | None = None):
    return schema.SidAssignment(
        f"v{i}",
        sid if sid is not None else sid_of(i),
        version,
        UPLOAD_TS + i + ASSIGNED_AFTER_MS,
        UPLOAD_TS + i,
    )


def records(
    assignments: Iterable[schema.SidAssignment],
    topic: str = SID_ASSIGNMENTS,
    partition: int = 0,
    first_offset: int = 0,
) -> list[Record]:
    return [
        Record(topic, partition, first_offset + n, schema.encode(a), a.ts)
        for n, a in enumerate(assignments)
    ]


class FakeInputs:
    """The publisher's Kafka inputs in memory: an assignments log (one partition) that
    catch_up ingests from the delta log's saved offset, and a held-out example list."""

    def __init__(self, topic: str = SID_ASSIGNMENTS) -> None:
        self.topic = topic
        self.log: list[Record] = []
        self.examples: list[schema.SftExample] = []
        self.held_out_calls: list[dict[int, int]] = []
        self.fail_catch_up: BaseException | None = None

    def assign(self, *indices: int, version: str = SID_VERSION) -> None:
        self.log += records(
            [assignment(i, version) for i in indices], self.topic, first_offset=len(self.log)
        )

    def catch_up(self, deltas: DeltaLog) -> int:
        if self.fail_catch_up is not None:
            raise self.fail_catch_up
        start = deltas.offsets(self.topic).get(0, 0)
        return deltas.ingest(self.topic, self.log[start:], {0: len(self.log)})

    def held_out(self, start: Mapping[int, int], n: int) -> list[schema.SftExample]:
        self.held_out_calls.append(dict(start))
        return self.examples[-n:]


# ------------------------------------------------------------------ a tiny model and run


def tiny_config(vocab: Vocab) -> ModelConfig:
    return dataclasses.replace(TINY, d_model=16, d_ff=32, n_layers=1, max_len=48).with_vocab(
        vocab.size
    )


def tiny_params(cfg: ModelConfig, seed: int) -> dict:
    params = init_params(cfg, jax.random.PRNGKey(seed))
    # scaled tied embeddings make a confident model, so exact score ties are unlikely
    emb = params["embed_tokens"]["embedding"] * 20
    return {**params, "embed_tokens": {"embedding": emb}}


def with_nan(params: dict) -> dict:
    emb = np.array(params["embed_tokens"]["embedding"])
    emb[0, 0] = np.nan
    return {**params, "embed_tokens": {"embedding": emb}}


def full_lookup(version: str = SID_VERSION) -> SidLookup:
    return SidLookup(version, {f"v{i}": sid_of(i) for i in range(N_VIDEOS)})


def examples(n: int, first: int = 0) -> list[schema.SftExample]:
    return [example(i) for i in range(first, first + n)]


class TinyRun:
    """A trainer run directory: the vocabulary and checkpoints with the trainer's meta."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        self.vocab = tiny_vocab()
        self.cfg = tiny_config(self.vocab)
        self.vocab.save(run_dir / "vocab")
        self.tx = make_optimizer(OptimizerConfig(1e-3, 1, 0.0, 0.9, 0.95, 1.0))

    def save(
        self,
        step: int,
        params: dict,
        *,
        sid_version: str | None = SID_VERSION,
        fresh_offsets: Mapping[int, int] | None = None,
        newest_event_ts: int = UPLOAD_TS,
        loss: float | None = None,
        average: dict | None = None,
        prompt_layout: str | None = None,
    ) -> None:
        """`average`: the parameters' moving average the optimizer state keeps, as a
        trainer with [trainer] ema_decay > 0 saves it (None: a trainer without one).
        `prompt_layout`: [trainer_data] prompt_layout (None: a run from before it existed)."""
        state = init_state(params, self.tx).replace(step=np.int32(step))
        if average is not None:
            tx = make_optimizer(OptimizerConfig(1e-3, 1, 0.0, 0.9, 0.95, 1.0, ema_decay=0.99))
            opt_state = init_state(params, tx).opt_state
            ema = ParamsEmaState(np.int32(step), average)
            state = state.replace(opt_state=(*opt_state[:-1], ema))
        meta: dict[str, Any] = {
            "kind": "sft",
            "position": {
                "fresh_offsets": {str(p): o for p, o in (fresh_offsets or {0: step}).items()},
                "history_draws": 0,
                "archive_step": step,
            },
            "counters": {"newest_event_ts": newest_event_ts, "fresh_records": step},
            "sid_version": sid_version,
            "model_config": self.cfg.to_dict(),
            "data_config": {"max_prompt_len": MAX_PROMPT_LEN, "batch_size": 8},
            "saved_at_ms": int(time.time() * 1000),
        }
        if loss is not None:
            meta["loss"] = loss
        if prompt_layout is not None:
            meta["data_config"]["prompt_layout"] = prompt_layout
        store = CheckpointStore(self.dir, max_to_keep=None, async_save=False)
        try:
            store.save(step, state, meta)
        finally:
            store.close()


def publisher_config(tmp: Path, *endpoints: str, **overrides: Any) -> PublisherConfig:
    fields = dict(
        admin_token=TOKEN,
        run_dir=str(tmp / "run"),
        model_repo=str(tmp / "models"),
        state_dir=str(tmp / "publisher"),
        endpoints=endpoints or (URL_A,),
        gate_k=5,
        gate_beams=5,
        gate_examples=16,
        gate_min_examples=4,
        gate_margin=0.02,
        push_timeout_s=5.0,
    )
    fields.update(overrides)
    return PublisherConfig(**fields)


# ------------------------------------------------------------------ a fake serving


def _problem(status: int, detail: str, **extra: Any) -> httpx.Response:
    body = {"type": "about:blank", "title": detail.split(":")[0], "status": status}
    body.update(detail=detail, **extra)
    headers = {"content-type": "application/problem+json"}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return httpx.Response(status, content=json.dumps(body).encode(), headers=headers)


class FakeServing:
    """serving's HTTP API semantics (design "HTTP API of serving") over a model
    repository, in memory: model loads with the index rules of a swap, SID deltas with
    sequence checks, /v1/status. Records what it was sent, for the tests' assertions."""

    def __init__(self, repo: ModelRepository, token: str = TOKEN, max_body: int = 1 << 20):
        self.repo = repo
        self.token = token
        self.max_body = max_body
        self.model: Any = None  # the loaded Manifest
        self.history: list[int] = []
        self.index_version: str | None = None
        self.index: list[tuple[str, tuple[int, ...]]] = []  # item i has seq i + 1
        self.loads: list[int] = []  # versions loaded by POST /v1/admin/models
        self.deltas: list[dict[str, Any]] = []  # every delta request and its answer
        self.too_large = 0  # requests refused with 413
        self.down = False  # connections refused
        self.lie_about_version: int | None = None  # /v1/status reports this instead
        self.refuse: set[int] = set()  # versions whose load fails (422, a corrupt artifact)

    @property
    def seq(self) -> int:
        return len(self.index)

    def start(self) -> None:
        """What serving does on start: load the repository's newest version."""
        latest = self.repo.latest()
        if latest is not None:
            self._load(latest, None)

    def _load(self, version: int, expect: str | None) -> httpx.Response | None:
        try:
            manifest = self.repo.manifest(version)
        except ArtifactError as err:
            return _problem(404, f"version not found: {err}")
        if version in self.refuse:
            return _problem(422, f"version {version}: content hash mismatch (corrupt)")
        if expect is not None and manifest.sid_version != expect:
            return _problem(422, f"sid_version mismatch: {manifest.sid_version} != {expect}")
        if self.model is not None and self.model.version == version:
            return None
        snapshot = IndexSnapshot.from_json(
            json.loads((self.repo.path(version) / SID_INDEX).read_text())
        )
        if (
            self.model is not None
            and snapshot.sid_version != self.index_version
            and version > self.model.version
        ):
            shortfall = switch_shortfall(snapshot, self.video_ids())
            if shortfall is not None:
                return _problem(422, f"version {version} switches sid_version: {shortfall}")
        keep = self.index_version == manifest.sid_version and self.seq >= snapshot.seq
        if not keep:
            self.index_version = snapshot.sid_version
            self.index = list(zip(snapshot.video_ids, snapshot.sids, strict=True))
        self.model = manifest
        self.history.append(version)
        self.loads.append(version)
        return None

    def status_body(self) -> dict[str, Any]:
        model = None
        if self.model is not None:
            version = self.lie_about_version or self.model.version
            model = {
                "version": version,
                "step": self.model.step,
                "sid_version": self.model.sid_version,
                "newest_event_ts_ms": self.model.newest_event_ts_ms,
                "created_at_ms": self.model.created_at_ms,
                "loaded_at_ms": 0,
                "age_s": 0.0,
                "content_hash": self.model.content_hash,
            }
        index = None
        if self.index_version is not None:
            index = {"sid_version": self.index_version, "seq": self.seq, "items": self.seq}
        return {
            "ready": model is not None and index is not None,
            "model": model,
            "index": index,
            "last_error": None,
            "history": list(self.history),
        }

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        path = request.url.path
        if path == "/v1/status" and request.method == "GET":
            return httpx.Response(200, json=self.status_body())
        if not path.startswith("/v1/admin/"):
            return _problem(404, f"no route {path}")
        if request.headers.get("authorization") != f"Bearer {self.token}" or not self.token:
            return _problem(401, "unauthorized: missing or wrong bearer token")
        if len(request.content) > self.max_body:
            self.too_large += 1
            return _problem(413, f"body of {len(request.content)} bytes over {self.max_body}")
        body = json.loads(request.content)
        if path == "/v1/admin/models":
            error = self._load(int(body["version"]), body.get("sid_version"))
            return error or httpx.Response(200, json=self.status_body())
        if path == "/v1/admin/sid-deltas":
            response = self._delta(body)
            self.deltas.append(
                {
                    "from_seq": body["from_seq"],
                    "to_seq": body["to_seq"],
                    "status": response.status_code,
                    "seq_after": self.seq,
                    "assigned_ts": [a.get("assigned_ts") for a in body.get("assignments", ())],
                }
            )
            return response
        return _problem(404, f"no route {path}")

    def _delta(self, body: dict[str, Any]) -> httpx.Response:
        try:
            delta = SidDelta.from_json(body)
        except DeltaError as err:
            return _problem(422, f"malformed delta: {err}")
        if self.index_version is None:
            return _problem(503, "no index loaded")
        if delta.sid_version != self.index_version or delta.from_seq > self.seq:
            return _problem(
                409,
                f"conflict: index is {self.index_version} at {self.seq}",
                expected_seq=self.seq,
                sid_version=self.index_version,
            )
        new = delta.after(self.seq) if delta.to_seq > self.seq else ()
        taken = {sid for _, sid in self.index}
        for a in new:
            if a.sid in taken:
                return _problem(422, f"SID {a.sid} is already another video's")
        self.index += [(a.video_id, a.sid) for a in new]
        return httpx.Response(
            200, json={"sid_version": self.index_version, "seq": self.seq, "applied": len(new)}
        )

    def video_ids(self) -> list[str]:
        return [v for v, _ in self.index]


def transport(servers: Mapping[str, FakeServing]) -> httpx.MockTransport:
    """One transport for several fake endpoints, routed by the request's host:port."""
    by_host = {httpx.URL(url).netloc.decode(): s for url, s in servers.items()}

    def route(request: httpx.Request) -> httpx.Response:
        return by_host[request.url.netloc.decode()].handle(request)

    return httpx.MockTransport(route)


__all__ = [
    "FakeInputs",
    "FakeServing",
    "TinyRun",
    "examples",
    "full_lookup",
    "publisher_config",
    "records",
    "transport",
    "with_nan",
]
