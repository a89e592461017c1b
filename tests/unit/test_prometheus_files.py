"""The committed deploy/prometheus files are exactly what the code generates, and the
stack's scrape targets follow the components' configured ports."""

from __future__ import annotations

import yaml

from deploy.local.demo import DemoConfig
from deploy.prometheus.cli import CONFIG_FILE, DEFAULT_OUT, RULES_FILE, generated_files, rules
from deploy.prometheus.targets import stack_targets
from plum.cli import find
from plum.config import REPO_ROOT
from tests.prometheus_support import promtool

DEMO_TOML = REPO_ROOT / "configs" / "demo.toml"


def test_committed_rules_and_sample_config_equal_what_the_code_generates():
    for name, text in generated_files(DEMO_TOML, env={}).items():
        committed = (DEFAULT_OUT / name).read_text(encoding="utf-8")
        assert committed == text, (
            f"deploy/prometheus/{name} is stale: run `plum prometheus rules "
            "--out deploy/prometheus`"
        )


def test_the_committed_sample_config_passes_promtool(tmp_path):
    done = promtool("check", "config", DEFAULT_OUT / CONFIG_FILE)
    assert "SUCCESS: 1 rule files found" in done.stdout


def test_the_sample_scrapes_every_demo_component_at_its_configured_port():
    doc = yaml.safe_load(generated_files(DEMO_TOML, env={})[CONFIG_FILE])
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in doc["scrape_configs"]}
    assert jobs["prometheus"] == ["127.0.0.1:9090"]
    assert jobs["serving"] == ["127.0.0.1:9106"]
    assert jobs["trainer"] == ["127.0.0.1:9104"]
    assert {"simulator", "flink", "sid_service", "publisher"} <= set(jobs)
    assert doc["rule_files"] == [RULES_FILE]


def test_stack_targets_follow_env_overrides_and_skip_ports_without_an_address():
    targets = stack_targets(
        DEMO_TOML,
        DemoConfig,
        env={"PLUM_SERVING__METRICS_PORT": "19106", "PLUM_PUBLISHER__METRICS_PORT": "-1"},
    )
    by_job = {t.job: t.port for t in targets}
    assert by_job["serving"] == 19106
    assert "publisher" not in by_job
    only = stack_targets(DEMO_TOML, DemoConfig, env={"PLUM_DEMO__COMPONENTS": "serving"})
    assert [t.job for t in only] == ["serving"]


def test_rules_command_writes_both_files(tmp_path, monkeypatch):
    monkeypatch.setenv("PLUM_CONFIG", str(DEMO_TOML))
    assert rules(["--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([RULES_FILE, CONFIG_FILE])
    assert find(["prometheus", "rules"]).target == "deploy.prometheus.cli:rules"
    assert find(["prometheus", "up"]).target == "deploy.prometheus.cli:up"
