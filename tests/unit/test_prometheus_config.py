"""[prometheus] / [alerts] settings and the scrape configuration Prometheus is given."""

from __future__ import annotations

import pytest
import yaml

from monitoring.panels import BY_KEY
from monitoring.prometheus.config import (
    AlertThresholds,
    PrometheusConfig,
    duration_seconds,
    load_alert_thresholds,
    load_prometheus_config,
)
from monitoring.prometheus.scrape import ScrapeTarget, scrape_config, write_prometheus_yml
from monitoring.prometheus.server import PrometheusNotInstalled, PrometheusServer
from monitoring.rules import write_rules
from plum.config import REPO_ROOT, ConfigError
from tests.prometheus_support import promtool

TEST_TOML = REPO_ROOT / "configs" / "test.toml"
DEMO_TOML = REPO_ROOT / "configs" / "demo.toml"


def test_slo_thresholds_default_to_the_panels_slo_lines():
    t = AlertThresholds()
    assert t.upload_to_servable_p95_s == BY_KEY["upload_to_servable"].slo
    assert t.serving_p99_s == BY_KEY["serving_latency"].slo
    assert load_alert_thresholds(DEMO_TOML, env={}) == t


def test_durations_are_prometheus_durations():
    assert duration_seconds("1h30m") == 5400.0
    assert duration_seconds("500ms") == 0.5
    for bad in ("5 minutes", "5", "", "m5"):
        with pytest.raises(ValueError, match="not a Prometheus duration"):
            duration_seconds(bad)
    with pytest.raises(ConfigError, match="freshness_for"):
        load_alert_thresholds(TEST_TOML, env={"PLUM_ALERTS__FRESHNESS_FOR": "5 minutes"})


def test_env_overrides_and_unknown_keys(tmp_path):
    t = load_alert_thresholds(TEST_TOML, env={"PLUM_ALERTS__SERVING_P99_S": "0.5"})
    assert t.serving_p99_s == 0.5
    cfg = load_prometheus_config(TEST_TOML, env={"PLUM_PROMETHEUS__PORT": "19090"})
    assert cfg.port == 19090
    bad = tmp_path / "bad.toml"
    bad.write_text("[prometheus]\nscrape_intreval_s = 1.0\n")
    with pytest.raises(ConfigError, match="unknown keys"):
        load_prometheus_config(bad, env={})
    with pytest.raises(ValueError, match="must be > 0"):
        AlertThresholds(deadletter_rate_per_s=0)


def test_the_test_config_uses_a_free_port_and_short_alert_durations():
    cfg = load_prometheus_config(TEST_TOML, env={})
    assert cfg.port == 0 and cfg.scrape_interval == "500ms"
    t = load_alert_thresholds(TEST_TOML, env={})
    assert duration_seconds(t.component_down_for) <= 2


def test_one_scrape_job_per_component_and_the_server_itself():
    cfg = PrometheusConfig(port=9090, scrape_interval_s=5)
    doc = scrape_config(
        [
            ScrapeTarget("serving", "127.0.0.1", 9106),
            ScrapeTarget("serving", "127.0.0.1", 9116),
            ScrapeTarget("trainer", "127.0.0.1", 9104),
        ],
        cfg,
        ["rules.yml"],
    )
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in doc["scrape_configs"]}
    assert jobs == {
        "prometheus": ["127.0.0.1:9090"],
        "serving": ["127.0.0.1:9106", "127.0.0.1:9116"],
        "trainer": ["127.0.0.1:9104"],
    }
    assert doc["rule_files"] == ["rules.yml"]
    assert doc["global"]["scrape_interval"] == "5s"
    with pytest.raises(ValueError, match="listed twice"):
        scrape_config([ScrapeTarget("trainer", "h", 1)] * 2, cfg)
    with pytest.raises(ValueError, match="the server itself"):
        scrape_config([ScrapeTarget("prometheus", "h", 1)], cfg)
    with pytest.raises(ValueError, match="port"):
        ScrapeTarget("trainer", "h", 0)


def test_a_generated_config_with_its_rules_passes_promtool_check_config(tmp_path):
    cfg = load_prometheus_config(TEST_TOML, env={})
    write_rules(tmp_path / "rules.yml", load_alert_thresholds(TEST_TOML, env={}))
    targets = [ScrapeTarget("serving", "127.0.0.1", 9106), ScrapeTarget("kafka", "::1", 9102)]
    path = write_prometheus_yml(
        tmp_path / "prometheus.yml", scrape_config(targets, cfg, ["rules.yml"], "127.0.0.1:1")
    )
    done = promtool("check", "config", path)
    assert "SUCCESS: 1 rule files found" in done.stdout
    # a sub-second interval keeps its timeout within the interval (promtool refuses more)
    assert yaml.safe_load(path.read_text())["global"]["scrape_timeout"] == "500ms"


def test_a_missing_binary_names_how_to_install_it(tmp_path):
    server = PrometheusServer(PrometheusConfig(binary="no-such-prometheus"), [], tmp_path)
    with pytest.raises(PrometheusNotInstalled, match="make setup.*apt-get install prometheus"):
        server.start()
    assert not server.running
