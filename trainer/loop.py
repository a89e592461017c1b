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

The position saved is that of the last TRAINED batch (not of what the input thread has
read ahead), and the archive is flushed before the checkpoint that covers it, so a
restart (kill -9 included) trains every example exactly once in the checkpointed
lineage: what came after the checkpoint is re-read from Kafka and re-archived.
Counters in the checkpoint (fresh records, an order-free digest of their event ids)
make that checkable from outside.

The machinery lives beside the loop: trainer/data.py (input), trainer/step.py (the
jitted step), trainer/sharding.py (mesh), trainer/observe.py (gauges, consumer lag,
progress text), plum/checkpoints.py (orbax).
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
from plum.checkpoints import CheckpointStore
from plum.config import DEFAULT_KAFKA_BOOTSTRAP, load_section
from plum.runtime import Runtime, RuntimeConfig, Step
from streams.kafka.source import TopicEnds
from trainer.archive import HistoryArchive
from trainer.config import ModelConfig
from trainer.data import DataConfig, DataPosition, MixedBatch, TrainingData
from trainer.model import init_params
from trainer.observe import TrainerObserver
from trainer.prompt import Batch, SidLookup
from trainer.sharding import batch_sharding, make_mesh, mesh_size, state_shardings
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

    def __post_init__(self) -> None:
        if self.checkpoint_every_steps < 1:
            raise ValueError(f"checkpoint_every_steps={self.checkpoint_every_steps} must be >= 1")
        if self.idle_exit_s < 0 or self.max_steps < 0:
            raise ValueError("idle_exit_s and max_steps must be >= 0")
        if self.metrics_port < -1:
            raise ValueError(f"metrics_port={self.metrics_port} must be >= -1 (-1 = none)")
        self.optimizer()  # validates the optimizer fields

    def optimizer(self) -> OptimizerConfig:
        return OptimizerConfig(
            self.learning_rate,
            self.warmup_steps,
            self.weight_decay,
            self.b1,
            self.b2,
            self.grad_clip,
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
            self.state = jax.device_put(state, shard(state))
            self.stepper = Stepper(
                self.model_cfg, self.tx, shard(self.state), batch_sharding(self.mesh)
            )
            self.archive = HistoryArchive(self.paths.archive)
            self.archive.truncate_after(int(self.state.step))
            self.data = TrainingData(
                self.data_cfg,
                self.vocab,
                self._lookup_source,
                bootstrap=self._bootstrap,
                topic=self._topic,
                archive_dir=self.paths.archive,
                start=self.position,
            )
        except FileNotFoundError as err:
            raise MissingInputError(str(err)) from err
        self._step0 = int(self.state.step)
        self._last_ckpt = time.monotonic()
        self.observer.start()

    def step(self, stop: threading.Event) -> Step:
        """fetch batch -> train step -> maybe checkpoint."""
        if self.finished():
            return Step(finished=True)
        mb = self.data.next_batch(timeout_s=1.0)
        if mb is None:
            return Step(active=False)
        tokens = self._train(mb.batch) if mb.n_rows else 0  # zero rows: only the position moves
        self._account(mb, tokens)
        if self._checkpoint_due():
            self.save()
        return Step(done=mb.n_rows, active=mb.has_fresh_input, finished=self.finished())

    def checkpoint(self) -> None:
        self.save()
        self.store.wait()

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
        if self.store.latest_step() is not None:
            step, state, meta = self.store.restore_latest(
                lambda m: _abstract(
                    lambda: init_state(
                        init_params(_model_config(m), jax.random.PRNGKey(0)), self.tx
                    ),
                    shard,
                )
            )
            self.position = DataPosition.from_dict(meta["position"])
            self.counters = Counters.from_dict(meta["counters"])
            log.info(
                "resuming from checkpoint %d: kafka offsets %s, history draws %d",
                step,
                self.position.fresh_offsets,
                self.position.history_draws,
            )
            return state, _model_config(meta), Vocab.load(self.store.vocab_dir)
        return self._start_from_cpt(shard)

    def _start_from_cpt(self, shard) -> tuple[TrainState, ModelConfig, Vocab]:
        cpt = CheckpointStore(self.paths.cpt_dir, async_save=False)
        step, restored, meta = cpt.restore_latest(
            lambda m: _abstract(
                lambda: {"params": init_params(_model_config(m), jax.random.PRNGKey(0))}, shard
            )
        )
        cpt.close()
        model_cfg = _model_config(meta)
        if self.store.vocab_dir.exists():
            shutil.rmtree(self.store.vocab_dir)
        shutil.copytree(cpt.vocab_dir, self.store.vocab_dir)
        log.info(
            "starting from CPT checkpoint %s step %d (sid_version %s)",
            self.paths.cpt_dir,
            step,
            meta.get("sid_version"),
        )
        state = jax.jit(lambda p: init_state(p, self.tx))(restored["params"])
        return state, model_cfg, Vocab.load(self.store.vocab_dir)

    # ---- checkpoints
    def _meta(self) -> dict[str, Any]:
        return {
            "kind": "sft",
            "position": self.position.to_dict() if self.position else None,
            "counters": self.counters.to_dict(),
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
        if self.position is None or step in self.store.steps():
            return step
        self.archive.flush(step)
        self.position = self.position.with_archive_step(step)
        self.store.save(step, self.state, self._meta())
        self.observer.checkpoint_saved()
        log.info("checkpoint %d saved (offsets %s)", step, self.position.fresh_offsets)
        return step


def trainer_runtime(trainer: ContinuousTrainer, stop: threading.Event | None = None) -> Runtime:
    """The runtime that runs `trainer` as `plum trainer run` does: /metrics on
    cfg.metrics_port (-1 = none, 0 = a free port), a progress line every log_every_s,
    idle-exit after idle_exit_s without Kafka input (0 = never), SIGTERM/SIGINT handled."""
    cfg = trainer.cfg
    return Runtime(
        trainer,
        RuntimeConfig(
            name="trainer",
            unit="examples",
            metrics_port=cfg.metrics_port,
            progress_every_s=cfg.log_every_s,
            idle_exit_s=cfg.idle_exit_s,
        ),
        registry=trainer.metrics.registry,
        stop=stop,
        fraction=trainer.fraction_done,
    )
