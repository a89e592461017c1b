"""`plum up`'s status view: a pure function of a snapshot, and the Prometheus parsing."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from deploy.local.status import (
    QUERIES,
    Numbers,
    Snapshot,
    numbers_from_results,
    query_numbers,
    render,
    status_line,
)
from deploy.local.supervisor import ChildStatus, State


def series(value: str, **labels: str) -> dict:
    return {"metric": labels, "value": [1700000000.0, value]}


RESULTS = {
    "events_per_s": [series("21.5")],
    "examples_per_s": [series("3.25")],
    "trained_per_s": [series("10")],
    "trainer_step": [series("42")],
    "trainer_loss": [series("5.4321")],
    "served_version": [series("3")],
    "upload_to_servable_p95_s": [series("NaN")],  # nothing observed in the window
    "consumer_lag": [series("12", group="plum-flink"), series("0", group="plum-sid")],
    "trainer_lag": [series("7")],
    "deadletters": [series("5", reason="schema"), series("2", reason="late")],
}


def snapshot(numbers: Numbers) -> Snapshot:
    comps = (
        ChildStatus("flink", State.READY, 0, 1234, None, Path("flink.log")),
        ChildStatus("trainer", State.RESTARTING, 2, None, 1, Path("trainer.log")),
        ChildStatus("probe", State.FAILED, 5, None, 1, Path("probe.log")),
    )
    return Snapshot(
        125.0,
        comps,
        numbers,
        (("dashboard", "http://127.0.0.1:8500/"), ("serving", "http://127.0.0.1:8400")),
        "curl -s http://127.0.0.1:8400/v1/retrieve",
    )


def test_prometheus_results_become_the_key_numbers():
    n = numbers_from_results(RESULTS)
    assert n.events_per_s == 21.5 and n.examples_per_s == 3.25 and n.trained_per_s == 10
    assert n.trainer_step == 42 and n.trainer_loss == 5.4321 and n.served_version == 3
    assert n.upload_to_servable_p95_s is None  # NaN shows as no value
    assert n.consumer_lag == {"plum-flink": 12, "plum-sid": 0, "trainer": 7}
    assert n.deadletters == {"late": 2, "schema": 5}


def test_no_prometheus_answer_gives_empty_numbers():
    asked = []

    def refuse(url: str, timeout_s: float) -> dict:
        asked.append(url)
        raise ConnectionRefusedError(url)

    assert query_numbers("http://127.0.0.1:1", get_json=refuse) == Numbers()
    assert len(asked) == 1  # one refusal is enough: the others are not tried


def test_every_query_is_asked_by_name():
    def answer(url: str, timeout_s: float) -> dict:
        name = next(n for n, expr in QUERIES.items() if _encoded(expr) in url)
        return {"data": {"result": RESULTS[name]}}

    assert query_numbers("http://prom", get_json=answer) == numbers_from_results(RESULTS)


def _encoded(expr: str) -> str:
    from urllib.parse import urlencode

    return urlencode({"query": expr})


def test_the_live_view_shows_states_restarts_numbers_and_urls():
    console = Console(record=True, width=160, color_system=None)
    console.print(render(snapshot(numbers_from_results(RESULTS))))
    text = console.export_text()
    for expected in (
        "2:05",
        "1/3 ready",
        "flink",
        "ready",
        "restarting",
        "failed",
        "1234",
        "21.5",
        "5.432",
        "served version",
        "plum-flink 12",
        "schema 5",
        "http://127.0.0.1:8500/",
        "/v1/retrieve",
    ):
        assert expected in text, (expected, text)


def test_the_status_line_is_one_line_with_states_and_numbers():
    line = status_line(snapshot(numbers_from_results(RESULTS)))
    assert "\n" not in line
    assert "trainer:restarting(2)" in line and "probe:failed(5)" in line
    assert "events/s 21.5" in line and "upload → servable p95 –" in line
    assert "dead letters late 2, schema 5" in line


def test_a_view_before_any_metric_shows_dashes():
    line = status_line(snapshot(Numbers()))
    assert "trainer step –" in line and "consumer lag –" in line
