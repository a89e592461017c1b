"""The README's monitoring section stays true: it names every panel and every alert, and
the screenshot it shows is in the repository."""

from __future__ import annotations

from monitoring.panels import PANELS, ROW_TITLES
from monitoring.prometheus.config import AlertThresholds
from monitoring.rules.alerts import alerts
from plum.config import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
SECTION = README[README.index("## Monitoring") : README.index("## Layout")]


def test_the_readme_explains_every_panel_under_its_row():
    for panel in PANELS:
        assert f"*{panel.title}*:" in SECTION, panel.title
        row_at = SECTION.index(f"**{ROW_TITLES[panel.row]}**")
        assert SECTION.index(f"*{panel.title}*:") > row_at, panel.title


def test_the_readme_names_every_alert_and_shows_the_dashboard():
    for alert in alerts(AlertThresholds()):
        assert f"`{alert.name}`" in SECTION, alert.name
    assert "](docs/dashboard.png)" in SECTION and (REPO_ROOT / "docs" / "dashboard.png").is_file()
