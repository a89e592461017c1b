"""The Grafana dashboard, generated from `monitoring.panels.PANELS` with the Grafana
Foundation SDK builders.

People who run their own Grafana import deploy/grafana/plum-stream.json; it is written by
`plum dashboard grafana --out ...` and a unit test checks the committed file equals what
this module generates, so the JSON never drifts from the panel definitions. The
datasource is the `${datasource}` variable (any Prometheus the importer picks), not a uid
that exists only on one machine.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import prometheus as prometheus_builders
from grafana_foundation_sdk.builders import timeseries as timeseries_builders
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    Threshold,
    ThresholdsMode,
)

from monitoring.panels import PANELS, ROW_TITLES, ROWS, Panel, panels_in

log = logging.getLogger(__name__)

UID = "plum-stream"
TITLE = "PLUM Stream"
DEFAULT_OUT = Path("deploy/grafana/plum-stream.json")
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
PANEL_HEIGHT = 8
PANEL_WIDTH = 12  # of Grafana's 24 columns: two panels side by side, like the page
SLO_COLOR = "red"
BASE_COLOR = "green"


def _target(expr: str, legend: str, ref_id: str) -> prometheus_builders.Dataquery:
    return (
        prometheus_builders.Dataquery()
        .expr(expr)
        .legend_format(legend)
        .ref_id(ref_id)
        .range()
        .datasource(DATASOURCE)
    )


def _timeseries(panel: Panel, panel_id: int) -> timeseries_builders.Panel:
    """One time series per panel: a target per query, the SLO as a threshold line."""
    builder = (
        timeseries_builders.Panel()
        .id(panel_id)
        .title(panel.title)
        .description(panel.description)
        .unit(panel.unit)
        .datasource(DATASOURCE)
        .height(PANEL_HEIGHT)
        .span(PANEL_WIDTH)
        .line_width(2)
        .fill_opacity(10)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
    )
    for i, query in enumerate(panel.queries):
        builder = builder.with_target(_target(query.expr, query.legend, chr(ord("A") + i)))
    steps = [Threshold(value=None, color=BASE_COLOR)]
    if panel.slo is not None:
        steps.append(Threshold(value=panel.slo, color=SLO_COLOR))
        builder = builder.thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(common.GraphTresholdsStyleMode.LINE)
        )
    return builder.thresholds(
        dashboard_builders.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps)
    )


def build_dashboard() -> dict[str, Any]:
    """The dashboard as the JSON object Grafana imports: four rows of time series."""
    builder = (
        dashboard_builders.Dashboard(TITLE)
        .uid(UID)
        .description("Freshness, throughput, quality and errors of the PLUM Stream stack")
        .tags(["plum-stream"])
        .time("now-1h", "now")
        .refresh("10s")
        .timezone("browser")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .with_variable(
            dashboard_builders.DatasourceVariable("datasource")
            .label("Prometheus")
            .type("prometheus")
        )
    )
    next_id = 1  # Grafana wants a distinct id per panel, rows included
    for row in ROWS:
        builder = builder.with_row(dashboard_builders.Row(ROW_TITLES[row]).id(next_id))
        next_id += 1
        for panel in panels_in(row):
            builder = builder.with_panel(_timeseries(panel, next_id))
            next_id += 1
    return json.loads(json.dumps(builder.build(), cls=JSONEncoder))


def dashboard_json() -> str:
    """The file's text: stable key order and a final newline, so a diff shows real changes."""
    return json.dumps(build_dashboard(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_dashboard(out: Path) -> Path:
    """Writes the dashboard to `out` (a .json file, or a directory for plum-stream.json)."""
    path = out / DEFAULT_OUT.name if out.suffix != ".json" else out
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dashboard_json(), encoding="utf-8")
    log.info("Grafana dashboard (%d panels) written to %s", len(PANELS), path)
    return path


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="plum dashboard grafana",
        description="Write the Grafana dashboard JSON generated from monitoring/panels.py.",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"file or directory (default {DEFAULT_OUT})"
    )
    args = parser.parse_args(argv)
    write_dashboard(args.out)
    return 0
