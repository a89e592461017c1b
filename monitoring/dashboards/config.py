"""`[dashboard]`: the settings of the page `plum dashboard` serves, validated once at start.

The keys are exactly those of configs/demo.toml and configs/test.toml (`load_section`
refuses any other); `PLUM_DASHBOARD__<KEY>` overrides one, a command-line flag wins over
both. `prometheus_url` is explicit: the page reads whichever Prometheus it is told to,
the demo's or one a person runs themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from plum.config import load_section

SECTION = "dashboard"
POINTS_PER_PANEL = 200  # the step is chosen so a panel draws about this many points
MAX_POINTS = 11_000  # Prometheus refuses a range query with more points per series


@dataclass(frozen=True)
class DashboardConfig:
    """The `[dashboard]` section; see configs/demo.toml for what each key is for."""

    host: str = "127.0.0.1"
    port: int = 8500  # 0 = a free port (logged)
    prometheus_url: str = "http://127.0.0.1:9090"
    refresh_s: float = 10.0  # the page redraws every panel this often
    range_s: float = 3600.0  # each panel shows the last range_s seconds
    timeout_s: float = 5.0  # a Prometheus answer slower than this is a 504, not a hang

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("host must not be empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port={self.port} must be in [0, 65535] (0 = a free port)")
        url = urlsplit(self.prometheus_url)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ValueError(
                f"prometheus_url={self.prometheus_url!r} must be an http(s) URL with a host"
            )
        if self.refresh_s < 1:
            raise ValueError(f"refresh_s={self.refresh_s} must be >= 1")
        if not 60 <= self.range_s <= 7 * 86400:
            raise ValueError(f"range_s={self.range_s} must be in [60, 604800] (1 min to 7 days)")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s={self.timeout_s} must be > 0")

    @property
    def step_s(self) -> int:
        """The range query's step: about POINTS_PER_PANEL points over range_s, >= 1 s."""
        return max(1, round(self.range_s / POINTS_PER_PANEL))


def load_dashboard_config(
    path: Path | str | None = None, env: Mapping[str, str] | None = None, **overrides: Any
) -> DashboardConfig:
    """`[dashboard]` of the TOML at `path` (default $PLUM_CONFIG or configs/demo.toml), then
    PLUM_DASHBOARD__* from `env`, then keyword overrides (command-line flags; None = unset)."""
    return load_section(DashboardConfig, path, SECTION, env=env, **overrides)
