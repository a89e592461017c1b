"""Dynamic batching: batched answers equal unbatched ones, a batch runs on one snapshot,
groups by beam width, pads to compiled sizes and drops the dummy rows; a full queue and a
closed batcher refuse instead of hanging."""

import threading
from concurrent.futures import CancelledError
from types import SimpleNamespace

import numpy as np
import pytest

from monitoring.metrics import Metrics
from serving.batcher import Batcher, Overloaded, Query
from serving.model_slot import HistoryEntry, NotReady
from tests.serving_support import serving_stack

TS = 1_700_000_000_000


def queries(k: int = 10) -> list[Query]:
    """Different histories: known, unknown, with and without times and context."""
    return [
        Query((HistoryEntry("v1"),), None, k, 10),
        Query(
            (HistoryEntry("v3", 0.2, 40.0, TS), HistoryEntry("v9", 1.0, 300.0, TS + 60_000)),
            "v4",
            k,
            10,
        ),
        Query((HistoryEntry("nope"), HistoryEntry("v12", 0.9, 5.0)), "unknown-ctx", k, 10),
        Query((), "v7", k, 10),
    ]


def assert_same_ranking(a, b, tol: float = 1e-4) -> None:
    """Equal up to float rounding: XLA may sum in another order for another batch shape,
    so scores agree to `tol` and two items may only trade places when their scores tie."""
    assert (a.model_version, a.index_seq, a.unknown_history) == (
        b.model_version,
        b.index_seq,
        b.unknown_history,
    )
    assert len(a.items) == len(b.items)
    for x, y in zip(a.items, b.items, strict=True):
        assert x.score == pytest.approx(y.score, abs=tol)
        if x.video_id != y.video_id:
            assert abs(x.score - y.score) <= tol
    assert {i.video_id for i in a.items[:-1]} <= {i.video_id for i in b.items}


@pytest.fixture
def stack(tmp_path):
    with serving_stack(tmp_path, max_wait_ms=2000.0) as s:  # a batch fills before it runs
        yield s


def test_batched_answers_equal_unbatched_answers(stack):
    metrics = Metrics.for_component("serving")
    with Batcher(lambda: stack.slot.served, (1,), 0.0, metrics) as unbatched:
        alone = [unbatched.retrieve(q, 60) for q in queries()]
    assert metrics.registry.get_sample_value("plum_serving_batch_size_sum") == 4
    assert metrics.registry.get_sample_value("plum_serving_batch_size_count") == 4
    futures = [stack.batcher.submit(q) for q in queries()]
    together = [f.result(60) for f in futures]
    registry = stack.metrics.registry
    assert registry.get_sample_value("plum_serving_batch_size_count") == 1  # one search
    assert registry.get_sample_value("plum_serving_batch_size_sum") == 4
    for a, b in zip(together, alone, strict=True):
        assert_same_ranking(a, b)


def test_answers_name_only_videos_of_the_index_best_first(stack):
    index = stack.slot.served.index
    for r in (f.result(60) for f in [stack.batcher.submit(q) for q in queries(k=3)]):
        assert 0 < len(r.items) <= 3
        assert all(i.video_id in index.trie_video_ids for i in r.items)
        assert all(i.sid == index.sid_of(i.video_id) for i in r.items)
        scores = [i.score for i in r.items]
        assert scores == sorted(scores, reverse=True) and np.isfinite(scores).all()
    assert stack.metrics.value("plum_serving_unknown_history_total") == 1


# ---------------------------------------------------------------- with a fake model


class FakeServed:
    """The Served interface the batcher uses; search returns row r's own index as scores."""

    def __init__(self, version: int = 1, items: int = 8) -> None:
        self.version = version
        self.searches = {5: None, 10: None}
        self.index = SimpleNamespace(
            trie_video_ids=tuple(f"v{i}" for i in range(items)),
            sid_of=lambda v: (int(v[1:]),),
            sid_version="s",
            seq=items,
        )
        self.calls: list[tuple[int, int]] = []

    def prompt(self, history, context, now_ms):
        return [len(history)], 0

    def pad(self, prompts, batch):
        tokens = np.array([p[0] for p in prompts] + [-1] * (batch - len(prompts)))
        return tokens, np.ones_like(tokens, bool)

    def search(self, width, tokens, mask):
        self.calls.append((width, len(tokens)))
        rows = np.tile(np.arange(width) % len(self.index.trie_video_ids), (len(tokens), 1))
        scores = -np.arange(width, dtype=float)[None].repeat(len(tokens), 0) - tokens[:, None]
        return rows, scores


def fake_query(n_history: int, width: int, k: int = 2) -> Query:
    return Query(tuple(HistoryEntry(f"v{i}") for i in range(n_history)), None, k, width)


def test_groups_by_width_pads_to_compiled_sizes_and_drops_dummy_rows():
    served = FakeServed()
    sources = []

    def source():
        sources.append(1)
        return served

    qs = [
        fake_query(1, 5),
        fake_query(2, 10),
        fake_query(3, 5),
        fake_query(4, 5),
        fake_query(5, 10),
    ]
    with Batcher(source, (1, 2, 8), 5000.0, Metrics.for_component("serving")) as batcher:
        futures = [batcher.submit(q) for q in qs]
        # 5 < 8 never fills the batch: leaving the block closes the batcher, whose stop
        # marker ends the wait and the batch in hand still runs
    batcher_results = [f.result(10) for f in futures]
    assert len(sources) == 1  # the whole batch ran on one snapshot
    assert sorted(served.calls) == [(5, 8), (10, 2)]
    for q, r in zip(qs, batcher_results, strict=True):
        assert r.model_version == 1 and len(r.items) == q.k
        assert r.items[0].score == -len(q.history)  # its own row, not a dummy's


def test_a_batch_started_on_one_model_finishes_on_it():
    first, second = FakeServed(version=1), FakeServed(version=2)
    current = [first]
    release = threading.Event()

    def source():
        served = current[0]
        current[0] = second  # a swap right after the batch took its snapshot
        release.wait(10)
        return served

    with Batcher(source, (1, 4), 5000.0, Metrics.for_component("serving")) as batcher:
        futures = [batcher.submit(fake_query(1, 5)) for _ in range(4)]
        release.set()
        assert {f.result(10).model_version for f in futures} == {1}
        futures = [batcher.submit(fake_query(1, 5)) for _ in range(4)]
        assert {f.result(10).model_version for f in futures} == {2}  # the next batch


def test_no_model_answers_not_ready():
    with Batcher(lambda: None, (1,), 0.0, Metrics.for_component("serving")) as batcher:
        with pytest.raises(NotReady):
            batcher.retrieve(fake_query(1, 5), 10)


def test_full_queue_and_closed_batcher_refuse_and_cancelled_requests_are_skipped():
    served = FakeServed()
    entered, release = threading.Event(), threading.Event()

    def source():
        entered.set()
        release.wait(10)
        return served

    batcher = Batcher(source, (1,), 0.0, Metrics.for_component("serving"), max_queue=2).start()
    try:
        running = batcher.submit(fake_query(1, 5))
        assert entered.wait(10)  # the worker holds `running`; the queue is empty
        cancelled = batcher.submit(fake_query(1, 5))
        queued = batcher.submit(fake_query(2, 5))
        with pytest.raises(Overloaded, match="queued"):
            batcher.submit(fake_query(1, 5)).result(0)
        assert cancelled.cancel()
        release.set()
        assert running.result(10).items and queued.result(10).items
        with pytest.raises(CancelledError):
            cancelled.result(0)
        assert served.calls == [(5, 1), (5, 1)]  # the cancelled one never ran
    finally:
        batcher.close()
    with pytest.raises(Overloaded):
        batcher.submit(fake_query(1, 5)).result(0)
