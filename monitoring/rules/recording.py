"""Recording rules: every SLI query of monitoring/panels.py under its `record` name.

Generated, never re-typed: the panel's query and the recorded series are one string, so
the dashboard (which may read the raw query) and the alerts (which read the recorded
name) always measure the same thing.
"""

from __future__ import annotations

from typing import Any

from monitoring.panels import recorded_queries

GROUP = "plum_recording"


def recording_group(interval: str | None = None) -> dict[str, Any]:
    """The rule group of every recorded query (`interval` None = the global one)."""
    group: dict[str, Any] = {"name": GROUP}
    if interval:
        group["interval"] = interval
    group["rules"] = [{"record": q.record, "expr": q.expr} for q in recorded_queries()]
    return group
