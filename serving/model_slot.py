"""The hot-swappable (model, SID index) pair serving answers from.

`ModelSlot.served` is one immutable `Served`: the artifact's manifest, its parameters on
the device, vocabulary, model config, one compiled beam search per beam width, and the
SID index with its trie on the device. Every change builds a NEW `Served` beside the
current one and swaps it in with one reference assignment under a lock:

- `load(version)` reads and verifies the artifact (serving/artifact.py), puts it on the
  device and WARMS UP every compiled beam width x batch size (so no request pays a
  compile), then swaps. A failure anywhere leaves the old pair serving, records
  `last_error` and counts plum_serving_model_loads_total{outcome="failed"}.
- `apply_delta(delta)` builds the next index (serving/index.py); when its trie shapes
  changed it warms the searches up on them first.

A retrieval batch takes `served` once at its start and finishes on that snapshot, so
in-flight requests finish on the model (and index) they started with.

SID version switches (a reindex under a new tokenizer) go out as a model trained on the
new sid_version, never as deltas: loading a version of another sid_version builds its
index from the artifact's own snapshot and swaps model and index as ONE `Served`, so every
answer comes from one consistent (model, index) pair, before or after the switch. A switch
to a NEWER version is refused (422, the old pair keeps serving) unless its snapshot is
complete (`serving.artifact.switch_shortfall`: dense up to its seq, covering the videos
served); going back to an older version (a rollback) is not held to that, and gets the
index its version had when it was last left, deltas included, when that is at least its
snapshot. After a switch, deltas of the old sid_version are refused with 409 naming the
served sid_version and its seq (serving/index.py), so a sender knows to follow the model.

Compiled searches are kept by (model config, SID slot layout, width) in a `SearchCache`:
loading a new version of the same architecture reuses them, and its warm-up only runs them.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from monitoring.metrics import Metrics
from serving.artifact import (
    ArtifactError,
    IndexSnapshot,
    Manifest,
    ModelRepository,
    switch_shortfall,
)
from serving.index import SequenceGap, ServingIndex
from serving.sid_delta import DeltaError, SidDelta
from streams.contracts import schema
from trainer.beam import BeamSearch, SidTrie, left_pad
from trainer.config import ModelConfig
from trainer.prompt import prompt_for
from trainer.vocab import Vocab

log = logging.getLogger(__name__)

WallClock = Callable[[], float]


class ModelLoadError(Exception):
    """A version that could not be served; the old pair keeps serving.

    `status` is the HTTP answer: 404 when the version does not exist, 409 when there is
    nothing to roll back to, 422 otherwise (corrupt, NaN, wrong sid_version, ...)."""

    def __init__(self, detail: str, version: int | None = None, status: int = 422) -> None:
        super().__init__(detail)
        self.detail = detail
        self.version = version
        self.status = status


class NotReady(Exception):
    """No model (and so no SID index) is loaded yet."""


@dataclass(frozen=True)
class LastError:
    """The most recent failed action, as /v1/status shows it."""

    action: str  # "load", "rollback", "start" or "delta"
    detail: str
    at_ms: int
    version: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action, "detail": self.detail, "at_ms": self.at_ms}
        if self.version is not None:
            out["version"] = self.version
        return out


@dataclass(frozen=True)
class HistoryEntry:
    """One watch of a request's history (validated at the HTTP edge)."""

    video_id: str
    watch_ratio: float = 1.0
    watch_time_s: float = 0.0
    ts: int | None = None  # epoch ms; None = unknown (hours_since 0)


class SearchCache:
    """One BeamSearch per (model config, SID slot layout, width), shared by every load.

    A jitted search compiles per instance, so reusing the instance is what makes a hot
    swap to a same-architecture version cost no compile."""

    def __init__(self) -> None:
        self._searches: dict[tuple, BeamSearch] = {}
        self._lock = threading.Lock()

    def get(self, config: ModelConfig, vocab: Vocab, width: int) -> BeamSearch:
        key = (config, vocab.sid_slot_offsets, vocab.sid_slot_sizes, int(width))
        with self._lock:
            search = self._searches.get(key)
            if search is None:
                search = self._searches[key] = BeamSearch.for_vocab(config, vocab, width)
            return search


def device_trie(index: ServingIndex) -> SidTrie:
    """The index's trie with its tables on the device once, not copied per request."""
    return SidTrie(tuple(jax.device_put(t) for t in index.trie.tables), index.trie.slots)


@dataclass(frozen=True)
class Served:
    """What one retrieval runs on; never changed, only replaced (see the module docstring)."""

    manifest: Manifest
    params: Any  # on the device
    vocab: Vocab
    model_config: ModelConfig
    searches: Mapping[int, BeamSearch]  # beam width -> compiled search
    index: ServingIndex
    trie: SidTrie  # index.trie on the device
    loaded_at_ms: int

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def prompt_len(self) -> int:
        return self.manifest.max_prompt_len

    def prompt(
        self, history: Sequence[HistoryEntry], context_video_id: str | None, now_ms: int
    ) -> tuple[list[int], int]:
        """(prompt tokens, history items skipped as unknown).

        Written by the trainer's own prompt_for in the layout the version was trained in
        (its manifest's prompt_layout), so serving asks exactly what the model learned:
        known history items oldest first with hours_since = hours before now, then, in the
        "target" layout, the context (unknown = <unk>) and <tgt> (the "sequence" layout has
        no context). Unknown history items are skipped, not written as <unk>: a request
        may name any id, and what the model never saw says nothing about the user."""
        known: list[schema.HistoryItem] = []
        unknown = 0
        sids = self.index.lookup.sids
        for h in history:
            if h.video_id not in sids:
                unknown += 1
                continue
            hours = 0.0 if h.ts is None else max(0.0, (now_ms - h.ts) / 3.6e6)
            known.append(schema.HistoryItem(h.video_id, h.watch_ratio, h.watch_time_s, hours))
        example = schema.SftExample(
            event_id="serving",
            user_id="",
            history=tuple(known),
            context_video_id=context_video_id,
            target_video_id="",
            reward=0.0,
            ts=now_ms,
        )
        layout = self.manifest.prompt_layout
        return prompt_for(example, self.index.lookup, self.vocab, self.prompt_len, layout), unknown

    def pad(self, prompts: Sequence[Sequence[int]], batch: int) -> tuple[np.ndarray, np.ndarray]:
        """Prompts left-padded to the prompt length, plus dummy rows up to `batch`."""
        rows = list(prompts) + [[self.vocab.bos_id]] * (batch - len(prompts))
        return left_pad(rows, self.vocab.pad_id, self.prompt_len)

    def search(
        self, width: int, tokens: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(trie rows [batch, width] int, -1 = none; scores [batch, width]) best first."""
        result = self.searches[width](self.params, tokens, mask, self.trie)
        return np.asarray(result.item), np.asarray(result.scores)

    def warm_up(self, batch_sizes: Sequence[int]) -> None:
        """Run every compiled width x batch size once (compiling what is not yet), and
        refuse a model whose outputs are NaN: the last check before anything is served.
        Each shape is logged with its time: a first load compiles them all (minutes on
        2 loaded cores), a later one of the same architecture only runs them."""
        shapes = [(w, b) for w in sorted(self.searches) for b in batch_sizes]
        for n, (width, batch) in enumerate(shapes, 1):
            started = time.monotonic()
            tokens, mask = self.pad([], batch)
            _, scores = self.search(width, tokens, mask)
            if np.isnan(scores).any():
                raise ModelLoadError(
                    f"version {self.version}: the warm-up search at beam {width}, batch "
                    f"{batch} gives NaN scores",
                    self.version,
                )
            log.info(
                "version %s: warm-up %d/%d (beam %d, batch %d) in %.1f s",
                self.version,
                n,
                len(shapes),
                width,
                batch,
                time.monotonic() - started,
            )


def _all_finite(params: Any) -> bool:
    leaves = jax.tree_util.tree_leaves(params)
    return all(bool(jnp.isfinite(leaf).all()) for leaf in leaves)


def _same_sid_layout(a: Vocab, b: Vocab) -> bool:
    return (a.sid_level_sizes, a.disambiguation_size) == (b.sid_level_sizes, b.disambiguation_size)


class ModelSlot:
    """The served (model, index) pair, its load history and its last error."""

    def __init__(
        self,
        repo: ModelRepository,
        beam_widths: Sequence[int],
        batch_sizes: Sequence[int],
        metrics: Metrics,
        searches: SearchCache | None = None,
        clock: WallClock = time.time,
    ) -> None:
        self.repo = repo
        self.beam_widths = tuple(int(w) for w in beam_widths)
        self.batch_sizes = tuple(int(b) for b in batch_sizes)
        self.metrics = metrics
        self.searches = searches or SearchCache()
        self._clock = clock
        self._served: Served | None = None
        self._left: ServingIndex | None = None  # the index of the sid_version last left
        self._history: list[int] = []
        self._last_error: LastError | None = None
        self._lock = threading.Lock()  # one change at a time; readers never take it
        self._gauges()
        # every outcome's series at 0 from the start: a failure that never happened reads 0
        for outcome in ("loaded", "failed"):
            metrics.counter("plum_serving_model_loads_total").labels(outcome=outcome)
        for outcome in ("applied", "duplicate", "gap", "rejected"):
            metrics.counter("plum_serving_deltas_total").labels(outcome=outcome)

    # ------------------------------------------------------------ reading

    @property
    def served(self) -> Served | None:
        """The current pair (one reference read: a consistent snapshot)."""
        return self._served

    @property
    def ready(self) -> bool:
        return self._served is not None

    @property
    def history(self) -> tuple[int, ...]:
        """Versions loaded, oldest first (a re-load of the served version adds nothing)."""
        return tuple(self._history)

    @property
    def last_error(self) -> LastError | None:
        return self._last_error

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    def status(self) -> dict[str, Any]:
        """The body of GET /v1/status."""
        served = self._served
        model = index = None
        if served is not None:
            m = served.manifest
            model = {
                "version": m.version,
                "step": m.step,
                "sid_version": m.sid_version,
                "newest_event_ts_ms": m.newest_event_ts_ms,
                "created_at_ms": m.created_at_ms,
                "loaded_at_ms": served.loaded_at_ms,
                "age_s": max(0.0, self._clock() - m.created_at_ms / 1000),
                "content_hash": m.content_hash,
                "prompt_layout": m.prompt_layout,
            }
            index = {
                "sid_version": served.index.sid_version,
                "seq": served.index.seq,
                "items": served.index.items,
            }
        error = self._last_error
        return {
            "ready": served is not None,
            "model": model,
            "index": index,
            "last_error": None if error is None else error.to_json(),
            "history": list(self._history),
        }

    # ------------------------------------------------------------ models

    def load(self, version: int, sid_version: str | None = None, action: str = "load") -> Served:
        """Serve `version` (built and warmed up beside the current pair, then swapped).

        The version already served: returned as is, nothing reloaded. Raises
        ModelLoadError (the current pair keeps serving)."""
        with self._lock:
            return self._load_locked(int(version), sid_version, action)

    def rollback(self, version: int | None = None) -> Served:
        """Serve `version`, default the one served before the current one."""
        with self._lock:
            if version is None:
                if len(self._history) < 2:
                    error = ModelLoadError(
                        f"nothing to roll back to: versions loaded so far {self._history}",
                        status=409,
                    )
                    self._fail("rollback", error)
                    raise error
                version = self._history[-2]
            return self._load_locked(int(version), None, "rollback")

    def load_latest(self) -> Served | None:
        """On start: serve the newest version of the repository; when it fails, the next
        older one (a new replica serves what it can, the error stays in last_error).

        Does nothing once a pair is served (an admin load may have come first)."""
        with self._lock:
            if self._served is not None:
                return self._served
            for version in reversed(self.repo.versions()):
                try:
                    return self._load_locked(version, None, "start")
                except ModelLoadError as err:
                    log.warning("start: version %d not served: %s", version, err.detail)
            log.info("start: no servable version under %s yet", self.repo.base_path)
            return None

    def _fail(self, action: str, error: ModelLoadError) -> None:
        self._last_error = LastError(action, error.detail, self.now_ms(), error.version)
        self.metrics.counter("plum_serving_model_loads_total").labels(outcome="failed").inc()

    def _load_locked(self, version: int, sid_version: str | None, action: str) -> Served:
        current = self._served
        if current is not None and current.version == version:
            if sid_version is not None and sid_version != current.manifest.sid_version:
                error = ModelLoadError(
                    f"version {version} is built for sid_version "
                    f"{current.manifest.sid_version!r}, not {sid_version!r}",
                    version,
                )
                self._fail(action, error)
                raise error
            return current
        started = time.monotonic()
        try:
            served = self._build(version, sid_version, current)
            served.warm_up(self.batch_sizes)
        except ModelLoadError as error:
            self._fail(action, error)
            log.warning("%s of version %d failed: %s", action, version, error.detail)
            raise
        if current is not None and current.index.sid_version != served.index.sid_version:
            self._left = current.index  # a rollback across the switch gets it back
            log.info(
                "%s: SID version %s -> %s (model %d -> %d, swapped as one pair)",
                action,
                current.index.sid_version,
                served.index.sid_version,
                current.version,
                version,
            )
        self._served = served
        self._history.append(version)
        self.metrics.counter("plum_serving_model_loads_total").labels(outcome="loaded").inc()
        log.info(
            "%s: serving version %d (step %d, %s, index seq %d, %d items) after %.1f s; before: %s",
            action,
            version,
            served.manifest.step,
            served.manifest.sid_version,
            served.index.seq,
            served.index.items,
            time.monotonic() - started,
            "none" if current is None else current.version,
        )
        return served

    def _build(self, version: int, sid_version: str | None, current: Served | None) -> Served:
        if version < 1 or version not in self.repo.versions():
            raise ModelLoadError(
                f"version {version} does not exist under {self.repo.base_path}", version, 404
            )
        try:
            artifact = self.repo.load(version, expect_sid_version=sid_version)
            vocab = Vocab.load(artifact.vocab_dir)
            config = ModelConfig.from_dict(artifact.manifest.model_config)
        except ArtifactError as err:
            raise ModelLoadError(str(err), version) from err
        except Exception as err:  # noqa: BLE001 - any unreadable part makes it unservable
            raise ModelLoadError(f"version {version}: unreadable ({err})", version) from err
        manifest = artifact.manifest
        if config.vocab_size != vocab.size:
            raise ModelLoadError(
                f"version {version}: model vocab_size {config.vocab_size} != its vocabulary's "
                f"{vocab.size}",
                version,
            )
        if manifest.max_prompt_len + vocab.num_sid_slots - 1 > config.max_len:
            raise ModelLoadError(
                f"version {version}: max_prompt_len {manifest.max_prompt_len} + "
                f"{vocab.num_sid_slots} SID tokens exceeds the model's max_len {config.max_len}",
                version,
            )
        index = self._index_for(artifact.snapshot, vocab, current)
        if (
            current is not None
            and index.sid_version != current.index.sid_version
            and version > current.version
        ):
            shortfall = switch_shortfall(index, current.index.video_ids)
            if shortfall is not None:
                raise ModelLoadError(
                    f"version {version} switches sid_version {current.index.sid_version!r} -> "
                    f"{index.sid_version!r}, but {shortfall}",
                    version,
                )
        params = jax.device_put(artifact.params)
        if not _all_finite(params):  # serving's own check, on what it will really run
            raise ModelLoadError(f"version {version}: parameters are not finite", version)
        searches = {w: self.searches.get(config, vocab, w) for w in self.beam_widths}
        return Served(
            manifest=manifest,
            params=params,
            vocab=vocab,
            model_config=config,
            searches=searches,
            index=index,
            trie=device_trie(index),
            loaded_at_ms=self.now_ms(),
        )

    def _index_for(
        self, snapshot: IndexSnapshot, vocab: Vocab, current: Served | None
    ) -> ServingIndex:
        """The current index, or the one of the sid_version last left, when it already
        holds the artifact's snapshot (same sid_version, seq at least the snapshot's):
        deltas applied since are kept; else the artifact's snapshot."""
        try:
            held = [] if current is None else [current.index]
            if self._left is not None:
                held.append(self._left)
            for index in held:
                if index.sid_version == snapshot.sid_version and index.seq >= snapshot.seq:
                    if _same_sid_layout(index.vocab, vocab):
                        return index
                    return index.with_vocab(vocab)
            return ServingIndex.from_snapshot(snapshot, vocab)
        except DeltaError as err:
            raise ModelLoadError(f"SID index snapshot: {err}") from err

    # ------------------------------------------------------------ SID deltas

    def apply_delta(self, delta: SidDelta) -> tuple[ServingIndex, int]:
        """(the index now served, sequence numbers applied); see ServingIndex.apply.

        Raises NotReady (no index yet), SequenceGap (409) or DeltaError (422)."""
        deltas = self.metrics.counter("plum_serving_deltas_total")
        with self._lock:
            current = self._served
            if current is None:
                raise NotReady("no SID index is loaded yet (no model)")
            try:
                index, applied = current.index.apply(delta)
            except DeltaError as err:
                deltas.labels(outcome="rejected").inc()
                self._last_error = LastError("delta", str(err), self.now_ms())
                raise
            except SequenceGap:
                deltas.labels(outcome="gap").inc()
                raise
            if not applied:
                deltas.labels(outcome="duplicate").inc()
                return current.index, 0
            new = current.index.missing(delta)
            served = replace(current, index=index, trie=device_trie(index))
            if index.shapes != current.index.shapes:
                log.info(
                    "SID index trie shapes %s -> %s: warming up", current.index.shapes, index.shapes
                )
                served.warm_up(self.batch_sizes)
            self._served = served
        deltas.labels(outcome="applied").inc()
        now_s = self._clock()
        upload_to_servable = self.metrics.histogram("plum_serving_upload_to_servable_seconds")
        sid_to_servable = self.metrics.histogram("plum_serving_sid_to_servable_seconds")
        for a in new:
            if a.upload_ts > 0:
                upload_to_servable.observe(max(0.0, now_s - a.upload_ts / 1000))
            if a.assigned_ts > 0:
                sid_to_servable.observe(max(0.0, now_s - a.assigned_ts / 1000))
        return index, applied

    # ------------------------------------------------------------ gauges

    def _gauges(self) -> None:
        """Gauges computed at scrape time from the served pair (NaN: nothing served)."""

        def of(fn: Callable[[Served], float]) -> Callable[[], float]:
            def read() -> float:
                served = self._served
                return math.nan if served is None else float(fn(served))

            return read

        def lag(s: Served) -> float:
            newest = s.manifest.newest_event_ts_ms
            return math.nan if newest <= 0 else max(0.0, self._clock() - newest / 1000)

        g = self.metrics.gauge
        g("plum_serving_model_version").set_function(of(lambda s: s.version))
        g("plum_serving_model_step").set_function(of(lambda s: s.manifest.step))
        g("plum_serving_model_age_seconds").set_function(
            of(lambda s: max(0.0, self._clock() - s.manifest.created_at_ms / 1000))
        )
        g("plum_serving_model_event_lag_seconds").set_function(of(lag))
        g("plum_serving_index_seq").set_function(of(lambda s: s.index.seq))
        g("plum_serving_index_items").set_function(of(lambda s: s.index.items))
