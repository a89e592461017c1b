"""`[publisher]`: the gate, the model repository, the endpoints and the two cadences.

Values that other sections own are derived from them, never copied:

    bootstrap     [kafka] host:port                         (as every component's)
    admin_token   [serving].admin_token                     (PLUM_SERVING__ADMIN_TOKEN sets
                                                              the server's and ours at once)
    endpoints     [] = http://[serving].host:[serving].port (the one local server)
    model_repo    "" = [serving]'s (serving.config.model_repo_path: its model_repo, else
                  STATE/serving/models), so the writer and the reader agree

A copy of `bootstrap` or `admin_token` in `[publisher]` that disagrees is refused by the
loader, like every derived field. The other paths default under the state root:
run_dir "" = STATE/trainer/run, state_dir "" = STATE/publisher. `load_publisher_config`
returns a config whose paths and endpoints are resolved, so nothing downstream has to
know what "" meant.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plum.config import (
    DEFAULT_KAFKA_BOOTSTRAP,
    ConfigError,
    ConfigFile,
    derived,
    state_dir,
)
from serving.artifact import DTYPES
from serving.config import SECTION as SERVING_SECTION
from serving.config import ServingConfig, model_repo_path

SECTION = "publisher"
# What a default path is under the state root (plum.config.state_dir).
RUN_DIR_UNDER_STATE = Path("trainer") / "run"
STATE_DIR_UNDER_STATE = Path("publisher")


def _serving(config_file: ConfigFile) -> ServingConfig:
    """[serving] as the server itself reads it (PLUM_SERVING__* applied)."""
    return config_file.section(ServingConfig, SERVING_SECTION)


def _admin_token(config_file: ConfigFile) -> str:
    return _serving(config_file).admin_token


@dataclass(frozen=True, repr=False)
class PublisherConfig:
    """[publisher]; see the module docstring for the derived fields and path defaults."""

    bootstrap: str = DEFAULT_KAFKA_BOOTSTRAP  # derived from [kafka]
    admin_token: str = derived("", f"[{SERVING_SECTION}].admin_token", _admin_token)
    topic_prefix: str = ""
    run_dir: str = ""  # the trainer's run directory (checkpoints/, vocab/)
    model_repo: str = ""  # the versioned model repository serving loads from
    state_dir: str = ""  # ledger.sqlite and deltas.sqlite
    endpoints: tuple[str, ...] = ()  # serving base URLs
    publish_every_s: float = 60.0
    deltas_every_s: float = 2.0
    gate_k: int = 10
    gate_margin: float = 0.02
    gate_examples: int = 256
    gate_min_examples: int = 32
    gate_beams: int = 10
    dtype: str = "float32"
    push_timeout_s: float = 120.0
    metrics_port: int = -1  # -1 = no /metrics server; 0 = a free port (logged)
    log_every_s: float = 10.0

    def __post_init__(self) -> None:
        for name in ("publish_every_s", "deltas_every_s", "push_timeout_s", "log_every_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be > 0")
        if self.gate_k < 1:
            raise ValueError(f"gate_k={self.gate_k} must be >= 1")
        if self.gate_beams < self.gate_k:
            raise ValueError(
                f"gate_beams={self.gate_beams} < gate_k={self.gate_k}: the search would "
                "return fewer videos than Recall@gate_k looks at"
            )
        if not 0.0 <= self.gate_margin <= 1.0:
            raise ValueError(f"gate_margin={self.gate_margin} must be in [0, 1]")
        if not 1 <= self.gate_min_examples <= self.gate_examples:
            raise ValueError(
                f"gate_min_examples={self.gate_min_examples} must be in "
                f"[1, gate_examples={self.gate_examples}]"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} must be one of {DTYPES}")
        if self.metrics_port < -1:
            raise ValueError(f"metrics_port={self.metrics_port} must be >= -1 (-1 = none)")
        for url in self.endpoints:
            if not url.startswith(("http://", "https://")) or url.endswith("/"):
                raise ValueError(
                    f"endpoint {url!r} must be a base URL like http://host:port (no trailing slash)"
                )

    def __repr__(self) -> str:
        # the token must never reach a log line through a repr
        shown = {
            f.name: (
                "***" if f.name == "admin_token" and self.admin_token else getattr(self, f.name)
            )
            for f in dataclasses.fields(self)
        }
        return f"PublisherConfig({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir)

    @property
    def model_repo_path(self) -> Path:
        return Path(self.model_repo)

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)


def _resolve(
    cfg: PublisherConfig, config_file: ConfigFile, resolve_endpoints: bool = True
) -> PublisherConfig:
    """Fill "" paths and [] endpoints from [serving] and the state root."""
    root = state_dir(config_file.env)
    serving = _serving(config_file)
    endpoints = cfg.endpoints
    if not endpoints and resolve_endpoints:
        if serving.port == 0:
            raise ConfigError(
                f"[{SECTION}].endpoints is [] (= [{SERVING_SECTION}] host:port) but "
                f"[{SERVING_SECTION}].port is 0 (a free port chosen when serving starts, "
                "unknown here): give the server's URL with --endpoint or "
                f"[{SECTION}].endpoints"
            )
        endpoints = (serving.base_url,)
    model_repo = cfg.model_repo or str(model_repo_path(serving, config_file.env))
    try:
        return dataclasses.replace(
            cfg,
            endpoints=tuple(endpoints),
            run_dir=cfg.run_dir or str(root / RUN_DIR_UNDER_STATE),
            model_repo=model_repo,
            state_dir=cfg.state_dir or str(root / STATE_DIR_UNDER_STATE),
        )
    except ValueError as err:
        raise ConfigError(f"[{SECTION}]: {err}") from err


def load_publisher_config(
    path: Path | str | None,
    env: Mapping[str, str] | None = None,
    *,
    resolve_endpoints: bool = True,
    **overrides: Any,
) -> PublisherConfig:
    """[publisher] of the TOML at `path` (default $PLUM_CONFIG or configs/demo.toml), then
    PLUM_PUBLISHER__* overrides, then `overrides` (command-line flags; None = not given),
    with derived fields, paths and endpoints resolved (see the module docstring).
    `resolve_endpoints=False` leaves [] endpoints empty, for commands that push nothing
    (`plum publish status`)."""
    config_file = ConfigFile.read(path, env)
    endpoints = overrides.get("endpoints")
    if endpoints is not None:
        overrides["endpoints"] = tuple(e.rstrip("/") for e in endpoints)
    cfg = config_file.section(PublisherConfig, SECTION, **overrides)
    return _resolve(cfg, config_file, resolve_endpoints)
