"""`TokenizerConfig`: the SID-v2 tokenizer's settings, read from `[tokenizer]` of a config TOML.

    cfg = load_section(TokenizerConfig, "configs/test.toml", "tokenizer")

Paper-scale values (base 2048, L = 3) are the defaults and are written out, with the
reasons, in configs/paper.toml; configs/test.toml uses small codebooks so tests stay fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from plum.config import from_mapping, load_section

SECTION = "tokenizer"


@dataclass(frozen=True)
class TokenizerConfig:
    # --- model
    encoder_hidden: tuple[int, ...] = (256,)  # per-modality MLP E_m hidden widths
    modality_dim: int = 128  # output width of each E_m before concatenation
    latent_dim: int = 64  # width of z after the fusion projection
    decoder_hidden: tuple[int, ...] = (256,)  # per-modality reconstruction MLP
    # --- residual quantization
    codebook_base: int = 2048  # codes at level 1; level l has base / 2^(l-1)
    num_levels: int = 3  # L
    multi_resolution: bool = True  # False: every level has `codebook_base` codes (SID-v1)
    progressive_masking: bool = True  # random r in [1, L] per example during training
    beta: float = 0.25  # commitment weight inside the RQ loss (eq. 2)
    # --- loss weights (each term is also logged unweighted)
    recon_weight: float = 1.0
    rq_weight: float = 1.0
    contrastive_weight: float = 0.1
    temperature: float = 0.1  # InfoNCE temperature on cosine similarities
    # --- optimisation
    learning_rate: float = 1e-3
    batch_size: int = 1024  # items per step
    pair_batch_size: int = 256  # co-occurring pairs per step (in-batch negatives)
    steps: int = 20_000
    seed: int = 0
    # --- codebook maintenance
    kmeans_iters: int = 10  # Lloyd iterations after k-means++ on the first batch
    dead_code_window: int = 200  # steps; a code unused over a whole window is re-seeded
    # --- logging and checkpoints
    log_every: int = 200

    def __post_init__(self) -> None:
        if self.num_levels < 1:
            raise ValueError(f"num_levels={self.num_levels} must be >= 1")
        sizes = self.level_sizes
        if min(sizes) < 2:
            raise ValueError(
                f"codebook_base={self.codebook_base} with num_levels={self.num_levels} "
                f"gives level sizes {sizes}; every level needs >= 2 codes"
            )
        for name in (
            "latent_dim",
            "modality_dim",
            "batch_size",
            "pair_batch_size",
            "steps",
            "dead_code_window",
            "log_every",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature} must be > 0")

    @property
    def level_sizes(self) -> tuple[int, ...]:
        """Codes per level: base, base/2, base/4, ... (or all base without multi-resolution)."""
        if not self.multi_resolution:
            return (self.codebook_base,) * self.num_levels
        return tuple(self.codebook_base // 2**level for level in range(self.num_levels))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenizerConfig:
        return from_mapping(cls, data, SECTION, env={})


def load_tokenizer_config(
    path: Path | str | None, env: Mapping[str, str] | None = None, **overrides: Any
) -> TokenizerConfig:
    """`[tokenizer]` of the TOML at `path` (default: $PLUM_CONFIG or configs/demo.toml),
    then PLUM_TOKENIZER__* environment overrides, then non-None keyword overrides."""
    return load_section(TokenizerConfig, path, SECTION, env=env, **overrides)
