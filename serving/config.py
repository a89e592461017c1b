"""`[serving]`: the retrieval server's settings (`plum serve`), validated once at start-up.

The keys are exactly those of configs/demo.toml and configs/test.toml; `load_section`
refuses any other, and `PLUM_SERVING__<KEY>` overrides one (the admin token is meant to
come from there, never from a committed file).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plum.config import load_section, state_dir
from plum.ports import http_url

SECTION = "serving"
# The API's bounds (docs of /v1/retrieve): a compiled beam width above this could never
# be asked for, so the config refuses it instead of compiling it for nothing.
MAX_BEAM = 100
MAX_K = 100


def _increasing(name: str, values: tuple[int, ...], low: int, high: int | None) -> None:
    if not values:
        raise ValueError(f"{name} must not be empty")
    if any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise ValueError(f"{name}={list(values)} must be strictly increasing")
    if values[0] < low or (high is not None and values[-1] > high):
        top = f", <= {high}" if high is not None else ""
        raise ValueError(f"{name}={list(values)} must be >= {low}{top}")


@dataclass(frozen=True)
class ServingConfig:
    """The `[serving]` section; see configs/demo.toml for what each key is for."""

    host: str = "127.0.0.1"
    port: int = 8400  # 0 = a free port (logged and written to port_file)
    port_file: str = ""  # "" = none
    model_repo: str = ""  # "" = STATE/serving/models (`model_repo_path`)
    admin_token: str = field(default="", repr=False)  # "" = the admin API always answers 401
    beam_widths: tuple[int, ...] = (10, 20, 50)
    batch_sizes: tuple[int, ...] = (1, 4, 16)
    max_wait_ms: float = 5.0
    max_body_bytes: int = 65536
    max_history: int = 256
    metrics_port: int = -1  # -1 = no /metrics server, 0 = a free port
    log_every_s: float = 10.0

    @property
    def base_url(self) -> str:
        """Where clients reach this server (meaningful when port is not 0)."""
        return http_url(self.host, self.port)

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("host must not be empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port={self.port} must be in [0, 65535] (0 = a free port)")
        _increasing("beam_widths", self.beam_widths, 1, MAX_BEAM)
        _increasing("batch_sizes", self.batch_sizes, 1, None)
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms={self.max_wait_ms} must be >= 0")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes={self.max_body_bytes} must be >= 1024")
        if self.max_history < 1:
            raise ValueError(f"max_history={self.max_history} must be >= 1")
        if not -1 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port={self.metrics_port} must be in [-1, 65535] (-1 = none)")
        if self.log_every_s <= 0:
            raise ValueError(f"log_every_s={self.log_every_s} must be > 0")

    @property
    def max_batch(self) -> int:
        """The largest dynamic batch: the largest compiled batch size."""
        return self.batch_sizes[-1]

    def width_for(self, beam: int) -> int | None:
        """The smallest compiled beam width >= `beam` (None when none is that wide).

        Rounding up, never down: a wider beam only finds more (or the same) candidates."""
        for width in self.beam_widths:
            if width >= beam:
                return width
        return None

    def batch_size_for(self, n: int) -> int:
        """The smallest compiled batch size that holds `n` requests (n <= max_batch)."""
        for size in self.batch_sizes:
            if size >= n:
                return size
        raise ValueError(f"{n} requests exceed the largest compiled batch {self.max_batch}")


def load_serving_config(
    path: Path | str | None = None, env: Mapping[str, str] | None = None, **overrides: Any
) -> ServingConfig:
    """`[serving]` of the TOML at `path` (default $PLUM_CONFIG or configs/demo.toml), then
    PLUM_SERVING__* from `env`, then keyword overrides (command-line flags; None = unset)."""
    return load_section(ServingConfig, path, SECTION, env=env, **overrides)


def model_repo_path(cfg: ServingConfig, env: Mapping[str, str] | None = None) -> Path:
    """Where the model repository is: `model_repo`, or STATE/serving/models when empty
    (the publisher's default too, so the two agree without a copy of the path)."""
    return Path(cfg.model_repo) if cfg.model_repo else state_dir(env) / "serving" / "models"
