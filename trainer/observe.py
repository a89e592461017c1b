"""What the continuous trainer reports, kept beside its loop: gauges, consumer lag and the
text of the progress line. The loop (trainer/loop.py) calls three hooks: `step` after an
optimizer step, `batch` after a batch is accounted for, `checkpoint_saved`.

Consumer lag is `end offset - trained position` per partition, with end offsets from a
separate read_committed client (`streams.kafka.source.TopicEnds`: the input thread owns
its own consumer), refreshed every `lag_every_s`. A failing lag query logs a warning and
never stops training.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from monitoring.metrics import Metrics
from trainer.data import MixedBatch

log = logging.getLogger(__name__)


class EndOffsets(Protocol):
    def __call__(self, partitions: list[int]) -> dict[int, int]: ...

    def close(self) -> None: ...


class CountersView(Protocol):
    fresh_trained: int
    history_trained: int
    skipped_unknown: int
    newest_event_ts: int


class TrainerObserver:
    def __init__(
        self,
        metrics: Metrics,
        ends: EndOffsets | None = None,
        lag_every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        metrics.counter("plum_trainer_checkpoint_failures_total")  # exported from 0
        self._ends = ends
        self._lag_every_s = lag_every_s
        self._clock = clock
        self.started_at = clock()
        self._lag_at: float | None = None
        self.sid_version: str | None = None
        self.input_wait_fraction = 0.0
        self._text = "starting"

    def start(self) -> None:
        """The input-wait fraction counts from here (after restore and the data set-up)."""
        self.started_at = self._clock()

    def step(self, seconds: float, loss: float) -> None:
        self.metrics.histogram("plum_trainer_step_seconds").observe(seconds)
        self.metrics.gauge("plum_trainer_loss").set(loss)

    def batch(
        self,
        mb: MixedBatch,
        tokens: int,
        step: int,
        counters: CountersView,
        waited_s: float,
        offsets: dict[int, int],
    ) -> None:
        """After a batch was trained on (or only moved the position)."""
        m = self.metrics
        m.gauge("plum_trainer_step").set(step)
        m.counter("plum_trainer_examples_total").labels(source="fresh").inc(mb.n_fresh)
        m.counter("plum_trainer_examples_total").labels(source="history").inc(mb.n_history)
        skipped = m.counter("plum_trainer_examples_skipped_total")
        skipped.labels(reason="unknown_target").inc(mb.n_skipped_unknown)
        skipped.labels(reason="malformed").inc(mb.n_malformed)
        m.counter("plum_trainer_tokens_total").inc(tokens)
        m.gauge("plum_trainer_unencodable_sids").set(mb.unencodable_sids)
        c = counters
        trained = c.fresh_trained + c.history_trained
        m.gauge("plum_trainer_fresh_fraction").set(c.fresh_trained / trained if trained else 0.0)
        if c.newest_event_ts:
            m.gauge("plum_trainer_newest_event_ts").set(c.newest_event_ts)
        self._sid_version(mb.sid_version)
        now = self._clock()
        self.input_wait_fraction = waited_s / max(now - self.started_at, 1e-9)
        m.gauge("plum_trainer_input_wait_fraction").set(self.input_wait_fraction)
        self._text = (
            f"step {step} loss {m.value('plum_trainer_loss'):.4f} | input wait "
            f"{self.input_wait_fraction:.1%} | fresh {c.fresh_trained} history "
            f"{c.history_trained} skipped {c.skipped_unknown} | sid {mb.sid_version}"
        )
        if self._lag_at is None or now - self._lag_at >= self._lag_every_s:
            self._lag_at = now
            self.update_lag(offsets)

    def _sid_version(self, version: str | None) -> None:
        if version == self.sid_version:
            return
        info = self.metrics.gauge("plum_trainer_sid_version_info")
        if self.sid_version is not None:
            info.labels(version=self.sid_version).set(0)
            log.info("SID index switched %s -> %s", self.sid_version, version)
        self.sid_version = version
        if version is not None:
            info.labels(version=version).set(1)

    def update_lag(self, offsets: dict[int, int]) -> None:
        """plum_trainer_consumer_lag: records of the topic not yet trained on, per partition."""
        if self._ends is None or not offsets:
            return
        try:
            ends = self._ends(sorted(offsets))
        except Exception as err:  # noqa: BLE001 - a metric must not stop training
            log.warning("consumer lag not updated: %s", err)
            return
        gauge = self.metrics.gauge("plum_trainer_consumer_lag")
        for p, end in ends.items():
            gauge.labels(partition=str(p)).set(max(0, end - offsets[p]))

    def checkpoint_saved(self) -> None:
        self.metrics.gauge("plum_trainer_last_checkpoint_ts").set(time.time() * 1000)

    def checkpoint_failed(self, err: BaseException) -> None:
        self.metrics.counter("plum_trainer_checkpoint_failures_total").inc()
        log.error("checkpoint failed, training goes on from the last good one: %s", err)

    def describe(self) -> str:
        """The trainer's part of the runtime's progress line."""
        return self._text

    def close(self) -> None:
        if self._ends is not None:
            self._ends.close()
