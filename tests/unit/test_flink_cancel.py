"""`plum flink run`'s stop: the cancel is bounded, and an unconfirmed one says why."""

from __future__ import annotations

import logging
import threading

from streams.flink.cli import cancel_job, job_state


class FakeFuture:
    def __init__(self, release: threading.Event | None, error: Exception | None = None):
        self.release, self.error = release, error

    def result(self) -> None:
        if self.release is not None:
            self.release.wait()
        if self.error is not None:
            raise self.error


class FakeClient:
    """A JobClient whose cancel confirms when `release` is set (at once when None)."""

    def __init__(self, release: threading.Event | None = None, error: Exception | None = None):
        self.release, self.error, self.cancels = release, error, 0

    def cancel(self) -> FakeFuture:
        self.cancels += 1
        return FakeFuture(self.release, self.error)


def test_a_confirmed_cancel_returns_true_without_asking_for_the_jobs_state():
    asked = []
    assert cancel_job(FakeClient(), 5.0, lambda: asked.append(1) or "?") is True
    assert asked == []


def test_a_job_that_already_ended_counts_as_cancelled():
    client = FakeClient(error=RuntimeError("Job has already reached a terminal state"))
    assert cancel_job(client, 5.0, lambda: "?") is True


def test_an_unconfirmed_cancel_gives_up_after_the_timeout_and_says_what_the_job_was_doing(
    caplog,
):
    stuck = threading.Event()
    client = FakeClient(release=stuck)
    with caplog.at_level(logging.WARNING, logger="streams.flink.cli"):
        confirmed = cancel_job(client, 0.2, lambda: "job CANCELLING; vertices not cancelled: x")
    stuck.set()
    assert confirmed is False and client.cancels == 1
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "did not confirm the cancel in 0 s" in warning
    assert "job CANCELLING; vertices not cancelled: x" in warning


class FakeRest:
    def __init__(self, job: dict | None = None, error: Exception | None = None):
        self._job, self.error = job, error

    def job(self, job_id: str) -> dict:
        if self.error is not None:
            raise self.error
        return self._job


def test_job_state_lists_the_vertices_not_yet_cancelled():
    rest = FakeRest(
        {
            "state": "CANCELLING",
            "vertices": [
                {"name": "Source: watches", "status": "CANCELED"},
                {"name": "Sink: sft_examples", "status": "CANCELING"},
            ],
        }
    )
    assert job_state(rest, "j1") == (
        "job CANCELLING; vertices not cancelled: ['Sink: sft_examples CANCELING']"
    )


def test_job_state_never_raises():
    assert job_state(None, "j1") == "no REST endpoint to ask"
    assert job_state(FakeRest(error=OSError("refused")), "j1") == "REST: refused"
    assert job_state(FakeRest({"state": "CANCELED", "vertices": []}), "j1") == (
        "job CANCELED; vertices not cancelled: none"
    )
