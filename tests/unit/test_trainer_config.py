"""Trainer configs: presets are valid, the TOML sections match them, bad sizes are rejected."""

import dataclasses

import pytest

from plum.config import REPO_ROOT, ConfigError
from trainer.config import (
    PAPER,
    PRESETS,
    SMALL,
    TINY,
    ModelConfig,
    VocabConfig,
    load_model_config,
    load_vocab_config,
    model_preset,
)

CONFIGS = REPO_ROOT / "configs"


@pytest.mark.parametrize(
    "file,preset", [("test.toml", TINY), ("demo.toml", SMALL), ("paper.toml", PAPER)]
)
def test_toml_trainer_model_section_is_the_named_preset(file, preset):
    assert load_model_config(CONFIGS / file, env={}) == preset


@pytest.mark.parametrize(
    ("file", "text_vocab_size", "disambiguation_size"),
    [("test.toml", 512, 256), ("demo.toml", 4096, 256), ("paper.toml", 32000, 64)],
)
def test_toml_trainer_vocab_section_loads_with_the_sid_range(
    file, text_vocab_size, disambiguation_size
):
    cfg = load_vocab_config(CONFIGS / file, env={})
    assert cfg == VocabConfig(text_vocab_size, 2, disambiguation_size)  # the range from [sid]


def test_tiny_preset_uses_grouped_query_attention():
    assert TINY.n_kv_heads < TINY.n_heads and TINY.head_dim * TINY.n_heads == TINY.d_model
    assert model_preset("tiny") is TINY and set(PRESETS) == {"tiny", "small", "paper"}


def test_vocab_size_is_filled_at_build_time():
    assert TINY.vocab_size == 0
    assert TINY.with_vocab(123).vocab_size == 123
    with pytest.raises(ValueError):
        TINY.with_vocab(0)


def test_environment_overrides_model_config():
    cfg = load_model_config(CONFIGS / "test.toml", env={"PLUM_TRAINER_MODEL__NUM_EXPERTS": "4"})
    assert cfg.num_experts == 4 and cfg.is_moe


@pytest.mark.parametrize(
    "change,match",
    [
        ({"n_kv_heads": 3}, "n_heads=4 is not divisible by n_kv_heads=3"),
        ({"d_model": 66}, "not divisible by n_heads"),
        ({"num_experts": 2, "moe_top_k": 3}, "moe_top_k=3"),
        ({"dtype": "float64"}, "dtype"),
    ],
)
def test_inconsistent_sizes_are_rejected_with_the_value(change, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(TINY, **change)


def test_bad_toml_value_is_a_config_error(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[trainer_model]\nn_heads = 4\nn_kv_heads = 3\n")
    with pytest.raises(ConfigError, match="trainer_model"):
        load_model_config(path, env={})


def test_round_trip_through_dict():
    assert ModelConfig.from_dict(PAPER.to_dict()) == PAPER
