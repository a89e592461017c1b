"""The stack's scrape targets, read from the config file: each component the demo runs,
at the /metrics port its own section (or `[demo]`) gives it.

Ports come from the component's config class, so a port changed in the TOML or by
PLUM_<SECTION>__METRICS_PORT is scraped where it now is. A port <= 0 has no fixed
address (-1 = no /metrics, 0 = a free port known only to that process) and is skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from monitoring.prometheus.scrape import ScrapeTarget
from plum.settings import Settings
from publisher.config import SECTION as PUBLISHER_SECTION
from publisher.config import PublisherConfig
from serving.config import SECTION as SERVING_SECTION
from serving.config import ServingConfig
from streams.flink.job import FlinkConfig
from tokenizer.service import SidServiceConfig

log = logging.getLogger(__name__)

DEMO_SECTION = "demo"
HOST = "127.0.0.1"  # every /metrics server of the stack binds here


def stack_targets(
    path: Path | str | None, demo_config: type, env: Mapping[str, str] | None = None
) -> tuple[ScrapeTarget, ...]:
    """One target per metrics port of the components the demo runs (`[demo].components`,
    the traffic source chosen by `[demo].data`).

    `demo_config` is the `[demo]` class (it lives with the demo, which passes it in)."""
    settings = Settings.load(path, env)
    demo = settings.section(demo_config, DEMO_SECTION)
    flink = settings.section(FlinkConfig, "flink")
    ports: dict[str, tuple[tuple[str, int], ...]] = {
        "kafka_exporter": (("kafka", demo.exporter_metrics_port),),
        "simulator": (("simulator", demo.simulator_metrics_port),),
        "replay": (("replay", demo.replay_metrics_port),),
        "flink": (
            ("flink", flink.metrics_port),
            ("flink_job", flink.job_metrics_port),
        ),
        "sid_service": (
            ("sid_service", settings.section(SidServiceConfig, "sid_service").metrics_port),
        ),
        "trainer": (("trainer", demo.trainer_metrics_port),),
        "serving": (("serving", settings.section(ServingConfig, SERVING_SECTION).metrics_port),),
        "publisher": (
            ("publisher", settings.section(PublisherConfig, PUBLISHER_SECTION).metrics_port),
        ),
    }
    targets = []
    for component in demo.running:  # the simulator or, under --data movielens, the replay
        for job, port in ports.get(component, ()):
            if port > 0:
                targets.append(ScrapeTarget(job, HOST, port))
            else:
                log.info("%s: metrics port %d has no fixed address; not scraped", job, port)
    return tuple(targets)
