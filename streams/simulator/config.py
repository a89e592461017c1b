"""The simulator's typed config: the `[simulator]` table of a config TOML.

Every knob of the simulated platform lives here, so a run is described completely by
this object plus the seed (the ground-truth file stores both). CLI flags of
`plum simulate` override fields; environment variables `PLUM_SIMULATOR__<FIELD>` too.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plum.config import load_section


@dataclass(frozen=True)
class SimulatorConfig:
    seed: int = 42

    # --- the latent world
    num_users: int = 1000
    num_topics: int = 16
    latent_dim: int = 24  # >= num_topics keeps topic centroids orthonormal
    initial_videos: int = 2000
    new_uploads_per_sim_minute: float = 6.0  # Poisson arrivals on the simulated clock
    modalities: tuple[str, ...] = ("text", "visual", "audio")
    embedding_dims: tuple[int, ...] = (32, 32, 16)
    embedding_noise: tuple[float, ...] = (
        0.1,
        0.2,
        0.4,
    )  # per modality; view entries are ~unit scale
    user_interest_alpha: float = 0.3  # Dirichlet concentration of a user's topic mixture
    video_topic_alpha: float = 0.1  # Dirichlet background of a video's topic mixture ...
    video_topic_focus: float = 4.0  # ... plus this much on its primary topic
    video_latent_noise: float = 0.1
    zipf_exponent: float = 1.0  # popularity ~ rank^-s
    channels_per_topic: int = 8

    # --- behaviour
    concurrent_sessions: int = 32
    mean_session_length: float = 8.0  # watches; geometric
    session_topic_stickiness: float = 0.8  # P(next watch stays in the previous watch's topic)
    explore_fraction: float = 0.1  # P(a fresh topic pick ignores the user's interests)
    match_scale: float = 8.0  # logit = scale * (match - center) + noise
    match_center: float = 0.25
    match_noise: float = 1.0
    satisfaction_fraction: float = 0.1  # of clicked watches that carry a survey answer

    # --- clocks and duration
    watches_per_sim_second: float = 20.0
    start_epoch_ms: int = 1_700_000_000_000
    events: int = 100_000  # records to produce in all (uploads, watches, bad); 0 = no limit
    seconds: float = 0.0  # simulated seconds to run; 0 = no limit
    rate: float = 0.0  # records per wall-clock second; 0 = as fast as possible
    # Event time follows the wall clock, as in production: the simulated clock starts at
    # the wall time of the start (start_epoch_ms is replaced) and each record is sent
    # when the wall clock reaches its simulated time (`rate` then only caps the pace).
    # The freshness metrics (event -> model) then read in real seconds.
    real_time: bool = False

    # --- faults
    bad_fraction: float = 0.0  # P(a malformed record follows a valid one)
    out_of_order_fraction: float = 0.0  # P(a watch is held back and produced late)
    max_delay_ms: int = 30_000

    # --- output
    truth_path: Path | None = None  # None: <state dir>/simulator/ground_truth.json
    topic_prefix: str = ""
    replay: bool = False  # write to the replay topics instead of the live ones
    progress_every_s: float = 5.0

    def __post_init__(self) -> None:
        positive = (
            "num_users",
            "num_topics",
            "latent_dim",
            "initial_videos",
            "channels_per_topic",
            "concurrent_sessions",
            "watches_per_sim_second",
            "mean_session_length",
            "user_interest_alpha",
            "video_topic_alpha",
            "progress_every_s",
        )
        for name in positive:
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"simulator.{name} must be > 0, got {value!r}")
        non_negative = (
            "new_uploads_per_sim_minute",
            "video_topic_focus",
            "video_latent_noise",
            "zipf_exponent",
            "match_noise",
            "start_epoch_ms",
            "events",
            "seconds",
            "rate",
            "max_delay_ms",
        )
        for name in non_negative:
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"simulator.{name} must be >= 0, got {value!r}")
        fractions = (
            "session_topic_stickiness",
            "explore_fraction",
            "satisfaction_fraction",
            "bad_fraction",
            "out_of_order_fraction",
        )
        for name in fractions:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"simulator.{name} must be in [0, 1], got {value!r}")
        if not (len(self.modalities) == len(self.embedding_dims) == len(self.embedding_noise)):
            raise ValueError(
                f"simulator.modalities {self.modalities}, embedding_dims {self.embedding_dims} and "
                f"embedding_noise {self.embedding_noise} must have the same length"
            )
        if not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(
                f"simulator.modalities must be non-empty and distinct, got {self.modalities}"
            )
        if any(d <= 0 for d in self.embedding_dims):
            raise ValueError(
                f"simulator.embedding_dims must be positive, got {self.embedding_dims}"
            )
        if any(n < 0 for n in self.embedding_noise):
            raise ValueError(f"simulator.embedding_noise must be >= 0, got {self.embedding_noise}")

    @property
    def dims(self) -> dict[str, int]:
        """Modality name -> embedding length, the shape `ValidationLimits.embedding_dims` takes."""
        return dict(zip(self.modalities, self.embedding_dims, strict=True))

    def replace(self, **changes: Any) -> SimulatorConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Path):
                value = str(value)
            out[f.name] = value
        return out


def load_config(path: Path | str | None = None, **overrides: Any) -> SimulatorConfig:
    """`[simulator]` of the TOML at `path` (default: $PLUM_CONFIG or configs/demo.toml)."""
    return load_section(SimulatorConfig, path, "simulator", **overrides)
