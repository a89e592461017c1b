"""Rules between the trainer's settings and those of the components it reads from (run
once by every `plum trainer` command at start; see plum/settings.py)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from plum.settings import Check, Settings, same
from streams.contracts.sid import sid_length
from streams.flink.job import FlinkConfig
from tokenizer.config import SECTION as TOKENIZER_SECTION
from tokenizer.config import TokenizerConfig
from tokenizer.service import SidServiceConfig
from trainer.config import MODEL_SECTION, ModelConfig
from trainer.cpt import SECTION as CPT_SECTION
from trainer.cpt import CptConfig
from trainer.data import DATA_SECTION, DataConfig
from trainer.loop import SECTION as TRAINER_SECTION
from trainer.loop import TrainerConfig


def _data(s: Settings) -> DataConfig:
    return s.section(DataConfig, DATA_SECTION)


def _model(s: Settings) -> ModelConfig:
    return s.section(ModelConfig, MODEL_SECTION)


def _sid_tokens(s: Settings) -> int:
    """Tokens of one SID: the tokenizer's levels + the disambiguation code."""
    return sid_length(s.section(TokenizerConfig, TOKENIZER_SECTION).num_levels)


CHECKS: tuple[Check, ...] = (
    Check(
        f"[{DATA_SECTION}].max_prompt_len + SID tokens ([{TOKENIZER_SECTION}].num_levels + 1)",
        "<=",
        f"[{DATA_SECTION}].seq_len + 1",
        lambda s: (_data(s).max_prompt_len + _sid_tokens(s), _data(s).seq_len + 1),
        "a prompt of max_prompt_len tokens would lose its target",
    ),
    Check(
        f"[{DATA_SECTION}].seq_len",
        "<=",
        f"[{MODEL_SECTION}].max_len",
        lambda s: (_data(s).seq_len, _model(s).max_len),
        "the model cannot take longer SFT sequences",
    ),
    Check(
        f"[{CPT_SECTION}].seq_len",
        "<=",
        f"[{MODEL_SECTION}].max_len",
        lambda s: (s.section(CptConfig, CPT_SECTION).seq_len, _model(s).max_len),
        "the model cannot take longer CPT sequences",
    ),
    same(
        (TrainerConfig, TRAINER_SECTION, "topic_prefix"),
        (FlinkConfig, "flink", "topic_prefix"),
        "the trainer reads the SFT examples the Flink job writes",
    ),
    same(
        (TrainerConfig, TRAINER_SECTION, "index_path"),
        (SidServiceConfig, "sid_service", "index_path"),
        "the trainer reads the SID index the SID service writes",
    ),
)


def check_trainer_settings(
    path: Path | str | None, env: Mapping[str, str] | None = None
) -> Settings:
    """The config at `path` with the trainer's checks run: ConfigError (one line) if not."""
    return Settings.load(path, env).check(CHECKS)
