"""The one status view of `plum up`: components, key numbers and where to look.

A `Snapshot` holds what the supervisor knows (each component's state and restarts) and
the key numbers read from the stack's Prometheus (which scrapes every component's
/metrics; the queries are the dashboard's, over the metric catalogue of
monitoring/metrics.py). `render` turns a snapshot into a `rich` renderable for the live
terminal view and `status_line` into one compact line for logs and CI; both are pure
functions of the snapshot.
"""

from __future__ import annotations

import json
import logging
import math
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.live import Live
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

from deploy.local.supervisor import ChildStatus, State

# name -> PromQL; each a query the dashboard (monitoring/panels.py) draws too
QUERIES: dict[str, str] = {
    # produced by the simulator, or played from the replay topics (--data movielens)
    "events_per_s": "sum(rate(plum_simulator_events_total[1m]))"
    " or sum(rate(plum_replay_played_total[1m]))",
    "examples_per_s": "sum(rate(plum_flink_examples_sampled_total[1m]))",
    "trained_per_s": "sum(rate(plum_trainer_examples_total[1m]))",
    "trainer_step": "max(plum_trainer_step)",
    "trainer_loss": "max(plum_trainer_loss)",
    "served_version": "max(plum_serving_model_version)",
    "upload_to_servable_p95_s": "plum:upload_to_servable_seconds:p95_5m",
    "consumer_lag": "sum by (group) (plum_kafka_consumer_lag_records)",
    "trainer_lag": "sum(plum_trainer_consumer_lag)",
    "deadletters": "sum by (reason) (plum_deadletter_total)",
}

STATE_STYLE = {
    State.WAITING: "dim",
    State.STARTING: "yellow",
    State.RUNNING: "cyan",
    State.READY: "green",
    State.RESTARTING: "bold yellow",
    State.DONE: "cyan",
    State.FAILED: "bold red",
    State.STOPPED: "dim",
}


@dataclass(frozen=True)
class Numbers:
    """The key numbers; None where Prometheus has no value (yet)."""

    events_per_s: float | None = None
    examples_per_s: float | None = None  # SFT examples the Flink job makes
    trained_per_s: float | None = None  # examples the trainer trains on
    trainer_step: float | None = None
    trainer_loss: float | None = None
    served_version: float | None = None
    upload_to_servable_p95_s: float | None = None
    consumer_lag: Mapping[str, float] = field(default_factory=dict)  # by group
    deadletters: Mapping[str, float] = field(default_factory=dict)  # total by reason


@dataclass(frozen=True)
class Snapshot:
    elapsed_s: float
    components: tuple[ChildStatus, ...]
    numbers: Numbers
    urls: tuple[tuple[str, str], ...] = ()  # (what, URL)
    sample_request: str = ""


def _value(series: dict) -> float | None:
    value = float(series["value"][1])
    return value if math.isfinite(value) else None


def numbers_from_results(results: Mapping[str, list[dict]]) -> Numbers:
    """`Numbers` from Prometheus instant-query results (`data.result`) by query name."""

    def scalar(name: str) -> float | None:
        series = results.get(name) or []
        return _value(series[0]) if series else None

    def by(name: str, label: str) -> dict[str, float]:
        out = {}
        for s in results.get(name) or []:
            v = _value(s)
            if v is not None:
                out[s["metric"].get(label, "?")] = v
        return out

    lag = by("consumer_lag", "group")
    trainer_lag = scalar("trainer_lag")
    if trainer_lag is not None:
        lag["trainer"] = trainer_lag
    return Numbers(
        events_per_s=scalar("events_per_s"),
        examples_per_s=scalar("examples_per_s"),
        trained_per_s=scalar("trained_per_s"),
        trainer_step=scalar("trainer_step"),
        trainer_loss=scalar("trainer_loss"),
        served_version=scalar("served_version"),
        upload_to_servable_p95_s=scalar("upload_to_servable_p95_s"),
        consumer_lag=dict(sorted(lag.items())),
        deadletters=dict(sorted(by("deadletters", "reason").items())),
    )


def _get_json(url: str, timeout_s: float) -> dict:
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        return json.loads(r.read())


def query_numbers(
    prometheus: str,
    timeout_s: float = 1.0,
    get_json: Callable[[str, float], dict] = _get_json,
) -> Numbers:
    """The key numbers from the stack's Prometheus; empty ones while it does not answer."""
    results: dict[str, list[dict]] = {}
    for name, expr in QUERIES.items():
        url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            results[name] = get_json(url, timeout_s)["data"]["result"]
        except (OSError, ValueError, KeyError):
            break  # not up yet (or gone): the rest would wait for the same timeout
    return numbers_from_results(results)


# ---------------------------------------------------------------------- formatting


def fmt(value: float | None, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}{unit}"


def fmt_duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _labelled(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:,.0f}" for k, v in values.items()) or "–"


def number_rows(n: Numbers) -> list[tuple[str, str]]:
    """(label, value) of each key number, in the order the view shows them."""
    return [
        ("events/s", fmt(n.events_per_s)),
        ("SFT examples/s", fmt(n.examples_per_s)),
        ("trained examples/s", fmt(n.trained_per_s)),
        ("trainer step", fmt(n.trainer_step, 0)),
        ("loss", fmt(n.trainer_loss, 3)),
        ("served version", fmt(n.served_version, 0)),
        ("upload → servable p95", fmt(n.upload_to_servable_p95_s, 1, " s")),
        ("consumer lag", _labelled(n.consumer_lag)),
        ("dead letters", _labelled(n.deadletters)),
    ]


def render(snap: Snapshot) -> Group:
    """The live view: a component table, the key numbers, the URLs."""
    ready = sum(c.state in (State.READY, State.DONE) for c in snap.components)
    comps = Table(
        title=f"PLUM Stream — up {fmt_duration(snap.elapsed_s)}, "
        f"{ready}/{len(snap.components)} ready",
        title_justify="left",
        expand=False,
    )
    comps.add_column("component")
    comps.add_column("state")
    comps.add_column("restarts", justify="right")
    comps.add_column("pid", justify="right")
    comps.add_column("last exit", justify="right")
    for c in snap.components:
        comps.add_row(
            c.name,
            Text(c.state.value, style=STATE_STYLE[c.state]),
            str(c.restarts),
            str(c.pid or ""),
            "" if c.exit_code is None else str(c.exit_code),
        )
    numbers = Table(show_header=False, box=None, padding=(0, 2))
    numbers.add_column(style="bold")
    numbers.add_column()
    for label, value in number_rows(snap.numbers):
        numbers.add_row(label, value)
    parts: list = [comps, numbers]
    if snap.urls or snap.sample_request:
        urls = Text()
        for what, url in snap.urls:
            urls.append(f"{what:<11} {url}\n")
        if snap.sample_request:
            urls.append(f"try         {snap.sample_request}\n", style="dim")
        parts.append(urls)
    return Group(*parts)


def status_line(snap: Snapshot) -> str:
    """One compact line: for a log or CI, where a live view cannot redraw."""
    states = " ".join(
        f"{c.name}:{c.state.value}" + (f"({c.restarts})" if c.restarts else "")
        for c in snap.components
    )
    nums = " | ".join(f"{label} {value}" for label, value in number_rows(snap.numbers))
    return f"[{fmt_duration(snap.elapsed_s)}] {states} | {nums}"


class StatusOutput:
    """Where snapshots go: a `rich` Live view on a terminal (log lines print above it),
    else one `status_line` every `line_every_s` through the log."""

    def __init__(self, tty: bool, line_every_s: float, log: logging.Logger) -> None:
        self.tty, self.line_every_s, self.log = tty, line_every_s, log
        self._live: Live | None = None
        self._handlers: list[logging.Handler] = []
        self._last_line = -math.inf

    def __enter__(self) -> StatusOutput:
        if self.tty:
            console = Console()
            self._live = Live(console=console, auto_refresh=False, transient=False)
            self._live.start()
            root = logging.getLogger()
            self._handlers = [h for h in root.handlers if isinstance(h, logging.StreamHandler)]
            for h in self._handlers:
                root.removeHandler(h)
            root.addHandler(RichHandler(console=console, show_path=False))
        return self

    def show(self, snap: Snapshot) -> None:
        if self._live is not None:
            self._live.update(render(snap), refresh=True)
        elif time.monotonic() - self._last_line >= self.line_every_s:
            self._last_line = time.monotonic()
            self.log.info("status %s", status_line(snap))

    def __exit__(self, *exc: object) -> None:
        if self._live is None:
            return
        self._live.stop()
        root = logging.getLogger()
        for h in [h for h in root.handlers if isinstance(h, RichHandler)]:
            root.removeHandler(h)
        for h in self._handlers:
            root.addHandler(h)
        self._live = None
