"""Continuous SFT: start from the CPT checkpoint, train on fresh + historical examples forever.

    plum trainer run --cpt state/cpt --run-dir state/trainer

The loop, top to bottom:

    state, position = restore the newest checkpoint, or the CPT params + a fresh optimizer
    archive.truncate_after(step)                 # examples after it will be re-consumed
    data = TrainingData(start=position)          # Kafka seeks to the saved offsets
    while not stopped:
        batch = data.next_batch()                # fresh_fraction from Kafka, rest history
        state = train_step(state, batch)         # constant LR, weighted by reward
        archive.append(batch.fresh_records)
        every N steps / M seconds / on SIGTERM:
            archive.flush(step); checkpoints.save(step, state, position of this batch)

The position saved is that of the last TRAINED batch (not of what the input thread has
read ahead), and the archive is flushed before the checkpoint that covers it, so a
restart (kill -9 included) trains every example exactly once in the checkpointed
lineage: what came after the checkpoint is re-read from Kafka and re-archived.
Counters in the checkpoint (fresh records, an order-free digest of their event ids)
make that checkable from outside.

The machinery lives beside the loop: trainer/data.py (input), trainer/step.py (the
jitted step), trainer/sharding.py (mesh), plum/checkpoints.py (orbax).
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

from monitoring.metrics import Metrics, serve_metrics
from plum.checkpoints import CheckpointStore
from plum.config import DEFAULT_KAFKA_BOOTSTRAP, load_section
from trainer.archive import HistoryArchive
from trainer.config import ModelConfig
from trainer.data import DataConfig, DataPosition, MixedBatch, TrainingData
from trainer.model import init_params
from trainer.prompt import SidLookup
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
    metrics_port: int = 0  # 0 = no /metrics server
    # 0 = never stop (the production setting). > 0: exit after the Kafka topic has been
    # quiet this long, for backfills and tests.
    idle_exit_s: float = 0.0
    max_steps: int = 0  # 0 = unlimited

    def __post_init__(self) -> None:
        if self.checkpoint_every_steps < 1:
            raise ValueError(f"checkpoint_every_steps={self.checkpoint_every_steps} must be >= 1")
        if self.idle_exit_s < 0 or self.max_steps < 0:
            raise ValueError("idle_exit_s and max_steps must be >= 0")
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


class ContinuousTrainer:
    """Owns the model state, the data pipeline and the checkpoints of one training run."""

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
        self.store = CheckpointStore(paths.run_dir, cfg.max_to_keep, cfg.async_checkpoints)
        self.mesh = make_mesh(cfg.mesh_data, cfg.mesh_fsdp, devices)
        if data_cfg.batch_size % mesh_size(self.mesh):
            raise ValueError(
                f"batch_size={data_cfg.batch_size} must divide by the {mesh_size(self.mesh)} "
                "devices of the mesh"
            )
        self.tx = make_optimizer(cfg.optimizer())
        self.metrics = Metrics.for_component("trainer")
        self.counters = Counters()
        self.position: DataPosition | None = None
        self.state, self.model_cfg, self.vocab = self._restore_or_start()
        shard = lambda tree: state_shardings(tree, self.mesh)  # noqa: E731
        # the jitted step takes the state only in the mesh's layout
        self.state = jax.device_put(self.state, shard(self.state))
        self.stepper = Stepper(
            self.model_cfg, self.tx, shard(self.state), batch_sharding(self.mesh)
        )
        self.archive = HistoryArchive(paths.archive)
        self.archive.truncate_after(int(self.state.step))
        self.data = TrainingData(
            data_cfg,
            self.vocab,
            lookup_source,
            bootstrap=bootstrap,
            topic=topic,
            archive_dir=paths.archive,
            start=self.position,
        )
        self.sid_version: str | None = None
        self._bootstrap, self._topic = bootstrap, topic
        self._lag_consumer = None

    # ---- start / resume
    def _restore_or_start(self) -> tuple[TrainState, ModelConfig, Vocab]:
        shard = lambda tree: state_shardings(tree, self.mesh)  # noqa: E731
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
            "sid_version": self.sid_version,
            "model_config": self.model_cfg.to_dict(),
            "trainer_config": dataclasses.asdict(self.cfg),
            "data_config": dataclasses.asdict(self.data_cfg),
            "saved_at_ms": int(time.time() * 1000),
        }

    def save(self) -> int:
        step = int(self.state.step)
        if self.position is None or step in self.store.steps():
            return step
        self.archive.flush(step)
        self.position = self.position.with_archive_step(step)
        self.store.save(step, self.state, self._meta())
        self.metrics.gauge("plum_trainer_last_checkpoint_ts").set(time.time() * 1000)
        log.info("checkpoint %d saved (offsets %s)", step, self.position.fresh_offsets)
        return step

    # ---- the loop
    def run(self, stop: threading.Event) -> Counters:
        cfg = self.cfg
        server = serve_metrics(self.metrics, cfg.metrics_port) if cfg.metrics_port else None
        m = self.metrics
        started = last_log = last_ckpt = time.monotonic()
        waited = 0.0
        quiet_since: float | None = None
        steps_at_log, examples_at_log = int(self.state.step), 0
        examples_run = 0
        try:
            while not stop.is_set():
                if cfg.max_steps and int(self.state.step) >= cfg.max_steps:
                    break
                t0 = time.monotonic()
                mb = self.data.next_batch(timeout_s=1.0)
                waited += time.monotonic() - t0
                fresh_input = mb is not None and bool(mb.fresh_records or mb.n_malformed)
                if fresh_input:
                    quiet_since = None
                else:
                    quiet_since = quiet_since or time.monotonic()
                    if cfg.idle_exit_s and time.monotonic() - quiet_since >= cfg.idle_exit_s:
                        log.info("no input for %.1f s: stopping (idle_exit_s)", cfg.idle_exit_s)
                        break
                if mb is None:
                    continue
                t1 = time.monotonic()
                if mb.n_rows:
                    self.state, sm = self.stepper.train(self.state, mb.batch)
                    loss, tokens = float(sm.loss), int(sm.tokens)  # blocks: step done
                    if not np.isfinite(loss):
                        raise FloatingPointError(f"loss is {loss} at step {int(self.state.step)}")
                    m.histogram("plum_trainer_step_seconds").observe(time.monotonic() - t1)
                    m.gauge("plum_trainer_loss").set(loss)
                else:  # only skipped records or markers: no step, but the position moves on
                    tokens = 0
                self.archive.append(mb.fresh_records)
                self.counters.add(mb, tokens)
                self.position = mb.position
                examples_run += mb.n_fresh + mb.n_history
                self._observe(mb, tokens)
                m.gauge("plum_trainer_input_wait_fraction").set(
                    waited / max(time.monotonic() - started, 1e-9)
                )
                now = time.monotonic()
                step = int(self.state.step)
                if (
                    step % cfg.checkpoint_every_steps == 0
                    or now - last_ckpt >= cfg.checkpoint_every_s
                ):
                    self.save()
                    last_ckpt = now
                if now - last_log >= cfg.log_every_s:
                    self._update_lag()
                    rate = (examples_run - examples_at_log) / (now - last_log)
                    log.info(
                        "step %d loss %.4f | %.1f examples/s, %.1f steps/s | input wait %.1f%% "
                        "| fresh %d history %d skipped %d | sid %s",
                        step,
                        m.value("plum_trainer_loss"),
                        rate,
                        (step - steps_at_log) / (now - last_log),
                        100 * waited / (now - started),
                        self.counters.fresh_trained,
                        self.counters.history_trained,
                        self.counters.skipped_unknown,
                        mb.sid_version,
                    )
                    last_log, steps_at_log, examples_at_log = now, step, examples_run
            self.save()
            self.store.wait()
            return self.counters
        finally:
            self.data.close()
            self.store.close()
            if self._lag_consumer is not None:
                self._lag_consumer.close()
            if server:
                server.close()

    def _update_lag(self) -> None:
        """plum_trainer_consumer_lag: records of the topic not yet trained on, per partition
        (end offsets from a separate read_committed client: the input thread owns its own)."""
        from kafka import KafkaConsumer, TopicPartition

        if self.position is None:
            return
        try:
            if self._lag_consumer is None:
                self._lag_consumer = KafkaConsumer(
                    bootstrap_servers=self._bootstrap,
                    enable_auto_commit=False,
                    isolation_level="read_committed",
                    client_id="plum-trainer-lag",
                )
            offsets = self.position.fresh_offsets
            tps = [TopicPartition(self._topic, p) for p in offsets]
            ends = self._lag_consumer.end_offsets(tps)
        except Exception as err:  # noqa: BLE001 - a metric must not stop training
            log.warning("consumer lag not updated: %s", err)
            return
        gauge = self.metrics.gauge("plum_trainer_consumer_lag")
        for tp, end in ends.items():
            gauge.labels(partition=str(tp.partition)).set(max(0, end - offsets[tp.partition]))

    def _observe(self, mb: MixedBatch, tokens: int) -> None:
        m = self.metrics
        m.gauge("plum_trainer_step").set(int(self.state.step))
        m.counter("plum_trainer_examples_total").labels(source="fresh").inc(mb.n_fresh)
        m.counter("plum_trainer_examples_total").labels(source="history").inc(mb.n_history)
        skipped = m.counter("plum_trainer_examples_skipped_total")
        skipped.labels(reason="unknown_target").inc(mb.n_skipped_unknown)
        skipped.labels(reason="malformed").inc(mb.n_malformed)
        m.counter("plum_trainer_tokens_total").inc(tokens)
        c = self.counters
        trained = c.fresh_trained + c.history_trained
        m.gauge("plum_trainer_fresh_fraction").set(c.fresh_trained / trained if trained else 0.0)
        if c.newest_event_ts:
            m.gauge("plum_trainer_newest_event_ts").set(c.newest_event_ts)
        if mb.sid_version != self.sid_version:
            if self.sid_version is not None:
                m.gauge("plum_trainer_sid_version_info").labels(version=self.sid_version).set(0)
                log.info("SID index switched %s -> %s", self.sid_version, mb.sid_version)
            self.sid_version = mb.sid_version
            if mb.sid_version is not None:
                m.gauge("plum_trainer_sid_version_info").labels(version=mb.sid_version).set(1)
