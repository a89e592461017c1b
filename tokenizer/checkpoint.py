"""Tokenizer checkpoints: what the SID service loads, in the store every component uses.

    DIR/checkpoints/<step>/state   params, codebooks, input statistics (plum.checkpoints)
    DIR/checkpoints/<step>/meta    JSON: layout, config, modalities, step, sid_version,
                                   level sizes, training history

`save_tokenizer(tok, dir)` writes one step; `load_tokenizer(dir)` restores the newest (or
a given) step and checks that the restored content hashes to the stored sid_version.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from plum.checkpoints import CHECKPOINTS, CheckpointStore, has_checkpoint
from tokenizer.config import TokenizerConfig
from tokenizer.frozen import TrainedTokenizer

log = logging.getLogger(__name__)

LAYOUT_VERSION = 2  # 1: DIR/<step>/ (before the shared store); 2: DIR/checkpoints/<step>/


class CheckpointError(RuntimeError):
    """A tokenizer checkpoint that is missing, incomplete or does not match its version."""


def save_tokenizer(tok: TrainedTokenizer, directory: Path | str) -> Path:
    """Write `tok` as step `tok.step` under `directory`; returns the step's folder."""
    meta = {
        "layout": LAYOUT_VERSION,
        "sid_version": tok.sid_version,
        "step": tok.step,
        "config": tok.config.to_dict(),
        "modalities": [[n, d] for n, d in tok.modalities],
        "level_sizes": list(tok.level_sizes),
        "history": list(tok.history),
    }
    store = CheckpointStore(directory, max_to_keep=None, async_save=False)
    try:
        store.save(tok.step, _to_numpy(tok.state_tree()), meta)
    finally:
        store.close()
    path = Path(directory).resolve() / CHECKPOINTS / str(tok.step)
    log.info("saved tokenizer %s (step %d) to %s", tok.sid_version, tok.step, path)
    return path


def load_tokenizer(directory: Path | str, step: int | None = None) -> TrainedTokenizer:
    """Restore the tokenizer saved under `directory` (newest step unless `step` is given)."""
    directory = Path(directory).resolve()
    if not directory.is_dir():
        raise CheckpointError(f"no tokenizer checkpoint directory at {directory}")
    if not has_checkpoint(directory):
        old = (
            " (it has steps in the old DIR/<step>/ layout: retrain)"
            if any(directory.glob("*/meta"))
            else ""
        )
        raise CheckpointError(f"{directory} holds no tokenizer checkpoint{old}")
    store = CheckpointStore(directory, async_save=False)
    try:
        step = store.latest_step() if step is None else step
        state, meta = store.restore_untyped(step)
    finally:
        store.close()
    if meta.get("layout") != LAYOUT_VERSION:
        raise CheckpointError(
            f"{directory}/{step}: layout {meta.get('layout')!r}, expected {LAYOUT_VERSION}"
        )
    levels = len(meta["level_sizes"])
    tok = TrainedTokenizer(
        config=TokenizerConfig.from_dict(meta["config"]),
        modalities=tuple((n, int(d)) for n, d in meta["modalities"]),
        params=state["params"],
        codebooks=tuple(state["codebooks"][f"level_{i}"] for i in range(levels)),
        stats=state["stats"],
        step=int(meta["step"]),
        history=tuple(meta.get("history", ())),
    )
    if tok.sid_version != meta["sid_version"]:
        raise CheckpointError(
            f"{directory}/{step}: content hashes to {tok.sid_version}, "
            f"but the checkpoint says {meta['sid_version']}"
        )
    return tok


def _to_numpy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)
