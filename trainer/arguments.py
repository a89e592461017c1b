"""What every `plum trainer` command shares: its common flags, the [trainer] config they
override, and where the SID index and the checkpoints live when the config says nothing.

    common_arguments(parser)        --config, --bootstrap, --topic-prefix, --index
    trainer_config(args, **more)    [trainer] of --config with the command line over it
    state_paths(cfg)                (SID index, CPT dir, run dir) with STATE defaults

Imported by trainer/cli.py (cpt, run) and trainer/eval_cli.py (eval), so neither has to
import the other.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from plum.config import state_dir


def common_arguments(parser: argparse.ArgumentParser) -> None:
    """--config, --bootstrap, --topic-prefix, --index: every trainer command has them."""
    parser.add_argument("--config", help="TOML config (default configs/demo.toml)")
    parser.add_argument("--bootstrap")
    parser.add_argument("--topic-prefix")
    parser.add_argument("--index", help="SID index SQLite (default STATE/tokenizer/...)")


def trainer_config(args: argparse.Namespace, **overrides: Any):
    """[trainer] of --config, with the command line's values over it (None = not given);
    the config is refused first if its sections contradict each other (config_checks)."""
    from trainer.config_checks import check_trainer_settings
    from trainer.loop import load_trainer_config

    check_trainer_settings(args.config)
    return load_trainer_config(
        args.config,
        bootstrap=args.bootstrap,
        topic_prefix=args.topic_prefix,
        index_path=args.index,
        **overrides,
    )


def state_paths(cfg) -> tuple[Path, Path, Path]:
    """(SID index, CPT checkpoint dir, run dir): the config's paths, else under STATE."""
    base = state_dir()
    index = Path(cfg.index_path) if cfg.index_path else base / "tokenizer" / "sid-index.sqlite"
    cpt = Path(cfg.cpt_dir) if cfg.cpt_dir else base / "trainer" / "cpt"
    run = Path(cfg.run_dir) if cfg.run_dir else base / "trainer" / "run"
    return index, cpt, run
