"""The recording and alert rules, checked by the real promtool.

Every alert has synthetic input series on which it must fire (with exactly these labels
and this rendered summary) and series on which it must stay quiet (below the threshold,
not held long enough, or a guard that must hold it back). `promtool test rules` runs
them all against the rule file the code generates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import yaml

from monitoring.panels import recorded_queries
from monitoring.prometheus.config import AlertThresholds
from monitoring.rules import rules_document, write_rules
from monitoring.rules.alerts import alerts
from tests.prometheus_support import promtool

THRESHOLDS = AlertThresholds()  # the defaults (= configs/demo.toml); cases assume them
DESCRIPTIONS = {a.name: a.description for a in alerts(THRESHOLDS)}
SEVERITY = {a.name: a.severity for a in alerts(THRESHOLDS)}


@dataclass(frozen=True)
class Fired:
    labels: dict[str, str]  # without alertname and severity
    summary: str


@dataclass(frozen=True)
class Case:
    alert: str
    why: str
    series: dict[str, str]  # promtool input series -> values (1 minute apart)
    eval_time: str
    fired: tuple[Fired, ...] = ()  # () = must stay quiet
    records: dict[str, float] = field(default_factory=dict)  # recorded SLI -> value


def _histogram(metric: str, buckets: dict[str, str], labels: str = "") -> dict[str, str]:
    extra = f"{labels}, " if labels else ""
    return {f'{metric}_bucket{{{extra}le="{le}"}}': v for le, v in buckets.items()}


UPLOAD = "plum_serving_upload_to_servable_seconds"
REQUEST = "plum_serving_request_seconds"
RETRIEVE = 'route="/v1/retrieve"'
LAG = 'plum_kafka_consumer_lag_records{job="kafka", instance="k:9102", topic="plum.watches.v1", group="flink"}'
DEADLETTERS = (
    'plum_deadletter_total{job="flink", instance="f:9108", component="flink", '
    'source_topic="plum.watches.v1", reason="malformed"}'
)
STEP = 'plum_trainer_step{job="trainer", instance="t:9104"}'
TRAINER_UP = 'up{job="trainer", instance="t:9104"}'
CHECKPOINT_FAILURES = 'plum_trainer_checkpoint_failures_total{job="trainer", instance="t:9104"}'
REJECTIONS = 'plum_publisher_rejections_total{job="publisher", instance="p:9107", reason="%s"}'
REQUESTS = 'plum_serving_requests_total{job="serving", instance="s:9106", route="/v1/retrieve", status="%s"}'
SERVING_UP = 'up{job="serving", instance="127.0.0.1:9106"}'

CASES: tuple[Case, ...] = (
    # --- upload -> servable p95 above 30 s for 5 minutes
    Case(
        "UploadToServableSloBreached",
        "every upload took 30-60 s: p95 interpolates to 58.5 s, held 19 minutes",
        _histogram(UPLOAD, {"1": "0+0x30", "30": "0+0x30", "60": "0+10x30", "+Inf": "0+10x30"}),
        "20m",
        (Fired({}, "serving: upload → servable p95 is 58.5 s (SLO 30 s)"),),
        {"plum:upload_to_servable_seconds:p95_5m": 58.5},
    ),
    Case(
        "UploadToServableSloBreached",
        "slow for only 3 minutes: pending, not firing",
        _histogram(UPLOAD, {"1": "0+0x30", "30": "0+0x30", "60": "0+10x30", "+Inf": "0+10x30"}),
        "4m",
    ),
    Case(
        "UploadToServableSloBreached",
        "every upload servable within 1 s",
        _histogram(UPLOAD, {"1": "0+10x30", "30": "0+10x30", "60": "0+10x30", "+Inf": "0+10x30"}),
        "20m",
    ),
    # --- consumer lag growing for 10 minutes
    Case(
        "ConsumerLagGrowing",
        "lag grows by 100 records a minute for 30 minutes",
        {LAG: "0+100x40"},
        "30m",
        (
            Fired(
                {"topic": "plum.watches.v1", "group": "flink"},
                "kafka: lag of flink on plum.watches.v1 grows by 1.7 records/s",
            ),
        ),
    ),
    Case("ConsumerLagGrowing", "a large but steady lag", {LAG: "5000+0x40"}, "30m"),
    Case(
        "ConsumerLagGrowing",
        "a 6-minute burst of growth, then steady",
        {LAG: "0+100x6 600+0x30"},
        "20m",
    ),
    # --- dead letters above 1/s for 5 minutes
    Case(
        "DeadLettersHigh",
        "2 dead letters per second",
        {DEADLETTERS: "0+120x30"},
        "20m",
        (
            Fired(
                {"component": "flink", "reason": "malformed"},
                "flink: 2.00 dead letters/s (malformed)",
            ),
        ),
    ),
    Case("DeadLettersHigh", "0.5 dead letters per second", {DEADLETTERS: "0+30x30"}, "20m"),
    # --- trainer stalled: no step change in 10 minutes while up
    Case(
        "TrainerStalled",
        "steps until minute 20, then none for 20 minutes",
        {STEP: "0+10x20 200+0x30", TRAINER_UP: "1+0x50"},
        "40m",
        (
            Fired(
                {"job": "trainer", "instance": "t:9104"},
                "trainer: no training step in 10 minutes (step 200)",
            ),
        ),
    ),
    Case(
        "TrainerStalled",
        "stepping every minute",
        {STEP: "0+10x50", TRAINER_UP: "1+0x50"},
        "40m",
    ),
    Case(
        "TrainerStalled",
        "a trainer that started 9 minutes ago and has not stepped yet",
        {STEP: "_x35 0+0x15", TRAINER_UP: "_x35 1+0x15"},
        "44m",
    ),
    Case(
        "TrainerStalled",
        "the trainer is down (ComponentDown's business, not a stall)",
        {STEP: "0+10x20 200+0x9 stale", TRAINER_UP: "1+0x29 0+0x20"},
        "33m",
    ),
    # --- a trainer checkpoint failed in the last 15 minutes
    Case(
        "TrainerCheckpointFailing",
        "two saves failed at minutes 10 and 12",
        {CHECKPOINT_FAILURES: "0x10 1 1 2+0x8"},
        "15m",
        (
            Fired(
                {"job": "trainer", "instance": "t:9104"},
                "trainer: 2 checkpoint saves failed in 15 minutes",
            ),
        ),
    ),
    Case(
        "TrainerCheckpointFailing",
        "one failure, 40 minutes ago",
        {CHECKPOINT_FAILURES: "0x5 1+0x50"},
        "45m",
    ),
    Case("TrainerCheckpointFailing", "no failure", {CHECKPOINT_FAILURES: "0+0x30"}, "20m"),
    # --- publish rejected 3 or more times in 30 minutes
    Case(
        "PublishRejectedRepeatedly",
        "a refusal every 5 minutes",
        {REJECTIONS % "recall_below_served": "0x4 1x4 2x4 3x4 4x4 5x4"},
        "29m",
        (Fired({}, "publisher: 5 checkpoints refused by the gate in 30 minutes"),),
    ),
    Case(
        "PublishRejectedRepeatedly",
        "two refusals in 30 minutes",
        {REJECTIONS % "recall_below_served": "0x10 1x10 2x20"},
        "39m",
    ),
    Case(
        "PublishRejectedRepeatedly",
        "five refusals, but over an hour ago",
        {REJECTIONS % "recall_below_served": "0 1 2 3 4 5+0x80"},
        "80m",
    ),
    # --- retrieval p99 above 0.25 s for 5 minutes
    Case(
        "ServingLatencyHigh",
        "every retrieval took 0.5-1 s",
        _histogram(REQUEST, {"0.5": "0+0x30", "1.0": "0+10x30", "+Inf": "0+10x30"}, RETRIEVE),
        "20m",
        (Fired({}, "serving: retrieval p99 is 0.995 s (target 0.25 s)"),),
    ),
    Case(
        "ServingLatencyHigh",
        "retrievals under 0.1 s; only /healthz is slow",
        {
            **_histogram(
                REQUEST, {"0.1": "0+10x30", "0.5": "0+10x30", "+Inf": "0+10x30"}, RETRIEVE
            ),
            **_histogram(
                REQUEST, {"0.1": "0+0x30", "0.5": "0+0x30", "+Inf": "0+10x30"}, 'route="/healthz"'
            ),
        },
        "20m",
    ),
    # --- 5xx share above 1 % for 5 minutes
    Case(
        "ServingErrorsHigh",
        "5 of every 105 answers are 500s",
        {REQUESTS % "200": "0+100x30", REQUESTS % "500": "0+5x30"},
        "20m",
        (Fired({}, "serving: 4.762% of answers are 5xx"),),
    ),
    Case(
        "ServingErrorsHigh",
        "1 in 1001 answers is a 503",
        {REQUESTS % "200": "0+1000x30", REQUESTS % "503": "0+1x30"},
        "20m",
    ),
    # --- a component down for 1 minute
    Case(
        "ComponentDown",
        "serving's /metrics stopped answering at minute 3",
        {SERVING_UP: "1 1 1 0 0 0 0 0"},
        "6m",
        (
            Fired(
                {"job": "serving", "instance": "127.0.0.1:9106"},
                "serving: /metrics at 127.0.0.1:9106 does not answer",
            ),
        ),
    ),
    Case("ComponentDown", "down since this evaluation only", {SERVING_UP: "1 1 1 0 0"}, "3m"),
    Case("ComponentDown", "always up", {SERVING_UP: "1+0x10"}, "8m"),
)


def unit_test_document(rule_file: str) -> dict:
    """The `promtool test rules` file of every case (one test group per case)."""
    tests = []
    for case in CASES:
        exp = [
            {
                "exp_labels": {**f.labels, "severity": SEVERITY[case.alert]},
                "exp_annotations": {
                    "summary": f.summary,
                    "description": DESCRIPTIONS[case.alert],
                },
            }
            for f in case.fired
        ]
        test = {
            "name": f"{case.alert}: {case.why}",
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in case.series.items()],
            "alert_rule_test": [
                {"eval_time": case.eval_time, "alertname": case.alert, "exp_alerts": exp}
            ],
        }
        if case.records:
            test["promql_expr_test"] = [
                {
                    "expr": name,
                    "eval_time": case.eval_time,
                    "exp_samples": [{"labels": name, "value": value}],
                }
                for name, value in case.records.items()
            ]
        tests.append(test)
    return {"rule_files": [rule_file], "evaluation_interval": "1m", "tests": tests}


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_stays_quiet():
    names = [a.name for a in alerts(THRESHOLDS)]
    assert len(names) == len(set(names))
    assert {c.alert for c in CASES} == set(names)
    for name in names:
        assert any(c.fired for c in CASES if c.alert == name), f"{name}: no firing case"
        assert any(not c.fired for c in CASES if c.alert == name), f"{name}: no quiet case"


def test_every_alert_fires_and_stays_quiet_as_promtool_evaluates_it(tmp_path):
    write_rules(tmp_path / "rules.yml", THRESHOLDS)
    (tmp_path / "rules_test.yml").write_text(
        yaml.safe_dump(unit_test_document("rules.yml"), sort_keys=False, allow_unicode=True)
    )
    done = promtool("test", "rules", "rules_test.yml", cwd=tmp_path)
    assert "SUCCESS" in done.stdout


def test_a_wrong_expectation_fails_promtool(tmp_path):
    """The harness itself can fail: a firing case expected quiet is reported."""
    write_rules(tmp_path / "rules.yml", THRESHOLDS)
    document = unit_test_document("rules.yml")
    document["tests"] = document["tests"][:1]
    document["tests"][0]["alert_rule_test"][0]["exp_alerts"] = []
    (tmp_path / "rules_test.yml").write_text(yaml.safe_dump(document, allow_unicode=True))
    with pytest.raises(pytest.fail.Exception, match="UploadToServableSloBreached"):
        promtool("test", "rules", "rules_test.yml", cwd=tmp_path)


def test_the_rule_file_passes_promtool_check(tmp_path):
    done = promtool("check", "rules", write_rules(tmp_path / "rules.yml", THRESHOLDS))
    n = len(recorded_queries()) + len(alerts(THRESHOLDS))
    assert f"SUCCESS: {n} rules found" in done.stdout


def test_recording_rules_are_the_panels_recorded_queries_verbatim():
    recording, _ = rules_document(THRESHOLDS)["groups"]
    assert recording["rules"] == [{"record": q.record, "expr": q.expr} for q in recorded_queries()]


def test_every_alert_has_a_severity_and_a_summary_with_its_value_and_job():
    _, alerting = rules_document(THRESHOLDS)["groups"]
    for rule in alerting["rules"]:
        assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
        summary = rule["annotations"]["summary"]
        assert "$value" in summary or "$labels.instance" in summary, rule["alert"]
        # the component: from the series' job label, or named where the SLI is aggregated
        assert summary.split(":")[0] in {
            "{{ $labels.job }}",
            "{{ $labels.component }}",
            "serving",
            "kafka",
            "publisher",
        }, summary
        assert rule["annotations"]["description"], rule["alert"]


def test_alert_rules_read_recorded_slis_not_copies_of_their_queries():
    exprs = {a.name: a.expr for a in alerts(THRESHOLDS)}
    assert exprs["UploadToServableSloBreached"].startswith("plum:upload_to_servable_seconds:p95_5m")
    assert exprs["ServingLatencyHigh"].startswith("plum:serving_retrieve_seconds:p99_5m")
    assert "plum:consumer_lag_records:sum" in exprs["ConsumerLagGrowing"]
    assert "plum:deadletters:rate1m" in exprs["DeadLettersHigh"]
    for q in recorded_queries():
        assert all(q.expr not in e for e in exprs.values()), q.record


def test_thresholds_and_durations_come_from_the_config():
    t = AlertThresholds(
        serving_p99_s=0.5, serving_for="30s", trainer_stalled_minutes=3, publish_rejections=7
    )
    rules = {r["alert"]: r for r in rules_document(t)["groups"][1]["rules"]}
    assert rules["ServingLatencyHigh"]["expr"].endswith("> 0.5")
    assert rules["ServingLatencyHigh"]["for"] == "30s"
    assert "changes(plum_trainer_step[3m]) == 0" in rules["TrainerStalled"]["expr"]
    assert "offset 3m" in rules["TrainerStalled"]["expr"]
    assert rules["PublishRejectedRepeatedly"]["expr"].endswith(">= 7")
    assert "for" not in rules["PublishRejectedRepeatedly"]
