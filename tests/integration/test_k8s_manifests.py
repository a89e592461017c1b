"""deploy/k8s/ through real validators: kubeconform -strict against Kubernetes' schemas and
the operators' CRDs (Strimzi, Flink Kubernetes Operator), promtool on the Prometheus
rules; and the generated manifests against their sources (topic contract, rules,
dashboard, config).

`make setup` builds kubeconform and the schemas into build/k8s/. Without them the test
skips on a developer's machine and fails under CI=true.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy.k8s import generate
from streams.contracts.topics import ALL_TOPICS

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
TOOLS = REPO / "build" / "k8s"
KUBECONFORM = TOOLS / "bin" / "kubeconform"
SCHEMAS = TOOLS / "schemas"
LOCATION = str(SCHEMAS) + "/{{.ResourceKind}}{{.KindSuffix}}.json"
KUSTOMIZATION = "kustomization.yaml"

pytestmark = pytest.mark.integration


def _missing(what: str) -> None:
    message = f"{what} missing: run `make setup` (builds build/k8s/)"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def kubeconform(*paths: Path) -> subprocess.CompletedProcess[str]:
    if not KUBECONFORM.is_file():
        _missing(str(KUBECONFORM))
    if not (SCHEMAS / "_definitions.json").is_file():
        _missing(f"the schemas in {SCHEMAS}")
    return subprocess.run(
        [str(KUBECONFORM), "-strict", "-summary", "-schema-location", LOCATION, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def manifests() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != KUSTOMIZATION)


def documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def test_every_manifest_is_valid_for_kubeconform_strict():
    done = kubeconform(*manifests())
    assert done.returncode == 0, done.stdout + done.stderr
    # Every resource was checked against a schema: none skipped, none without one.
    resources = sum(len(documents(p.name)) for p in manifests())
    assert f"Valid: {resources}, Invalid: 0, Errors: 0, Skipped: 0" in done.stdout, done.stdout


def test_kustomization_lists_every_manifest_and_only_those():
    listed = yaml.safe_load((K8S / KUSTOMIZATION).read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in manifests())


@pytest.mark.parametrize(
    ("name", "bad", "expected"),
    [
        # a misspelt field of a core kind
        (
            "serving.yaml",
            lambda d: d["spec"]["template"]["spec"]["containers"][0].update(livenesProbe={}),
            "additional properties 'livenesProbe' not allowed",
        ),
        # a wrong type in a core kind
        (
            "serving.yaml",
            lambda d: d["spec"].update(replicas="two"),
            "at '/spec/replicas': got string, want null or integer",
        ),
        # a field a CRD does not have, at the root and inside
        (
            "kafka.yaml",
            lambda d: d["spec"].update(replicationFactor=3),
            "additional properties 'replicationFactor' not allowed",
        ),
        (
            "kafka-topics.yaml",
            lambda d: d["spec"].update(partitions="4"),
            "got string, want integer",
        ),
        (
            "flink.yaml",
            lambda d: d["spec"]["job"].update(upgradeMode="latest-state"),
            "at '/spec/job/upgradeMode': value must be one of",
        ),
    ],
)
def test_a_wrong_field_or_type_is_rejected(tmp_path, name, bad, expected):
    doc = documents(name)[0]
    bad(doc)
    broken = tmp_path / name
    broken.write_text(yaml.safe_dump(doc))
    done = kubeconform(broken)
    assert done.returncode == 1, done.stdout
    assert expected in done.stdout, done.stdout


def test_an_unknown_kind_is_an_error_not_a_skip(tmp_path):
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("apiVersion: example.com/v1\nkind: Nothing\nmetadata: {name: x}\n")
    done = kubeconform(unknown)
    assert done.returncode == 1 and "could not find schema" in done.stdout, done.stdout


def test_generated_manifests_are_current():
    assert generate.stale() == [], "run python -m deploy.k8s.generate"


def test_kafka_topics_are_the_contracts_topics():
    topics = {d["spec"]["topicName"]: d["spec"] for d in documents("kafka-topics.yaml")}
    assert set(topics) == {t.name for t in ALL_TOPICS}
    for spec in ALL_TOPICS:
        got = topics[spec.name]
        assert got["partitions"] == spec.partitions
        assert (got["replicas"], got["config"]["min.insync.replicas"]) == (3, 2)
        assert {k: str(v) for k, v in got["config"].items() if k != "min.insync.replicas"} == (
            spec.configs()
        )


def test_embedded_files_equal_their_sources():
    monitoring = {d["metadata"]["name"]: d for d in documents("monitoring.yaml")}
    dashboard = monitoring["plum-grafana-dashboard"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"]["plum-stream.json"] == generate.DASHBOARD_SOURCE.read_text()
    rules = monitoring["plum-prometheus-rules"]["data"]["rules.yml"]
    assert rules == generate.RULES_SOURCE.read_text()
    config = documents("config.yaml")[0]["data"][generate.CONFIG_KEY]
    assert config == generate.CONFIG_SOURCE.read_text()


def test_prometheus_rules_in_the_config_map_pass_promtool(tmp_path):
    """promtool checks the rules the ConfigMap carries. The scrape config itself is not
    checked by a tool: Debian's Prometheus is built without Kubernetes service discovery,
    so its promtool rejects any kubernetes_sd_configs."""
    promtool = shutil.which("promtool")
    if promtool is None:
        _missing("promtool")
    monitoring = {d["metadata"]["name"]: d for d in documents("monitoring.yaml")}
    (tmp_path / "rules.yml").write_text(monitoring["plum-prometheus-rules"]["data"]["rules.yml"])
    done = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "rules.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load(monitoring["plum-prometheus"]["data"]["prometheus.yml"])
    assert config["rule_files"] == ["/etc/prometheus/rules/rules.yml"]


def test_every_metrics_port_is_scraped_under_its_component_name():
    """Pods with /metrics carry the label Prometheus keeps and a container port named
    "metrics" that the runtime binds on every address (PLUM_METRICS_HOST)."""
    jobs = {}
    for path in manifests():
        for doc in documents(path.name):
            if doc["kind"] not in ("Deployment", "Job"):
                continue
            pod = doc["spec"]["template"]
            job = pod["metadata"]["labels"].get(generate.METRICS_JOB_LABEL)
            (container,) = pod["spec"]["containers"]
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert job and generate.METRICS_PORT_NAME in ports, doc["metadata"]["name"]
            assert env["PLUM_METRICS_HOST"] == "0.0.0.0"
            assert str(ports["metrics"]) in container["command"]
            jobs[job] = ports["metrics"]
    assert set(jobs) == {"kafka", "sid_service", "trainer", "serving", "publisher"}
