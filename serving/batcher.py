"""Dynamic batching of retrieval requests onto a few compiled beam-search shapes.

Requests are queued with a `concurrent.futures.Future` each. One worker thread takes the
oldest, waits until it has waited `max_wait_ms` (or the batch is full: the largest
compiled batch size) for others to join, then

    served = the slot's current (model, index)  -- once: the whole batch runs on it
    per beam width: prompts -> left-pad -> pad with dummy rows to the smallest compiled
                    batch size that holds them -> one beam search -> top-k of each real row

and resolves every future. A request therefore never waits longer than max_wait_ms plus
the batch in hand, and a model swapped in meanwhile is used from the next batch on (the
in-flight batch finishes on the model it started with). Prompts are written at batch
time from the batch's own snapshot, so a prompt always matches the vocabulary and index
it is searched with.

`batch_sizes=[1]` is unbatched serving: one request per search (the benchmark's baseline).
Rows of a batch are independent in the search (attention, cache and trie walk are per
row), so a request's result does not depend on the requests it was batched with.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from monitoring.metrics import Metrics
from serving.model_slot import HistoryEntry, NotReady, Served

log = logging.getLogger(__name__)

# Requests waiting at most; past it a request is refused at once (503) instead of queueing
# into a timeout: at ~1 ms per request per batch slot this is well over a second of work.
DEFAULT_MAX_QUEUE = 2048


class Overloaded(Exception):
    """The queue is full (or the batcher is closed): the request is refused, not queued."""


@dataclass(frozen=True)
class Query:
    """One retrieval: what the prompt is written from, the beam width and how many items."""

    history: tuple[HistoryEntry, ...]
    context_video_id: str | None
    k: int
    width: int  # a compiled beam width (the request's beam rounded up), >= k


@dataclass(frozen=True)
class RetrievedItem:
    video_id: str
    sid: tuple[int, ...]
    score: float  # sum of the SID tokens' log-probabilities


@dataclass(frozen=True)
class Retrieved:
    """The answer to one Query, with what it was computed on."""

    model_version: int
    sid_version: str
    index_seq: int
    items: tuple[RetrievedItem, ...]  # best first, at most k, only videos of the index
    unknown_history: int


@dataclass
class _Pending:
    query: Query
    future: Future
    enqueued: float = field(default_factory=time.monotonic)


_STOP = object()


class Batcher:
    """The worker thread and its queue; `submit` may be called from any thread."""

    def __init__(
        self,
        source: Callable[[], Served | None],
        batch_sizes: Sequence[int],
        max_wait_ms: float,
        metrics: Metrics,
        max_queue: int = DEFAULT_MAX_QUEUE,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not batch_sizes or sorted(set(batch_sizes)) != list(batch_sizes):
            raise ValueError(f"batch_sizes={list(batch_sizes)} must be increasing and non-empty")
        self._source = source
        self.batch_sizes = tuple(int(b) for b in batch_sizes)
        self.max_batch = self.batch_sizes[-1]
        self.max_wait_s = max_wait_ms / 1000
        self._wall = wall_clock
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self.answered = 0  # requests resolved with a result (only the worker writes it)
        self._batch_size = metrics.histogram("plum_serving_batch_size")
        self._queue_seconds = metrics.histogram("plum_serving_queue_seconds")
        self._unknown = metrics.counter("plum_serving_unknown_history_total")

    # ------------------------------------------------------------ life

    def start(self) -> Batcher:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="serving-batcher", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout_s: float = 30.0) -> None:
        """Finish the batch in hand, refuse what is still queued, stop the worker."""
        self._closed.set()
        if self._thread is None:
            return
        while True:  # the stop marker must get in even when the queue is full
            try:
                self._queue.put(_STOP, timeout=0.1)
                break
            except queue.Full:
                if not self._thread.is_alive():
                    break
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("batcher worker still busy after %.0f s", timeout_s)
        self._fail_queued(Overloaded("serving is shutting down"))

    def __enter__(self) -> Batcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ requests

    def submit(self, query: Query) -> Future:
        """Queue `query`; the future resolves to a Retrieved, or raises NotReady (no model)
        or Overloaded (queue full, shutting down)."""
        future: Future = Future()
        if self._closed.is_set() or self._thread is None:
            future.set_exception(Overloaded("serving is not accepting requests"))
            return future
        try:
            self._queue.put_nowait(_Pending(query, future))
        except queue.Full:
            future.set_exception(Overloaded(f"{self._queue.maxsize} requests already queued"))
        return future

    def retrieve(self, query: Query, timeout_s: float | None = None) -> Retrieved:
        """Submit and wait (for callers that are not async)."""
        return self.submit(query).result(timeout_s)

    # ------------------------------------------------------------ the worker

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            stopping = self._collect(batch, first.enqueued + self.max_wait_s)
            try:
                self._run_batch(batch)
            except Exception as err:  # noqa: BLE001 - the worker must outlive a bad batch
                log.exception("retrieval batch failed")
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(err)
            if stopping:
                return

    def _collect(self, batch: list[_Pending], deadline: float) -> bool:
        """Add queued requests until the batch is full or `deadline`; True = stop marker seen."""
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                return False
            if item is _STOP:
                return True
            batch.append(item)
        return False

    def _fail_queued(self, err: Exception) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP and item.future.set_running_or_notify_cancel():
                item.future.set_exception(err)

    def _run_batch(self, batch: list[_Pending]) -> None:
        started = time.monotonic()
        live = [p for p in batch if p.future.set_running_or_notify_cancel()]  # drop cancelled
        for p in live:
            self._queue_seconds.observe(started - p.enqueued)
        served = self._source()  # the snapshot this whole batch runs on
        if served is None:
            for p in live:
                p.future.set_exception(NotReady("no model is loaded yet"))
            return
        now_ms = int(self._wall() * 1000)
        by_width: dict[int, list[_Pending]] = defaultdict(list)
        for p in live:
            by_width[p.query.width].append(p)
        for width, group in by_width.items():
            try:
                self._search(served, width, group, now_ms)
            except Exception as err:  # noqa: BLE001 - one width's failure is its requests'
                log.exception("beam search at width %d failed", width)
                for p in group:
                    if not p.future.done():
                        p.future.set_exception(err)

    def _search(self, served: Served, width: int, group: list[_Pending], now_ms: int) -> None:
        if width not in served.searches:
            raise ValueError(
                f"beam width {width} is not compiled; widths {sorted(served.searches)}"
            )
        written = [served.prompt(p.query.history, p.query.context_video_id, now_ms) for p in group]
        size = next(b for b in self.batch_sizes if b >= len(group))
        tokens, mask = served.pad([w[0] for w in written], size)
        rows, scores = served.search(width, tokens, mask)  # [size, width] each, best first
        self._batch_size.observe(len(group))
        index = served.index
        for i, p in enumerate(group):
            items: list[RetrievedItem] = []
            for row, score in zip(rows[i].tolist(), scores[i].tolist(), strict=True):
                if row < 0 or not math.isfinite(score):
                    continue
                video = index.trie_video_ids[row]
                items.append(RetrievedItem(video, index.sid_of(video) or (), score))
                if len(items) == p.query.k:
                    break
            unknown = written[i][1]
            if unknown:
                self._unknown.inc(unknown)
            p.future.set_result(
                Retrieved(served.version, index.sid_version, index.seq, tuple(items), unknown)
            )
            self.answered += 1
