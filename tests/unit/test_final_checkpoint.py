"""A backfill asks for its final checkpoint once every vertex behind the sources holds the
end-of-input watermark, and only then (streams.flink.final_checkpoint)."""

import threading

from streams.flink.final_checkpoint import END_OF_INPUT, FinalCheckpoint, input_drained

VERTICES = [
    {"id": "src", "name": "Source: watches[1] -> Calc[2]"},
    {"id": "ptf", "name": "PlumTimeline[3] -> Sink: examples[4]"},
    {"id": "pairs", "name": "PlumPairs[5] -> Sink: pairs[6]"},
]


def marks(*values) -> list[dict]:
    return [{"id": f"{i}.currentInputWatermark", "value": str(v)} for i, v in enumerate(values)]


def test_drained_only_when_every_subtask_behind_the_sources_holds_the_end_watermark():
    done = {"src": marks(5), "ptf": marks(END_OF_INPUT, END_OF_INPUT), "pairs": marks(END_OF_INPUT)}
    assert input_drained(VERTICES, done.__getitem__)
    one_behind = {**done, "ptf": marks(END_OF_INPUT, 1_700_000_000_000)}
    assert not input_drained(VERTICES, one_behind.__getitem__)
    no_watermark_yet = {**done, "pairs": marks(-(2**63))}
    assert not input_drained(VERTICES, no_watermark_yet.__getitem__)
    not_reported = {**done, "pairs": []}
    assert not input_drained(VERTICES, not_reported.__getitem__)


def test_a_job_of_sources_only_is_never_called_drained():
    assert not input_drained(VERTICES[:1], lambda _: marks(END_OF_INPUT))


class FakeRest:
    """The job's REST API: drained after `drain_after` polls; every trigger is recorded."""

    def __init__(self, drain_after: int) -> None:
        self.polls = 0
        self.drain_after = drain_after
        self.triggers: list[str] = []
        self.triggered = threading.Event()

    def job(self, job_id):
        self.polls += 1
        return {"vertices": VERTICES}

    def watermarks(self, job_id, vertex_id):
        if vertex_id == "src":
            return marks(0)
        if self.polls > self.drain_after:
            return marks(END_OF_INPUT)
        if self.polls == 2:
            raise OSError("connection refused")  # a REST hiccup is polled through
        return marks(1_700_000_000_000)

    def trigger_checkpoint(self, job_id):
        self.triggers.append(job_id)
        self.triggered.set()
        return "req-1"


def test_the_watcher_triggers_once_the_input_is_drained_then_retries_while_the_job_runs():
    rest = FakeRest(drain_after=4)
    watcher = FinalCheckpoint(rest, "job1", interval_s=0.01, retry_s=0.05, attempts=2).start()
    try:
        assert rest.triggered.wait(5)
        assert rest.polls > 4  # not before the input was drained
        watcher._thread.join(timeout=5)
        assert rest.triggers == ["job1", "job1"]  # the job never ended here: one retry
    finally:
        watcher.close()


def test_a_closed_watcher_triggers_nothing():
    rest = FakeRest(drain_after=0)
    watcher = FinalCheckpoint(rest, "job1", interval_s=0.2)
    watcher.start()
    watcher.close()
    assert rest.triggers == []
