"""Every rule of the stack: what `plum demo` checks before it starts anything.

The components' own checks (each run by that component at start) plus what only the
whole stack has: one port per listening process. `check_stack` also builds every section
of the file, so a bad value in a component that starts late (the trainer joins after a
minute) is refused at once, and a section no component reads (a typo) is refused too.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from monitoring.dashboards.config import SECTION as DASHBOARD_SECTION
from monitoring.dashboards.config import DashboardConfig
from monitoring.prometheus.config import ALERTS_SECTION, AlertThresholds, PrometheusConfig
from monitoring.prometheus.config import SECTION as PROMETHEUS_SECTION
from plum.config import ConfigError
from plum.settings import Check, Settings, distinct_ports
from publisher.config import SECTION as PUBLISHER_SECTION
from publisher.config import PublisherConfig
from serving.config import SECTION as SERVING_SECTION
from serving.config import ServingConfig
from streams.contracts.sid import SECTION as SID_SECTION
from streams.contracts.sid import SidConfig
from streams.datasets.movielens import MovieLensConfig
from streams.flink.config_checks import CHECKS as FLINK_CHECKS
from streams.flink.job import FlinkConfig
from streams.kafka.broker import KafkaConfig
from streams.simulator.config import SimulatorConfig
from tokenizer.config import SECTION as TOKENIZER_SECTION
from tokenizer.config import TokenizerConfig
from tokenizer.config_checks import CHECKS as SID_SERVICE_CHECKS
from tokenizer.service import SidServiceConfig
from trainer.config import MODEL_SECTION, VOCAB_SECTION, ModelConfig, VocabConfig
from trainer.config_checks import CHECKS as TRAINER_CHECKS
from trainer.cpt import SECTION as CPT_SECTION
from trainer.cpt import CptConfig
from trainer.data import DATA_SECTION, DataConfig
from trainer.loop import SECTION as TRAINER_SECTION
from trainer.loop import TrainerConfig

DEMO_SECTION = "demo"
# Sections of tools that run beside the stack, not in it: `plum bench` reads its own
# ([bench_trainer_quality], ...), so the stack neither builds nor refuses them.
TOOL_SECTION_PREFIXES = ("bench_",)

# Every section a config file of this stack may hold, and the class that reads it
# ([demo]'s class lives with the demo, which passes it in).
SECTIONS: dict[str, type] = {
    "kafka": KafkaConfig,
    "simulator": SimulatorConfig,
    "movielens": MovieLensConfig,
    "flink": FlinkConfig,
    TOKENIZER_SECTION: TokenizerConfig,
    SID_SECTION: SidConfig,
    "sid_service": SidServiceConfig,
    MODEL_SECTION: ModelConfig,
    VOCAB_SECTION: VocabConfig,
    DATA_SECTION: DataConfig,
    CPT_SECTION: CptConfig,
    TRAINER_SECTION: TrainerConfig,
    SERVING_SECTION: ServingConfig,
    PUBLISHER_SECTION: PublisherConfig,
    PROMETHEUS_SECTION: PrometheusConfig,
    ALERTS_SECTION: AlertThresholds,
    DASHBOARD_SECTION: DashboardConfig,
}


def stack_checks(demo_config: type) -> tuple[Check, ...]:
    """Every component's checks, and that no two processes of the demo share a port."""
    ports = distinct_ports(
        (KafkaConfig, "kafka", "port"),
        (KafkaConfig, "kafka", "controller_port"),
        (demo_config, DEMO_SECTION, "simulator_metrics_port"),
        (demo_config, DEMO_SECTION, "exporter_metrics_port"),
        (FlinkConfig, "flink", "metrics_port"),
        (FlinkConfig, "flink", "rest_port"),
        (FlinkConfig, "flink", "job_metrics_port"),
        (SidServiceConfig, "sid_service", "metrics_port"),
        (demo_config, DEMO_SECTION, "trainer_metrics_port"),
        (ServingConfig, SERVING_SECTION, "port"),
        (ServingConfig, SERVING_SECTION, "metrics_port"),
        (PublisherConfig, PUBLISHER_SECTION, "metrics_port"),
        (PrometheusConfig, PROMETHEUS_SECTION, "port"),
        (DashboardConfig, DASHBOARD_SECTION, "port"),
    )
    return FLINK_CHECKS + SID_SERVICE_CHECKS + TRAINER_CHECKS + ports


def check_stack(
    path: Path | str | None, demo_config: type, env: Mapping[str, str] | None = None
) -> Settings:
    """Every section built and every check run: ConfigError (one line) at the first fault."""
    settings = Settings.load(path, env)
    sections = {**SECTIONS, DEMO_SECTION: demo_config}
    unknown = sorted(
        name
        for name in settings.section_names
        if name not in sections and not name.startswith(TOOL_SECTION_PREFIXES)
    )
    if unknown:
        raise ConfigError(
            f"config {settings.path}: sections {unknown} are read by no component; "
            f"known: {sorted(sections)}"
        )
    settings.load_sections(sections)
    return settings.check(stack_checks(demo_config))
