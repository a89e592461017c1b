"""What every benchmark shares: the result file's layout and the trainer-quality settings."""

from __future__ import annotations

import argparse
import json

import pytest

from bench.common import bench_config, setting, write_result
from bench.trainer_quality import QualityConfig, load_quality_config
from plum.config import ConfigError


def test_result_file_has_the_bench_layout(tmp_path):
    path = write_result(
        "toy", {"cpt_steps": 4}, {"m": 1}, {"b": 0.5}, {"r": 2.0}, notes="n", out_dir=tmp_path
    )
    written = json.loads(path.read_text())
    assert path == tmp_path / "toy.json" and written["name"] == "toy"
    assert {"machine", "config", "metrics", "baseline", "ratio", "notes"} <= set(written)
    assert {"cpus", "memory_gb", "accelerator"} <= set(written["machine"])
    assert written["config"]["cpt_steps"] == 4 and written["ratio"] == {"r": 2.0}


def test_quality_settings_come_from_their_section_env_and_overrides(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("[bench_trainer_quality]\nevents = 1200\ncpt_steps = 4\n")
    env = {"PLUM_BENCH_TRAINER_QUALITY__CPT_STEPS": "5"}
    cfg = load_quality_config(toml, env=env, sft_passes=3)
    assert (cfg.events, cfg.cpt_steps, cfg.sft_passes) == (1200, 5, 3)
    assert cfg.holdout == QualityConfig().holdout
    assert cfg.seq_len == cfg.max_prompt_len + cfg.num_levels + 1


def test_bad_eval_target_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="eval_on"):
        QualityConfig(eval_on="test")
    toml = tmp_path / "c.toml"
    toml.write_text("[bench_trainer_quality]\nevnts = 1\n")
    with pytest.raises(ConfigError, match="evnts"):
        load_quality_config(toml, env={})


def test_set_flags_are_toml_values_and_bad_ones_end_the_command(tmp_path, capsys):
    assert setting("cpt_steps=4") == ("cpt_steps", 4)
    assert setting("eval-on=fresh") == ("eval_on", "fresh")  # a bare word is a string
    with pytest.raises(argparse.ArgumentTypeError, match="FIELD=VALUE"):
        setting("cpt_steps")
    toml = tmp_path / "c.toml"
    toml.write_text("[bench_trainer_quality]\nevents = 1200\n")
    parser = argparse.ArgumentParser(prog="bench")
    cfg = bench_config(parser, QualityConfig, "bench_trainer_quality", toml, {"cpt_steps": 4})
    assert (cfg.events, cfg.cpt_steps) == (1200, 4)
    with pytest.raises(SystemExit):
        bench_config(parser, QualityConfig, "bench_trainer_quality", toml, {"cpt_stepz": 4})
    assert "unknown fields ['cpt_stepz']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_config(parser, QualityConfig, "bench_trainer_quality", toml, {"eval_on": "test"})
    assert "eval_on" in capsys.readouterr().err
