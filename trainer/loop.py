"""Continuous SFT: start from the CPT checkpoint, train on fresh + historical examples forever.

    plum trainer run --cpt state/cpt --run-dir state/trainer

`ContinuousTrainer` is a `plum.runtime.Component`; the runtime (`trainer_runtime`) owns
the loop, SIGTERM (finish the step, checkpoint, exit 0), idle-exit, /metrics and the
progress line. The component, top to bottom:

    start:      state, position = the newest checkpoint, or the CPT params + a fresh optimizer
                archive.truncate_after(step)          # examples after it will be re-consumed
                data = TrainingData(start=position)   # Kafka seeks to the saved offsets
    step:       batch = data.next_batch()             # fresh_fraction from Kafka, rest history
                state = train_step(state, batch)      # constant LR, weighted by reward
                archive.append(batch.fresh_records)
                every N steps / M seconds: checkpoint
    checkpoint: archive.flush(step); checkpoints.save(step, state, position of this batch)
                (disk full / unwritable: counted and logged, training goes on, the last
                good checkpoint stays the newest, the next due checkpoint tries again)

The position saved is that of the last TRAINED batch (not of what the input thread has
read ahead), and the archive is flushed before the checkpoint that covers it, so a
restart (kill -9 included) trains every example exactly once in the checkpointed
lineage: what came after the checkpoint is re-read from Kafka and re-archived.
Counters in the checkpoint (fresh records, an order-free digest of their event ids)
make that checkable from outside.

Several processes (`--num-processes N`, jax.distributed): one data-parallel mesh over
every process's devices, parameters replicated (or FSDP-sharded). Process i reads the
partitions p % N == i of the topic and builds batch_size / N rows of each global batch;
the processes step in lockstep (trainer/lockstep.py: a step waits, at most
lockstep_wait_s, for every process's rows; a late process contributes padding rows) and
save ONE checkpoint: orbax writes the arrays from every process, process 0 the meta,
which holds the union of the processes' offsets (their partitions do not overlap) and
each process's counters and history cursor. Each process archives into its own
`archive/process-<i>/`.

The machinery lives beside the loop: trainer/data.py (input), trainer/step.py (the
jitted step), trainer/sharding.py (mesh), trainer/lockstep.py (processes in step),
trainer/observe.py (gauges, consumer lag, progress text), plum/checkpoints.py (orbax).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from monitoring.metrics import Metrics
from plum.checkpoints import CheckpointSaveError, CheckpointStore
from plum.config import DEFAULT_KAFKA_BOOTSTRAP, load_section
from plum.runtime import Runtime, RuntimeConfig, Step
from streams.kafka.source import TopicEnds
from trainer.archive import HistoryArchive
from trainer.config import ModelConfig
from trainer.data import DataConfig, DataPosition, MixedBatch, TrainingData
from trainer.lockstep import Lockstep, agree_on_end, allgather_json, barrier
from trainer.model import init_params
from trainer.observe import TrainerObserver
from trainer.prompt import Batch, SidLookup, TrainingSequence, collate, saved_prompt_layout
from trainer.sharding import (
    batch_sharding,
    local_rows,
    make_mesh,
    mesh_size,
    place,
    state_shardings,
)
from trainer.step import OptimizerConfig, Stepper, TrainState, init_state, make_optimizer
from trainer.vocab import Vocab

log = logging.getLogger(__name__)

SECTION = "trainer"
DIGEST_MOD = 2**64


@dataclass(frozen=True)
class TrainerConfig:
    """[trainer]: the continuous SFT loop (data mixing is [trainer_data])."""

    bootstrap: str = DEFAULT_KAFKA_BOOTSTRAP  # filled from [kafka] by the loader
    topic_prefix: str = ""  # tests and side-by-side runs prefix every topic name
    index_path: str = ""  # SID index (SQLite); "" = STATE/tokenizer/sid-index.sqlite
    cpt_dir: str = ""  # the CPT checkpoint to start from; "" = STATE/trainer/cpt
    run_dir: str = ""  # checkpoints, vocab, archive; "" = STATE/trainer/run
    learning_rate: float = 1e-4  # constant after warm-up (paper: continuous training)
    warmup_steps: int = 50
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.95
    grad_clip: float = 1.0
    # Polyak averaging (trainer/step.py OptimizerConfig.ema_decay; 0 = off): the checkpoint
    # keeps the parameters' moving average, which the gate evaluates and serving serves.
    # A run directory keeps it on or off for good: switching needs a new run_dir.
    ema_decay: float = 0.0
    seed: int = 0
    checkpoint_every_steps: int = 200
    checkpoint_every_s: float = 300.0
    max_to_keep: int = 3
    async_checkpoints: bool = True
    mesh_data: int = 0  # 0 = all devices not used by fsdp
    mesh_fsdp: int = 1  # parameter shards (FSDP); 1 = replicated parameters
    log_every_s: float = 10.0
    metrics_port: int = -1  # -1 = no /metrics server; 0 = a free port (the runtime logs which)
    # 0 = never stop (the production setting). > 0: exit after the Kafka topic has been
    # quiet this long, for backfills and tests.
    idle_exit_s: float = 0.0
    max_steps: int = 0  # 0 = unlimited
    # --- several processes (jax.distributed); num_processes 1 = this process alone
    coordinator: str = ""  # HOST:PORT of the coordination service (process 0 serves it)
    num_processes: int = 1
    process_id: int = 0
    lockstep_wait_s: float = 5.0  # a process holding its rows waits this long for the rest

    def __post_init__(self) -> None:
        if self.checkpoint_every_steps < 1:
            raise ValueError(f"checkpoint_every_steps={self.checkpoint_every_steps} must be >= 1")
        if self.idle_exit_s < 0 or self.max_steps < 0:
            raise ValueError("idle_exit_s and max_steps must be >= 0")
        if self.metrics_port < -1:
            raise ValueError(f"metrics_port={self.metrics_port} must be >= -1 (-1 = none)")
        if self.num_processes < 1 or not 0 <= self.process_id < self.num_processes:
            raise ValueError(
                f"process_id={self.process_id} of num_processes={self.num_processes}: "
                "need num_processes >= 1 and 0 <= process_id < num_processes"
            )
        if self.num_processes > 1 and not self.coordinator:
            raise ValueError(f"num_processes={self.num_processes} needs a coordinator HOST:PORT")
        if self.lockstep_wait_s < 0:
            raise ValueError(f"lockstep_wait_s={self.lockstep_wait_s} must be >= 0")
        self.optimizer()  # validates the optimizer fields

    def optimizer(self) -> OptimizerConfig:
        return OptimizerConfig(
            self.learning_rate,
            self.warmup_steps,
            self.weight_decay,
            self.b1,
            self.b2,
            self.grad_clip,
            self.ema_decay,
        )


def load_trainer_config(path: Path | str | None, env=None, **overrides: Any) -> TrainerConfig:
    return load_section(TrainerConfig, path, SECTION, env=env, **overrides)


def event_digest(event_ids: Iterable[str]) -> int:
    """Order-free digest of a multiset of event ids: sum of 64-bit hashes mod 2^64.

    A sum (not xor) so an id counted twice changes the digest."""
    total = 0
    for eid in event_ids:
        h = hashlib.blake2b(eid.encode(), digest_size=8).digest()
        total = (total + int.from_bytes(h, "big")) % DIGEST_MOD
    return total


@dataclass
class Counters:
    """Cumulative over the checkpointed lineage (saved in every checkpoint)."""

    fresh_records: int = 0  # fresh records consumed (trained + skipped)
    fresh_digest: int = 0  # event_digest of those records, mod 2^64
    fresh_trained: int = 0
    history_trained: int = 0
    skipped_unknown: int = 0
    malformed: int = 0
    tokens: int = 0  # target tokens trained on (the loss covers these)
    input_tokens: int = 0  # real (non-padding) tokens the model processed
    newest_event_ts: int = 0

    def add(self, mb: MixedBatch, tokens: int) -> None:
        ids = [r.event_id for r in mb.fresh_records]
        self.fresh_records += len(mb.fresh_records)
        self.fresh_digest = (self.fresh_digest + event_digest(ids)) % DIGEST_MOD
        self.fresh_trained += mb.n_fresh
        self.history_trained += mb.n_history
        self.skipped_unknown += mb.n_skipped_unknown
        self.malformed += mb.n_malformed
        self.tokens += tokens
        self.input_tokens += int(mb.batch.mask.sum()) if mb.n_rows else 0
        if mb.newest_fresh_ts is not None:
            self.newest_event_ts = max(self.newest_event_ts, mb.newest_fresh_ts)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["fresh_digest"] = str(self.fresh_digest)  # JSON numbers lose 64-bit precision
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Counters:
        d = dict(d)
        d["fresh_digest"] = int(d["fresh_digest"])
        return cls(**d)

    @classmethod
    def total(cls, parts: Iterable[Counters]) -> Counters:
        """The counters of several processes as one run's."""
        out = cls()
        for c in parts:
            for f in dataclasses.fields(cls):
                if f.name != "newest_event_ts":
                    setattr(out, f.name, getattr(out, f.name) + getattr(c, f.name))
            out.newest_event_ts = max(out.newest_event_ts, c.newest_event_ts)
        out.fresh_digest %= DIGEST_MOD
        return out


def merged_position(parts: Iterable[DataPosition], archive_step: int) -> DataPosition:
    """One position for processes that read disjoint partitions: the union of their
    offsets; history draws summed (each process's own cursor is kept beside it)."""
    offsets: dict[int, int] = {}
    draws = 0
    for p in parts:
        offsets.update(p.fresh_offsets)
        draws += p.history_draws
    return DataPosition(dict(sorted(offsets.items())), draws, archive_step)


@dataclass(frozen=True)
class RunPaths:
    run_dir: Path  # checkpoints/, vocab/, archive/
    cpt_dir: Path  # the CPT checkpoint to start from when run_dir has none

    @property
    def archive(self) -> Path:
        return self.run_dir / "archive"


def _abstract(build: Callable[[], Any], shardings_fn) -> Any:
    """Shapes, dtypes and shardings of what `build` would return, without computing it."""
    shapes = jax.eval_shape(build)
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        shapes,
        shardings_fn(shapes),
    )


def _model_config(meta: dict[str, Any]) -> ModelConfig:
    return ModelConfig.from_dict(meta["model_config"])


class AveragingMismatchError(ValueError):
    """A run directory's checkpoints keep a parameter average and the config does not, or
    the other way round: their optimizer states have different layouts."""


def check_averaging(meta: dict[str, Any], cfg: TrainerConfig, run_dir: Path) -> None:
    """Refuse to resume a run whose checkpoints were written with averaging switched the
    other way (AveragingMismatchError naming the fix), instead of failing every restore."""
    saved = float((meta.get("trainer_config") or {}).get("ema_decay", 0.0))
    if bool(saved) != bool(cfg.ema_decay):
        raise AveragingMismatchError(
            f"the checkpoints in {run_dir} were written with [trainer] ema_decay = {saved} and "
            f"this trainer has {cfg.ema_decay}: averaging cannot be switched on or off in a "
            "run; set ema_decay back, or start a new run_dir (from the CPT checkpoint)"
        )


class PromptLayoutMismatchError(ValueError):
    """A run directory's checkpoints were trained in another prompt layout than the
    config's: resuming would switch what every prompt looks like in the middle of a run."""


def check_prompt_layout(meta: dict[str, Any], data_cfg: DataConfig, run_dir: Path) -> None:
    """Refuse to resume a run trained in another [trainer_data] prompt_layout
    (PromptLayoutMismatchError naming the fix); a run written before the setting existed
    was trained in "target"."""
    saved = saved_prompt_layout(meta)
    if saved != data_cfg.prompt_layout:
        raise PromptLayoutMismatchError(
            f"the checkpoints in {run_dir} were trained with [trainer_data] prompt_layout = "
            f"{saved!r} and this trainer has {data_cfg.prompt_layout!r}: a run keeps its "
            "layout; set it back, or start a new run_dir (from the CPT checkpoint)"
        )


class MissingInputError(FileNotFoundError):
    """Nothing to start from: no CPT checkpoint (and no run checkpoint), or no SID index."""


class ContinuousTrainer:
    """Owns the model state, the data pipeline and the checkpoints of one training run.

    A `plum.runtime.Component`: `trainer_runtime(trainer).run()` runs it."""

    def __init__(
        self,
        cfg: TrainerConfig,
        data_cfg: DataConfig,
        paths: RunPaths,
        bootstrap: str,
        topic: str,
        lookup_source: Callable[[], SidLookup],
        devices: list | None = None,
    ) -> None:
        self.cfg, self.data_cfg, self.paths = cfg, data_cfg, paths
        self.mesh = make_mesh(cfg.mesh_data, cfg.mesh_fsdp, devices)
        if data_cfg.batch_size % mesh_size(self.mesh):
            raise ValueError(
                f"batch_size={data_cfg.batch_size} must divide by the {mesh_size(self.mesh)} "
                "devices of the mesh"
            )
        # several processes: each builds its share of every batch, all step together
        self.process, self.processes = jax.process_index(), jax.process_count()
        self.lockstep = Lockstep(cfg.lockstep_wait_s) if self.processes > 1 else None
        self._local_data_cfg = dataclasses.replace(
            data_cfg, batch_size=local_rows(data_cfg.batch_size)
        )
        self.archive_dir = paths.archive
        if self.processes > 1:
            self.archive_dir = paths.archive / f"process-{self.process}"
        self._held: MixedBatch | None = None  # lockstep: a batch waiting for the others'
        self._held_at = 0.0
        self._padding: Batch | None = None  # lockstep: rows of a process without a batch
        self._has_position = False  # restored or moved since start (else nothing to save)
        self.tx = make_optimizer(cfg.optimizer())
        self.metrics = Metrics.for_component("trainer")
        self.observer = TrainerObserver(
            self.metrics, TopicEnds(bootstrap, topic, "plum-trainer-lag"), cfg.log_every_s
        )
        self.counters = Counters()
        self.position: DataPosition | None = None
        self.sid_version: str | None = None
        self.state: TrainState | None = None
        self.data: TrainingData | None = None
        self.store: CheckpointStore | None = None
        self._bootstrap, self._topic, self._lookup_source = bootstrap, topic, lookup_source
        self._step0 = 0  # the step restored at start
        self.last_loss: float | None = None  # of the newest step (the publisher's gate reads it)
        self._last_ckpt = time.monotonic()

    # ---- the component
    def start(self) -> None:
        """Restore the newest checkpoint (or start from CPT), then open the input."""
        shard = lambda tree: state_shardings(tree, self.mesh)  # noqa: E731
        cfg = self.cfg
        self.store = CheckpointStore(self.paths.run_dir, cfg.max_to_keep, cfg.async_checkpoints)
        try:
            state, self.model_cfg, self.vocab = self._restore_or_start(shard)
            # the jitted step takes the state only in the mesh's layout
            self.state = place(state, shard(state))
            self.stepper = Stepper(
                self.model_cfg, self.tx, shard(self.state), batch_sharding(self.mesh)
            )
            self.archive = HistoryArchive(self.archive_dir)
            self.archive.truncate_after(int(self.state.step))
            self.data = TrainingData(
                self._local_data_cfg,
                self.vocab,
                self._lookup_source,
                bootstrap=self._bootstrap,
                topic=self._topic,
                archive_dir=self.archive_dir,
                start=self.position,
                share=(self.process, self.processes),
            )
        except FileNotFoundError as err:
            raise MissingInputError(str(err)) from err
        self._has_position = self.position is not None
        if self.lockstep is not None:
            # this process's partitions only: the checkpoint merges every process's own
            self.position = self.data.start_position
        self._step0 = int(self.state.step)
        self._last_ckpt = time.monotonic()
        self.observer.start()

    def step(self, stop: threading.Event) -> Step:
        """fetch batch -> train step -> maybe checkpoint."""
        if self.finished():
            return Step(finished=True)
        if self.lockstep is not None:
            return self._lockstep_step()
        mb = self.data.next_batch(timeout_s=1.0)
        if mb is None:
            return Step(active=False)
        tokens = self._train(mb.batch) if mb.n_rows else 0  # zero rows: only the position moves
        self._account(mb, tokens)
        if self._checkpoint_due():
            self.save()
        return Step(done=mb.n_rows, active=mb.has_fresh_input, finished=self.finished())

    def _lockstep_step(self) -> Step:
        """The step with the other processes: hold this process's batch until every
        process has one (or one has waited lockstep_wait_s), then all train (or, when
        no process has a row, all only move their positions) and maybe checkpoint."""
        if self._held is None:
            self._held = self.data.next_batch(timeout_s=1.0)
            self._held_at = time.monotonic()
        mb = self._held
        time_due = time.monotonic() - self._last_ckpt >= self.cfg.checkpoint_every_s
        r = self.lockstep.round(
            self._held_at if mb is not None else None,
            mb.n_rows if mb is not None else 0,
            mb is not None and mb.has_fresh_input,
            time_due,
        )
        if not r.go:
            return Step(active=r.active)
        tokens = 0
        if r.rows:
            batch = mb.batch if mb is not None else self._padding_batch()
            self._train(batch)
            tokens = int((batch.weights > 0).sum())  # this process's rows (the counters' share)
        if mb is not None:
            self._account(mb, tokens)
            self._held = None
        if int(self.state.step) % self.cfg.checkpoint_every_steps == 0 or r.checkpoint_due:
            self.save()
        done = mb.n_rows if mb is not None else 0
        return Step(done=done, active=r.active, finished=self.finished())

    def _padding_batch(self) -> Batch:
        if self._padding is None:
            cfg = self._local_data_cfg
            rows = [TrainingSequence([], 0, 0.0)] * cfg.batch_size
            self._padding = collate(rows, cfg.seq_len, self.vocab.pad_id)
        return self._padding

    def checkpoint(self) -> None:
        """The final checkpoint (SIGTERM, end of run): raises when it is not on disk."""
        self.save()
        try:
            self.store.wait()
        except CheckpointSaveError as err:
            self.observer.checkpoint_failed(err)
            raise

    def close(self) -> None:
        try:
            if self.data is not None:
                self.data.close()
        finally:
            if self.store is not None:
                self.store.close()
            self.observer.close()

    def describe(self) -> str:
        return self.observer.describe()

    def finished(self) -> bool:
        """max_steps reached (never, when max_steps is 0)."""
        return bool(self.cfg.max_steps) and int(self.state.step) >= self.cfg.max_steps

    def fraction_done(self) -> float | None:
        """For the progress line's ETA: how far a bounded run (max_steps) is since start."""
        if not self.cfg.max_steps or self.state is None:
            return None
        todo = self.cfg.max_steps - self._step0
        return 1.0 if todo <= 0 else (int(self.state.step) - self._step0) / todo

    # ---- one step's parts
    def _train(self, batch: Batch) -> int:
        t0 = time.monotonic()
        self.state, sm = self.stepper.train(self.state, batch)
        loss, tokens = float(sm.loss), int(sm.tokens)  # blocks: step done
        if not np.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} at step {int(self.state.step)}")
        self.observer.step(time.monotonic() - t0, loss)
        self.last_loss = loss
        return tokens

    def _account(self, mb: MixedBatch, tokens: int) -> None:
        """What the next checkpoint saves: the archive, counters and position after `mb`."""
        self.archive.append(mb.fresh_records)
        self.counters.add(mb, tokens)
        self.position = mb.position
        self._has_position = True
        self.sid_version = mb.sid_version
        self.observer.batch(
            mb,
            tokens,
            int(self.state.step),
            self.counters,
            self.data.waited_s,
            self.position.fresh_offsets,
        )

    def _checkpoint_due(self) -> bool:
        step = int(self.state.step)
        return (
            step % self.cfg.checkpoint_every_steps == 0
            or time.monotonic() - self._last_ckpt >= self.cfg.checkpoint_every_s
        )

    # ---- start / resume
    def _restore_or_start(self, shard) -> tuple[TrainState, ModelConfig, Vocab]:
        latest = self.store.latest_step()
        if latest is not None:
            saved_meta = self.store.restore_meta(latest)
            check_averaging(saved_meta, self.cfg, self.store.directory)
            check_prompt_layout(saved_meta, self.data_cfg, self.store.directory)
            step, state, meta = self.store.restore_latest(
                lambda m: _abstract(
                    lambda: init_state(
                        init_params(_model_config(m), jax.random.PRNGKey(0)), self.tx
                    ),
                    shard,
                )
            )
            self.position, self.counters = self._share_of(meta)
            log.info(
                "resuming from checkpoint %d: kafka offsets %s, history draws %d",
                step,
                self.position.fresh_offsets,
                self.position.history_draws,
            )
            return state, _model_config(meta), Vocab.load(self.store.vocab_dir)
        return self._start_from_cpt(shard)

    def _share_of(self, meta: dict[str, Any]) -> tuple[DataPosition, Counters]:
        """This process's position and counters in a checkpoint. The offsets are every
        partition's (the reader keeps its own); history cursor and counters are this
        process's when the checkpoint was saved by as many processes, else process 0
        takes the run's and the others start theirs at zero."""
        position = DataPosition.from_dict(meta["position"])
        shares = meta.get("processes") or []
        if len(shares) == self.processes > 1:
            mine = shares[self.process]
            draws = DataPosition.from_dict(mine["position"]).history_draws
            return dataclasses.replace(position, history_draws=draws), Counters.from_dict(
                mine["counters"]
            )
        if self.process == 0:
            return position, Counters.from_dict(meta["counters"])
        return dataclasses.replace(position, history_draws=0), Counters()

    def _start_from_cpt(self, shard) -> tuple[TrainState, ModelConfig, Vocab]:
        cpt = CheckpointStore(self.paths.cpt_dir, async_save=False)
        step, restored, meta = cpt.restore_latest(
            lambda m: _abstract(
                lambda: {"params": init_params(_model_config(m), jax.random.PRNGKey(0))}, shard
            )
        )
        cpt.close()
        model_cfg = _model_config(meta)
        if self.process == 0:  # one copy in the run dir all processes share
            if self.store.vocab_dir.exists():
                shutil.rmtree(self.store.vocab_dir)
            shutil.copytree(cpt.vocab_dir, self.store.vocab_dir)
        if self.processes > 1:
            barrier("plum-trainer-vocab")
        log.info(
            "starting from CPT checkpoint %s step %d (sid_version %s)",
            self.paths.cpt_dir,
            step,
            meta.get("sid_version"),
        )
        state = jax.jit(lambda p: init_state(p, self.tx))(restored["params"])
        return state, model_cfg, Vocab.load(self.store.vocab_dir)

    # ---- checkpoints
    def _meta(self, position: DataPosition | None, counters: Counters) -> dict[str, Any]:
        return {
            "kind": "sft",
            "position": position.to_dict() if position else None,
            "counters": counters.to_dict(),
            "loss": self.last_loss,
            "sid_version": self.sid_version,
            "model_config": self.model_cfg.to_dict(),
            "trainer_config": dataclasses.asdict(self.cfg),
            "data_config": dataclasses.asdict(self.data_cfg),
            "saved_at_ms": int(time.time() * 1000),
        }

    def save(self) -> int:
        """Flush the archive, then save state + position (async); a step is saved once."""
        self._last_ckpt = time.monotonic()
        step = int(self.state.step)
        if step in self.store.steps():
            return step
        if self.lockstep is not None:
            return self._save_together(step)
        if self.position is None:
            return step
        try:
            self.archive.flush(step)
            position = self.position.with_archive_step(step)
            self.store.save(step, self.state, self._meta(position, self.counters))
        except OSError as err:  # disk full, directory unwritable (CheckpointSaveError)
            # Training goes on; the last good checkpoint stays the newest, the archive
            # keeps its buffer, and the next due checkpoint tries again.
            self.observer.checkpoint_failed(err)
            return step
        self.position = position
        self.observer.checkpoint_saved()
        log.info("checkpoint %d saved (offsets %s)", step, self.position.fresh_offsets)
        return step

    def _save_together(self, step: int) -> int:
        """save() of a process in lockstep: all processes call it at the same step; their
        positions and counters are gathered into the one meta process 0 writes."""
        mine = {
            "has": self._has_position,
            "position": self.position.with_archive_step(step).to_dict(),
            "counters": self.counters.to_dict(),
        }
        shares = allgather_json(mine)
        if not any(s["has"] for s in shares):
            return step  # no process has moved since start: nothing new to save
        self.archive.flush(step)
        self.position = self.position.with_archive_step(step)
        positions = [DataPosition.from_dict(s["position"]) for s in shares]
        meta = self._meta(
            merged_position(positions, step),
            Counters.total(Counters.from_dict(s["counters"]) for s in shares),
        )
        meta["processes"] = [{"position": s["position"], "counters": s["counters"]} for s in shares]
        self.store.save(step, self.state, meta)
        self.observer.checkpoint_saved()
        log.info("checkpoint %d saved by %d processes", step, self.processes)
        return step


def trainer_runtime(trainer: ContinuousTrainer, stop: threading.Event | None = None) -> Runtime:
    """The runtime that runs `trainer` as `plum trainer run` does: /metrics on
    cfg.metrics_port (-1 = none, 0 = a free port), a progress line every log_every_s,
    idle-exit after idle_exit_s without Kafka input (0 = never), SIGTERM/SIGINT handled."""
    cfg = trainer.cfg
    port = cfg.metrics_port
    if port > 0:  # several processes on one host: process i serves port + i
        port += trainer.process
    return Runtime(
        trainer,
        RuntimeConfig(
            name="trainer",
            unit="examples",
            metrics_port=port,
            progress_every_s=cfg.log_every_s,
            idle_exit_s=cfg.idle_exit_s,
        ),
        registry=trainer.metrics.registry,
        stop=stop,
        fraction=trainer.fraction_done,
        agree=agree_on_end if trainer.lockstep is not None else None,
    )
