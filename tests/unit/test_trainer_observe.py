"""The trainer's observer: gauges, consumer lag and the progress text, without Kafka."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from monitoring.metrics import Metrics
from trainer.data import DataPosition, MixedBatch
from trainer.observe import TrainerObserver
from trainer.prompt import Batch


class FakeEnds:
    def __init__(self, ends: dict[int, int] | None = None, error: Exception | None = None):
        self.ends, self.error, self.calls, self.closed = ends or {}, error, 0, False

    def __call__(self, partitions: list[int]) -> dict[int, int]:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return {p: self.ends[p] for p in partitions}

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def batch(sid: str = "v1", fresh: int = 2, history: int = 1) -> MixedBatch:
    zeros = np.zeros((4, 8), np.int32)
    return MixedBatch(
        batch=Batch(zeros, zeros, np.zeros((4, 8), np.float32), np.zeros((4, 8), bool)),
        position=DataPosition({0: 5, 1: 7}),
        fresh_records=(),
        n_fresh=fresh,
        n_history=history,
        n_skipped_unknown=1,
        n_malformed=0,
        sid_version=sid,
        newest_fresh_ts=None,
    )


def counters(fresh: int = 3, history: int = 1) -> SimpleNamespace:
    return SimpleNamespace(
        fresh_trained=fresh, history_trained=history, skipped_unknown=1, newest_event_ts=123
    )


def observer(ends=None, clock=None) -> TrainerObserver:
    return TrainerObserver(Metrics.for_component("trainer"), ends, 10.0, clock or Clock())


def test_lag_is_end_minus_trained_position_and_refreshes_every_interval():
    ends, clock = FakeEnds({0: 9, 1: 7}), Clock()
    obs = observer(ends, clock)
    obs.batch(batch(), 10, 3, counters(), 0.0, {0: 5, 1: 7})
    m = obs.metrics
    assert m.value("plum_trainer_consumer_lag", partition="0") == 4.0
    assert m.value("plum_trainer_consumer_lag", partition="1") == 0.0
    clock.t += 5.0  # within the interval: no new query
    obs.batch(batch(), 10, 4, counters(), 0.0, {0: 9, 1: 7})
    assert ends.calls == 1 and m.value("plum_trainer_consumer_lag", partition="0") == 4.0
    clock.t += 5.0
    obs.batch(batch(), 10, 5, counters(), 0.0, {0: 9, 1: 7})
    assert ends.calls == 2 and m.value("plum_trainer_consumer_lag", partition="0") == 0.0
    obs.close()
    assert ends.closed


def test_a_failing_lag_query_does_not_stop_training():
    obs = observer(FakeEnds(error=RuntimeError("broker down")))
    obs.batch(batch(), 10, 3, counters(), 0.0, {0: 5})  # must not raise
    assert obs.metrics.value("plum_trainer_step") == 3.0


def test_gauges_and_the_progress_text_follow_the_batches():
    clock = Clock()
    obs = observer(clock=clock)
    obs.start()
    obs.step(0.5, 2.25)
    clock.t += 10.0
    obs.batch(batch(), 12, 3, counters(fresh=3, history=1), 2.5, {})
    m = obs.metrics
    assert m.value("plum_trainer_input_wait_fraction") == 0.25
    assert m.value("plum_trainer_fresh_fraction") == 0.75
    assert m.value("plum_trainer_tokens_total") == 12.0
    assert m.value("plum_trainer_examples_total", source="fresh") == 2.0
    assert m.value("plum_trainer_examples_skipped_total", reason="unknown_target") == 1.0
    assert obs.describe() == (
        "step 3 loss 2.2500 | input wait 25.0% | fresh 3 history 1 skipped 1 | sid v1"
    )


def test_a_sid_version_switch_moves_the_info_gauge():
    obs = observer()
    obs.batch(batch("v1"), 0, 1, counters(), 0.0, {})
    obs.batch(batch("v2"), 0, 2, counters(), 0.0, {})
    m = obs.metrics
    assert m.value("plum_trainer_sid_version_info", version="v1") == 0.0
    assert m.value("plum_trainer_sid_version_info", version="v2") == 1.0
    assert obs.sid_version == "v2"
