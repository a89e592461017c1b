"""The Grafana dashboard JSON: generated from monitoring/panels.py, committed as generated,
every panel once with exactly its queries, unit and SLO line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monitoring.dashboards.grafana import build_dashboard, cli, dashboard_json
from monitoring.panels import PANELS, ROW_TITLES, ROWS, panels_in

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "deploy" / "grafana" / "plum-stream.json"


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return build_dashboard()


def timeseries(dashboard: dict) -> dict[str, dict]:
    return {p["title"]: p for p in dashboard["panels"] if p["type"] == "timeseries"}


def test_the_committed_json_is_what_the_code_generates():
    assert COMMITTED.read_text(encoding="utf-8") == dashboard_json(), (
        "deploy/grafana/plum-stream.json is stale: run "
        "`plum dashboard grafana --out deploy/grafana/plum-stream.json`"
    )


def test_four_rows_in_reading_order_each_followed_by_its_panels(dashboard):
    layout: list[tuple[str, list[str]]] = []
    for p in dashboard["panels"]:
        if p["type"] == "row":
            layout.append((p["title"], []))
        else:
            layout[-1][1].append(p["title"])
    assert layout == [(ROW_TITLES[r], [p.title for p in panels_in(r)]) for r in ROWS]


def test_every_panel_appears_once_with_exactly_its_queries_unit_and_description(dashboard):
    drawn = timeseries(dashboard)
    assert len(drawn) == len(PANELS) == len([p for p in dashboard["panels"] if p["type"] != "row"])
    for panel in PANELS:
        got = drawn[panel.title]
        assert [(t["expr"], t["legendFormat"]) for t in got["targets"]] == [
            (q.expr, q.legend) for q in panel.queries
        ], panel.key
        assert len({t["refId"] for t in got["targets"]}) == len(panel.queries)
        assert got["fieldConfig"]["defaults"]["unit"] == panel.unit
        assert got["description"] == panel.description


def test_the_slo_is_a_threshold_line_and_panels_without_one_draw_none(dashboard):
    drawn = timeseries(dashboard)
    for panel in PANELS:
        defaults = drawn[panel.title]["fieldConfig"]["defaults"]
        steps = [s["value"] for s in defaults["thresholds"]["steps"]]
        style = defaults["custom"].get("thresholdsStyle", {}).get("mode", "off")
        if panel.slo is None:
            assert (steps, style) == ([None], "off"), panel.key
        else:
            assert (steps, style) == ([None, panel.slo], "line"), panel.key


def test_queries_use_the_datasource_variable_and_panel_ids_are_distinct(dashboard):
    (variable,) = dashboard["templating"]["list"]
    assert (variable["type"], variable["name"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    for panel in timeseries(dashboard).values():
        for ref in [panel["datasource"]] + [t["datasource"] for t in panel["targets"]]:
            assert ref == {"type": "prometheus", "uid": "${datasource}"}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and 0 not in ids


def test_no_two_panels_overlap_on_the_grid(dashboard):
    cells = set()
    for p in dashboard["panels"]:
        g = p["gridPos"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, p["title"]
        assert g["x"] + g["w"] <= 24
        cells |= mine


def test_the_command_writes_the_file_into_a_directory_or_at_a_path(tmp_path):
    assert cli(["--out", str(tmp_path)]) == 0
    assert cli(["--out", str(tmp_path / "x" / "d.json")]) == 0
    for path in (tmp_path / "plum-stream.json", tmp_path / "x" / "d.json"):
        assert json.loads(path.read_text()) == build_dashboard()
