"""A backfill's last checkpoint, asked for as soon as its input is drained.

A bounded job commits its Kafka transactions, and so ends, only at a checkpoint taken
after every task has seen the end of its input (Flink's final checkpoint, FLIP-147). Left
to the periodic trigger, that checkpoint comes up to one `checkpoint_interval_ms` after
the last record. This watcher polls the job's REST API and, once every vertex behind the
sources holds the end-of-input watermark (Long.MAX_VALUE, sent by a bounded source after
its last record, so every record is processed before it), triggers a checkpoint itself
(POST /jobs/<id>/checkpoints, Flink >= 1.19). A trigger that comes too early only adds a
checkpoint: the periodic one still ends the job, so correctness never depends on this.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from streams.flink.job_metrics import is_source

if TYPE_CHECKING:
    from streams.flink.job_metrics import FlinkRest

log = logging.getLogger(__name__)

END_OF_INPUT = 2**63 - 1  # Long.MAX_VALUE: the watermark a finished bounded source sends


def _watermark(value: Any) -> float:
    try:
        return int(value)
    except (TypeError, ValueError):
        return float(value)


def input_drained(
    vertices: Iterable[dict[str, Any]], watermarks_of: Callable[[str], list[dict[str, Any]]]
) -> bool:
    """True when every vertex that is not a source reports the end-of-input watermark on
    every subtask. `vertices`: the "vertices" of GET /jobs/<id>; `watermarks_of(vertex
    id)`: the body of GET /jobs/<id>/vertices/<vid>/watermarks (a list of {"id":
    "<subtask>.currentInputWatermark", "value": "..."}). A job with no such vertex, or a
    vertex whose subtasks report nothing yet, is not drained."""
    inner = [v for v in vertices if not is_source(v)]
    if not inner:
        return False
    for vertex in inner:
        marks = watermarks_of(str(vertex["id"]))
        if not marks or any(_watermark(m.get("value")) < END_OF_INPUT for m in marks):
            return False
    return True


class FinalCheckpoint:
    """Watches job `job_id` through `rest` (Flink's REST API) every
    `interval_s` and triggers a checkpoint once its input is drained; if the job is still
    running `retry_s` later (the checkpoint raced the end of input), triggers again, at
    most `attempts` times. `close()` stops it (the job ended)."""

    def __init__(
        self,
        rest: FlinkRest,
        job_id: str,
        interval_s: float = 0.25,
        retry_s: float = 3.0,
        attempts: int = 3,
    ) -> None:
        self.rest = rest
        self.job_id = job_id
        self.interval_s = interval_s
        self.retry_s = retry_s
        self.attempts = attempts
        self.triggered: list[float] = []  # monotonic times of the triggers sent
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="final-checkpoint", daemon=True)

    def start(self) -> FinalCheckpoint:
        self._thread.start()
        return self

    def _drained(self) -> bool:
        vertices = self.rest.job(self.job_id).get("vertices", [])
        return input_drained(vertices, lambda vid: self.rest.watermarks(self.job_id, vid))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if not self._drained():
                    continue
                self.rest.trigger_checkpoint(self.job_id)
            except (OSError, ValueError, KeyError) as exc:  # not up yet, or ending: poll on
                log.debug("final checkpoint: %s", exc)
                continue
            self.triggered.append(time.monotonic())
            log.info(
                "input drained %.1f s after start: checkpoint %d of at most %d requested",
                self.triggered[-1] - self._started,
                len(self.triggered),
                self.attempts,
            )
            if len(self.triggered) >= self.attempts or self._stop.wait(self.retry_s):
                return

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)


__all__ = ["END_OF_INPUT", "FinalCheckpoint", "input_drained"]
