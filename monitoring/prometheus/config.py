"""`[prometheus]` and `[alerts]`: the Prometheus server's settings and the alert thresholds.

Two sections because they answer to different people: `[prometheus]` is how the server
runs here (port, intervals, retention, which binaries), `[alerts]` is what the team pages
on, and is written into the committed rules file that a Prometheus run elsewhere loads.
The SLO thresholds default to the SLO lines of monitoring/panels.py (computed, never
copied), so the dashboard's dashed line and the alert agree. Every `*_for` is a Prometheus
duration; tests make them short. `PLUM_PROMETHEUS__<KEY>` / `PLUM_ALERTS__<KEY>` override.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from monitoring.panels import BY_KEY
from plum.config import load_section

SECTION = "prometheus"
ALERTS_SECTION = "alerts"

# A Prometheus duration: one or more <number><unit>, e.g. "30s", "5m", "1h30m".
_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def _slo(panel: str) -> float:
    slo = BY_KEY[panel].slo
    if slo is None:
        raise ValueError(f"panel {panel!r} has no SLO line to alert on")
    return slo


def duration_seconds(text: str) -> float:
    """Seconds in a Prometheus duration ("1h30m" -> 5400.0); ValueError when not one."""
    if not _DURATION.match(text):
        raise ValueError(f"{text!r} is not a Prometheus duration (e.g. 30s, 5m, 1h30m)")
    return float(sum(int(n) * _UNIT_S[u] for n, u in re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text)))


def _check_duration(name: str, value: str) -> None:
    try:
        duration_seconds(value)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None


@dataclass(frozen=True)
class PrometheusConfig:
    """The `[prometheus]` section; see configs/demo.toml for what each key is for."""

    host: str = "127.0.0.1"
    port: int = 9090  # 0 = a free port, chosen at start
    scrape_interval_s: float = 5.0
    evaluation_interval_s: float = 5.0
    retention: str = "2d"
    binary: str = "prometheus"
    promtool: str = "promtool"
    startup_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("host must not be empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port={self.port} must be in [0, 65535] (0 = a free port)")
        for name in ("scrape_interval_s", "evaluation_interval_s", "startup_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be > 0")
        _check_duration("retention", self.retention)
        if not self.binary or not self.promtool:
            raise ValueError("binary and promtool must name executables")

    @property
    def scrape_interval(self) -> str:
        return _as_duration(self.scrape_interval_s)

    @property
    def evaluation_interval(self) -> str:
        return _as_duration(self.evaluation_interval_s)


def _as_duration(seconds: float) -> str:
    """Seconds as a Prometheus duration in ms (exact for any interval we configure)."""
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


@dataclass(frozen=True)
class AlertThresholds:
    """The `[alerts]` section: when each alert of monitoring/rules fires."""

    upload_to_servable_p95_s: float = _slo("upload_to_servable")
    freshness_for: str = "5m"
    consumer_lag_growing_for: str = "10m"
    deadletter_rate_per_s: float = 1.0
    deadletter_for: str = "5m"
    trainer_stalled_minutes: int = 10
    publish_rejections: int = 3  # gate refusals within 30 minutes
    serving_p99_s: float = _slo("serving_latency")
    serving_5xx_ratio: float = 0.01
    serving_for: str = "5m"
    component_down_for: str = "1m"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_for"):
                _check_duration(f.name, value)
            elif value <= 0:
                raise ValueError(f"{f.name}={value} must be > 0")
        if self.serving_5xx_ratio >= 1:
            raise ValueError(f"serving_5xx_ratio={self.serving_5xx_ratio} must be < 1")


def load_prometheus_config(
    path: Path | str | None = None, env: Mapping[str, str] | None = None, **overrides: Any
) -> PrometheusConfig:
    """`[prometheus]` of the TOML at `path` (default $PLUM_CONFIG or configs/demo.toml),
    then PLUM_PROMETHEUS__* from `env`, then keyword overrides (None = unset)."""
    return load_section(PrometheusConfig, path, SECTION, env=env, **overrides)


def load_alert_thresholds(
    path: Path | str | None = None, env: Mapping[str, str] | None = None, **overrides: Any
) -> AlertThresholds:
    """`[alerts]` of the TOML at `path`, then PLUM_ALERTS__*, then keyword overrides."""
    return load_section(AlertThresholds, path, ALERTS_SECTION, env=env, **overrides)
