"""The scrape configuration: one Prometheus job per component, job = catalogue component.

`scrape_config` builds the prometheus.yml document as a dict; `write_prometheus_yml`
writes it. Prometheus scrapes itself as job "prometheus" too, so the dashboard sees the
server's own `up` and the rule evaluation metrics.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from monitoring.prometheus.config import PrometheusConfig

SELF_JOB = "prometheus"
_JOB = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


@dataclass(frozen=True)
class ScrapeTarget:
    """One /metrics endpoint: `job` is the catalogue component (kafka, simulator, flink,
    flink_job, sid_service, trainer, serving, publisher)."""

    job: str
    host: str
    port: int

    def __post_init__(self) -> None:
        if not _JOB.match(self.job):
            raise ValueError(f"job={self.job!r} is not a valid Prometheus job name")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"{self.job}: port={self.port} must be in [1, 65535]")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def scrape_config(
    targets: Sequence[ScrapeTarget],
    config: PrometheusConfig,
    rule_files: Sequence[str | Path] = (),
    self_address: str | None = None,
) -> dict[str, Any]:
    """The prometheus.yml document: global intervals, `rule_files`, one scrape job per
    distinct `job` of `targets` (several targets of one job, e.g. two serving replicas,
    share it) and the server itself at `self_address` (default config host:port)."""
    jobs: dict[str, list[str]] = {}
    for t in targets:
        if t.job == SELF_JOB:
            raise ValueError(f"job {SELF_JOB!r} is the server itself; it is added for you")
        jobs.setdefault(t.job, [])
        if t.address in jobs[t.job]:
            raise ValueError(f"{t.job}: target {t.address} listed twice")
        jobs[t.job].append(t.address)
    me = self_address or f"{config.host}:{config.port}"
    scrape = [{"job_name": SELF_JOB, "static_configs": [{"targets": [me]}]}]
    scrape += [
        {"job_name": job, "static_configs": [{"targets": addresses}]}
        for job, addresses in jobs.items()
    ]
    return {
        "global": {
            "scrape_interval": config.scrape_interval,
            "scrape_timeout": config.scrape_interval if config.scrape_interval_s < 10 else "10s",
            "evaluation_interval": config.evaluation_interval,
        },
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": scrape,
    }


def dump_yaml(document: dict[str, Any], header: str = "") -> str:
    """YAML text in the document's own key order, `header` lines as # comments on top."""
    comment = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    return comment + yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=120)


def write_prometheus_yml(path: Path, document: dict[str, Any], header: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_yaml(document, header), encoding="utf-8")
    return path
