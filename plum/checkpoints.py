"""The checkpoint store (orbax) every component saves through: arrays plus the JSON
that says what they are and where the component stood.

    DIR/checkpoints/<step>/state   a pytree of arrays (StandardSave): the trainer's
                                   TrainState or CPT {"params"}, the tokenizer's
                                   params, codebooks and input statistics
    DIR/checkpoints/<step>/meta    JSON (JsonSave): configs, versions and positions, e.g.
                                   the trainer's Kafka offsets per partition and counters,
                                   the tokenizer's sid_version and training history
    DIR/vocab/                     beside the steps, for a component whose arrays index a
                                   token vocabulary (the trainer, trainer/vocab.py)

Saves can be asynchronous (the step loop goes on while orbax writes) and are atomic:
orbax writes into a temporary directory and renames it when complete, so a process
killed mid-save leaves the previous checkpoint as the latest. A checkpoint that still
fails to restore (disk damage) is skipped with an error in the log and the one before it
is used (`restore_latest`).

A save that fails (disk full, directory unwritable) raises `CheckpointSaveError` — from
`save` itself, or, for an asynchronous save, from the next `save` or `wait` — and leaves
the checkpoints saved before it untouched: the store keeps `max_to_keep` itself, deleting
an old step only once a newer one is confirmed on disk (orbax's own max_to_keep would
count a save that never finalized and delete good steps for it). The caller decides
whether to go on; a later save, once the disk takes writes again, succeeds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import orbax.checkpoint

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
VOCAB = "vocab"


class NoCheckpointError(FileNotFoundError):
    """No restorable checkpoint in the directory."""


class CheckpointSaveError(OSError):
    """A checkpoint step could not be written; the steps saved before it are intact."""

    def __init__(self, step: int, cause: BaseException | str):
        super().__init__(f"checkpoint step {step} was not saved: {cause}")
        self.step = step


def has_checkpoint(directory: Path | str) -> bool:
    """Whether `directory` holds at least one saved step (without opening a manager)."""
    return any((Path(directory) / CHECKPOINTS).glob("*/meta"))


class CheckpointStore:
    """Orbax CheckpointManager over DIR/checkpoints with a Composite(state, meta) item."""

    def __init__(self, directory: Path | str, max_to_keep: int | None = 3, async_save: bool = True):
        """`max_to_keep` None keeps every step."""
        import orbax.checkpoint as ocp  # here: has_checkpoint stays free of jax and orbax

        self._ocp = ocp
        self.directory = Path(directory)
        self.max_to_keep = max_to_keep
        self._async = async_save
        self._pending: int | None = None  # an async save not confirmed on disk yet
        self._manager: orbax.checkpoint.CheckpointManager = self._open()

    def _open(self) -> orbax.checkpoint.CheckpointManager:
        ocp = self._ocp
        return ocp.CheckpointManager(
            (self.directory / CHECKPOINTS).absolute(),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=None,  # kept by `_prune`, counting only confirmed steps
                create=True,
                enable_async_checkpointing=self._async,
            ),
        )

    @property
    def vocab_dir(self) -> Path:
        return self.directory / VOCAB

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Start saving `step` (returns before the write finishes when async).

        Raises CheckpointSaveError when this save failed to start or, when async, when the
        previous one turned out not to be on disk (this one is started all the same)."""
        previous = self._settle()
        args = self._ocp.args
        try:
            self._manager.save(
                step,
                args=args.Composite(state=args.StandardSave(state), meta=args.JsonSave(meta)),
                force=True,
            )
        except Exception as err:  # noqa: BLE001 - any write failure: report, keep the old
            self._reopen()
            raise CheckpointSaveError(step, err) from err
        self._pending = step
        if not self._async:
            failed = self._settle()
            if failed is not None:
                raise failed
        if previous is not None:
            raise previous

    def _settle(self) -> CheckpointSaveError | None:
        """Wait for the pending save; the error when it is not on disk, else prune."""
        step, self._pending = self._pending, None
        if step is None:
            return None
        try:
            self._manager.wait_until_finished()
            self._manager.check_for_errors()
            failure: BaseException | str | None = None
        except Exception as err:  # noqa: BLE001 - any write failure of the async save
            failure = err
        if failure is None:
            self._manager.reload()  # the steps on disk
            if step not in self._manager.all_steps():
                failure = "it was not finalized (see the log above)"
        if failure is not None:
            self._reopen()
            return CheckpointSaveError(step, failure)
        self._prune()
        return None

    def _reopen(self) -> None:
        """A new manager after a failed save: orbax's keeps re-raising a failed save's error
        (from every later wait, save or restore) and counts the unfinished step as saved.
        The new one lists the steps on disk: a save that never finalized is not one."""
        try:
            self._manager.close()
        except Exception as err:  # noqa: BLE001 - the old manager's error, already reported
            log.debug("closing the failed checkpoint manager: %s", err)
        self._manager = self._open()

    def _prune(self) -> None:
        if self.max_to_keep is None:
            return
        for step in self.steps()[: -self.max_to_keep]:
            try:
                self._manager.delete(step)
            except Exception as err:  # noqa: BLE001 - an extra old step is harmless
                log.warning("old checkpoint %s/%d not deleted: %s", self.directory, step, err)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """The state (laid out like `abstract_state`: shapes, dtypes, shardings) and meta."""
        args = self._ocp.args
        restored = self._manager.restore(
            step,
            args=args.Composite(
                state=args.StandardRestore(abstract_state), meta=args.JsonRestore()
            ),
        )
        return restored["state"], dict(restored["meta"])

    def restore_untyped(self, step: int) -> tuple[Any, dict[str, Any]]:
        """State as plain nested dicts of arrays (no target needed), and meta.

        A checkpoint saved by several processes (a multi-process trainer) names devices
        this process does not have; it is read onto this process's first device instead
        (the layout is then the caller's to choose, as with any untyped restore)."""
        args = self._ocp.args
        try:
            restored = self._manager.restore(
                step, args=args.Composite(state=args.StandardRestore(), meta=args.JsonRestore())
            )
        except ValueError as err:  # orbax: "Topology mismatch detected ..."
            if "topology" not in str(err).lower():
                raise
            restored = self._manager.restore(
                step,
                args=args.Composite(
                    state=args.StandardRestore(self._on_one_device(step)),
                    meta=args.JsonRestore(),
                ),
            )
        return restored["state"], dict(restored["meta"])

    def _on_one_device(self, step: int) -> Any:
        """The saved state's shapes and dtypes, every leaf on this process's first device."""
        import jax

        path = self.directory.absolute() / CHECKPOINTS / str(step) / "state"
        saved = self._ocp.StandardCheckpointHandler().metadata(path)
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
            getattr(saved, "tree", saved),
        )

    def restore_meta(self, step: int) -> dict[str, Any]:
        args = self._ocp.args
        restored = self._manager.restore(step, args=args.Composite(meta=args.JsonRestore()))
        return dict(restored["meta"])

    def restore_latest(
        self, abstract_state: Any | Callable[[dict[str, Any]], Any]
    ) -> tuple[int, Any, dict[str, Any]]:
        """Newest checkpoint that restores; older ones are tried when the newest is damaged.

        `abstract_state` may be a function of the checkpoint's meta (e.g. the model
        config stored in it decides the shapes).
        """
        for step in reversed(self.steps()):
            try:
                target = abstract_state
                if callable(abstract_state):
                    target = abstract_state(self.restore_meta(step))
                state, meta = self.restore(step, target)
            except Exception as err:  # noqa: BLE001 - any damage: log and fall back
                log.error(
                    "checkpoint %s/%d does not restore (%s); trying an older one",
                    self.directory,
                    step,
                    err,
                )
                continue
            return step, state, meta
        raise NoCheckpointError(f"no restorable checkpoint under {self.directory / CHECKPOINTS}")

    def wait(self) -> None:
        """Block until every pending save is on disk; CheckpointSaveError if it failed."""
        failed = self._settle()
        if failed is not None:
            raise failed

    def close(self) -> None:
        try:
            failed = self._settle()
            if failed is not None:
                log.error("%s", failed)
        finally:
            self._manager.close()
