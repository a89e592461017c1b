"""Alert rules: when a person is paged (severity "page") or a ticket is opened ("ticket").

Each alert reads a recorded SLI (monitoring/rules/recording.py) or a raw catalogue series,
with its threshold and duration from `AlertThresholds` ([alerts]). A summary names the
component (job) and the value that broke the threshold; the description says what it
means and where to look first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from monitoring.prometheus.config import AlertThresholds

GROUP = "plum_alerts"
Severity = Literal["page", "ticket"]


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str  # Prometheus duration the condition must hold; "0s" = fires at once
    severity: Severity
    summary: str  # Go template: {{ $value }}, {{ $labels.<name> }}
    description: str

    def rule(self) -> dict[str, Any]:
        rule: dict[str, Any] = {"alert": self.name, "expr": self.expr}
        if self.for_ != "0s":
            rule["for"] = self.for_
        rule["labels"] = {"severity": self.severity}
        rule["annotations"] = {"summary": self.summary, "description": self.description}
        return rule


def _num(value: float) -> str:
    """A threshold as PromQL reads it (no float noise: 30.0 -> 30, 0.25 -> 0.25)."""
    return repr(int(value)) if float(value).is_integer() else repr(float(value))


def alerts(t: AlertThresholds) -> tuple[Alert, ...]:
    """Every alert of the stack for thresholds `t`."""
    stalled = f"{t.trainer_stalled_minutes}m"
    return (
        Alert(
            "UploadToServableSloBreached",
            f"plum:upload_to_servable_seconds:p95_5m > {_num(t.upload_to_servable_p95_s)}",
            t.freshness_for,
            "page",
            'serving: upload → servable p95 is {{ $value | printf "%.1f" }} s'
            f" (SLO {_num(t.upload_to_servable_p95_s)} s)",
            "New videos take too long to become retrievable. Compare upload → SID "
            "(sid_service) with SID → servable (publisher deltas, serving) on the "
            "freshness row to see which stage is slow.",
        ),
        Alert(
            "ConsumerLagGrowing",
            "deriv(plum:consumer_lag_records:sum[5m]) > 0",
            t.consumer_lag_growing_for,
            "ticket",
            "kafka: lag of {{ $labels.group }} on {{ $labels.topic }} grows by "
            '{{ $value | printf "%.1f" }} records/s',
            "A consumer group reads slower than its topic is written, for longer than "
            "a burst: the stage behind it (Flink, the SID service or the trainer) "
            "falls further behind every minute.",
        ),
        Alert(
            "DeadLettersHigh",
            f"plum:deadletters:rate1m > {_num(t.deadletter_rate_per_s)}",
            t.deadletter_for,
            "ticket",
            "{{ $labels.component }}: "
            '{{ $value | printf "%.2f" }} dead letters/s ({{ $labels.reason }})',
            "Input records are being rejected as malformed or late faster than "
            "expected: check the producer of the source topic and the dead-letter "
            "topic's records for the reason.",
        ),
        Alert(
            "TrainerStalled",
            # the step series itself (so $value is the step), only where it did not change
            # in the window and already existed at the window's start (a trainer that has
            # just started is not stalled). A trainer that is down has no current step
            # (its series are marked stale when a scrape fails): ComponentDown's business.
            f"plum_trainer_step and changes(plum_trainer_step[{stalled}]) == 0"
            f" and plum_trainer_step offset {stalled}",
            "0s",
            "page",
            "{{ $labels.job }}: no training step in "
            f"{t.trainer_stalled_minutes} minutes (step {{{{ $value }}}})",
            "The trainer is up but its step counter has not moved: the input "
            "(plum.sft-examples.v1) may be empty or its loop is stuck. The served "
            "model stops getting fresher.",
        ),
        Alert(
            "TrainerCheckpointFailing",
            "increase(plum_trainer_checkpoint_failures_total[15m]) > 0",
            "0s",
            "page",
            '{{ $labels.job }}: {{ $value | printf "%.0f" }} checkpoint saves failed in 15 minutes',
            "The trainer keeps training, but its checkpoints do not land (a full disk or an "
            "unwritable checkpoint directory; see its log): a restart now goes back to the "
            "last good checkpoint and the publisher sees no newer one.",
        ),
        Alert(
            "PublishRejectedRepeatedly",
            f"sum(increase(plum_publisher_rejections_total[30m])) >= {_num(t.publish_rejections)}",
            "0s",
            "ticket",
            'publisher: {{ $value | printf "%.0f" }} checkpoints refused by the gate in 30 minutes',
            "The publish gate keeps refusing the trainer's checkpoints (see "
            "plum_publisher_rejections_total by reason): serving keeps an older model.",
        ),
        Alert(
            "ServingLatencyHigh",
            f"plum:serving_retrieve_seconds:p99_5m > {_num(t.serving_p99_s)}",
            t.serving_for,
            "page",
            'serving: retrieval p99 is {{ $value | printf "%.3f" }} s'
            f" (target {_num(t.serving_p99_s)} s)",
            "Retrieval answers are slow: check the request rate, batch sizes and "
            "whether a model load or warm-up is running.",
        ),
        Alert(
            "ServingErrorsHigh",
            f"plum:serving_5xx:ratio_5m > {_num(t.serving_5xx_ratio)}",
            t.serving_for,
            "page",
            "serving: {{ $value | humanizePercentage }} of answers are 5xx",
            "Serving fails requests: look at its log for the failing route and at "
            "whether a model is served (/readyz).",
        ),
        Alert(
            "ComponentDown",
            "up == 0",
            t.component_down_for,
            "page",
            "{{ $labels.job }}: /metrics at {{ $labels.instance }} does not answer",
            "Prometheus cannot scrape the component: its process is down or hung.",
        ),
    )


def alert_group(t: AlertThresholds) -> dict[str, Any]:
    return {"name": GROUP, "rules": [a.rule() for a in alerts(t)]}
