"""Trainer checkpoint -> serving artifact.

The trainer's run directory (plum/checkpoints.py, trainer/loop.py) holds, per step, the
TrainState {"step", "params", "opt_state"} and a meta JSON that says what it is:
"sid_version", "model_config", "data_config"{"max_prompt_len", "prompt_layout"}, "counters"
{"newest_event_ts"}, "position"{"fresh_offsets"}. `read_checkpoint` turns one step into
a `TrainerCheckpoint` with those answers; `export` writes its inference parameters
(never the optimizer state), the run's vocabulary and the SID index snapshot into the
next version of the model repository (serving/artifact.py), with the gate's metrics in
the manifest and where it came from in `source`.

`find_exported` makes the export idempotent across a crash: a publisher killed after the
version was written but before the ledger recorded it finds that version again instead
of writing the same step twice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from plum.checkpoints import VOCAB, CheckpointStore, has_checkpoint
from serving.artifact import ArtifactError, IndexSnapshot, Manifest, ModelRepository
from trainer.config import ModelConfig
from trainer.prompt import saved_prompt_layout
from trainer.step import evaluated_params_of_saved

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint whose meta lacks what publishing needs (not the trainer's SFT kind)."""


@dataclass(frozen=True)
class TrainerCheckpoint:
    """One trainer step, as the gate and the export need it."""

    run_dir: Path
    step: int
    params: Any  # nested dict of numpy arrays (no optimizer state)
    meta: Mapping[str, Any]

    @property
    def sid_version(self) -> str | None:
        return self.meta.get("sid_version")

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.meta["model_config"])

    @property
    def max_prompt_len(self) -> int:
        return int(self.meta["data_config"]["max_prompt_len"])

    @property
    def prompt_layout(self) -> str:
        """The layout its prompts were written in (a run from before the setting: "target")."""
        return saved_prompt_layout(self.meta)

    @property
    def newest_event_ts_ms(self) -> int:
        return int(self.meta.get("counters", {}).get("newest_event_ts", 0))

    @property
    def fresh_offsets(self) -> dict[int, int]:
        """partition -> the first SFT-examples offset this checkpoint has not trained on."""
        position = self.meta.get("position") or {}
        return {int(p): int(o) for p, o in position.get("fresh_offsets", {}).items()}

    @property
    def loss(self) -> float | None:
        """The training loss recorded with the checkpoint, when the trainer records one."""
        loss = self.meta.get("loss")
        return None if loss is None else float(loss)

    @property
    def vocab_dir(self) -> Path:
        return self.run_dir / VOCAB

    def source(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "step": self.step}


def checkpoint_steps(run_dir: Path) -> list[int]:
    """The run's saved steps, oldest first ([] when it has none yet). Opened afresh each
    call: orbax caches the step list when a manager opens, and the trainer keeps adding."""
    if not has_checkpoint(run_dir):
        return []
    store = CheckpointStore(run_dir, max_to_keep=None, async_save=False)
    try:
        return store.steps()
    finally:
        store.close()


def read_checkpoint(run_dir: Path, step: int) -> TrainerCheckpoint:
    """Restore `step` (params and meta; the optimizer state is read and dropped, but for
    the parameters' moving average, which is then what is evaluated and served)."""
    store = CheckpointStore(run_dir, max_to_keep=None, async_save=False)
    try:
        state, meta = store.restore_untyped(step)
    finally:
        store.close()
    missing = [k for k in ("model_config", "data_config") if k not in meta]
    if missing or not isinstance(state, Mapping) or "params" not in state:
        raise CheckpointError(
            f"{run_dir} step {step} is not a trainer SFT checkpoint (meta lacks {missing} "
            f"or the state has no params)"
        )
    # the parameters' moving average when the trainer keeps one ([trainer] ema_decay)
    params = evaluated_params_of_saved(state)
    return TrainerCheckpoint(Path(run_dir), int(step), _to_numpy(params), dict(meta))


def _to_numpy(tree: Any) -> Any:
    """Host numpy arrays, like the served artifact's: orbax restores committed device
    arrays, and jit would compile the gate's search once more for those than for the
    served model's numpy parameters."""
    if isinstance(tree, Mapping):
        return {k: _to_numpy(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_to_numpy(v) for v in tree)
    return np.asarray(tree)


def find_exported(repo: ModelRepository, checkpoint: TrainerCheckpoint) -> Manifest | None:
    """The repository's version already exported from this run's step, if any."""
    wanted = checkpoint.source()
    for version in reversed(repo.versions()):
        try:
            manifest = repo.manifest(version)
        except ArtifactError:
            continue
        if manifest.source == wanted:
            return manifest
    return None


def export(
    repo: ModelRepository,
    checkpoint: TrainerCheckpoint,
    snapshot: IndexSnapshot,
    *,
    dtype: str,
    gate: Mapping[str, Any],
) -> Manifest:
    """Write `checkpoint` as the next version (or return the version it already is)."""
    if snapshot.sid_version != checkpoint.sid_version:
        raise ValueError(
            f"snapshot of {snapshot.sid_version!r} for a checkpoint trained on "
            f"{checkpoint.sid_version!r}"
        )
    existing = find_exported(repo, checkpoint)
    if existing is not None:
        log.info("step %d is already version %d", checkpoint.step, existing.version)
        return existing
    return repo.write(
        checkpoint.params,
        checkpoint.vocab_dir,
        snapshot,
        step=checkpoint.step,
        model_config=checkpoint.model_config.to_dict(),
        max_prompt_len=checkpoint.max_prompt_len,
        prompt_layout=checkpoint.prompt_layout,
        newest_event_ts_ms=checkpoint.newest_event_ts_ms,
        dtype=dtype,
        gate=gate,
        source=checkpoint.source(),
    )
