"""Continued pre-training (paper section 2.2): teach the model SIDs before recommending.

    plum trainer cpt --tokenizer state/demo/tokenizer --index state/sid/index.sqlite \\
        --out state/cpt [--base-checkpoint DIR]

Inputs come from where the rest of the system keeps them: uploads (titles, topics) and
watches from the Kafka topics (live and replay, read up to their current end), the SIDs
from the SID index's active version, the SID level sizes from the tokenizer checkpoint.
Each step samples `metadata_fraction` of its rows from item metadata sentences and the
rest from user behaviour sequences (trainer/prompt.py has both formats; the paper uses
a 50/50 mixture). Starts from random init, or from a Llama-style safetensors checkpoint
whose vocabulary is expanded with the SID and feature tokens (trainer/warmstart.py).

Output (plum/checkpoints.py layout): DIR/checkpoints/<steps>/{state = {"params"},
meta = model config, sid_version, CPT config, losses} and DIR/vocab/. The continuous
trainer starts from it (`plum trainer run --cpt DIR`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from plum.checkpoints import CheckpointStore
from plum.config import load_section
from streams.contracts import schema
from trainer.config import ModelConfig, VocabConfig
from trainer.model import init_params
from trainer.offline import fit
from trainer.prompt import (
    Batch,
    SidLookup,
    TrainingSequence,
    Watch,
    behaviour_sequences,
    collate,
    metadata_sequences,
)
from trainer.step import (
    OptimizerConfig,
    Stepper,
    evaluated_params_of_saved,
    init_state,
    make_optimizer,
)
from trainer.vocab import Vocab, build_vocab

log = logging.getLogger(__name__)

SECTION = "trainer_cpt"


@dataclass(frozen=True)
class CptConfig:
    steps: int = 2000
    batch_size: int = 32
    seq_len: int = 128  # model input length (sequences are cut to seq_len + 1 tokens)
    metadata_fraction: float = 0.5  # paper: 50/50 behaviour and metadata
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    log_every_s: float = 10.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.seq_len < 8:
            raise ValueError(
                f"steps={self.steps}, batch_size={self.batch_size} must be >= 1, "
                f"seq_len={self.seq_len} >= 8"
            )
        if not 0.0 <= self.metadata_fraction <= 1.0:
            raise ValueError(f"metadata_fraction={self.metadata_fraction} not in [0, 1]")

    def optimizer(self) -> OptimizerConfig:
        return OptimizerConfig(
            self.learning_rate,
            self.warmup_steps,
            self.weight_decay,
            grad_clip=self.grad_clip,
        )


def load_cpt_config(path: Path | str | None, env=None, **overrides: Any) -> CptConfig:
    return load_section(CptConfig, path, SECTION, env=env, **overrides)


@dataclass(frozen=True)
class CptCorpus:
    behaviour: list[TrainingSequence]
    metadata: list[TrainingSequence]
    sid_version: str

    def describe(self) -> dict[str, int]:
        return {
            "behaviour_sequences": len(self.behaviour),
            "behaviour_tokens": sum(len(s.tokens) for s in self.behaviour),
            "metadata_sequences": len(self.metadata),
            "metadata_tokens": sum(len(s.tokens) for s in self.metadata),
        }


def metadata_texts(uploads: Iterable[schema.UploadEvent]) -> Iterator[str]:
    """The text the BPE is trained on: titles, topics and the sentence frames."""
    yield "Video has title: The topics in video are:"
    for u in uploads:
        yield u.title
        yield ", ".join(u.topics)


def build_corpus(
    uploads: Sequence[schema.UploadEvent],
    watches: Sequence[schema.WatchEvent],
    lookup: SidLookup,
    vocab: Vocab,
    seq_len: int,
) -> CptCorpus:
    """Behaviour sequences per user (time order) + metadata sentences per video with a SID."""
    per_user: dict[str, list[Watch]] = defaultdict(list)
    for w in watches:
        per_user[w.user_id].append(Watch(w.video_id, w.ts, w.watch_ratio, w.watch_time_s))
    behaviour = [
        s
        for user in sorted(per_user)
        for s in behaviour_sequences(per_user[user], lookup, vocab, seq_len + 1)
    ]
    latest: dict[str, schema.UploadEvent] = {}
    for u in uploads:  # a re-upload (same id) replaces the metadata
        latest[u.video_id] = u
    metadata = [
        s
        for vid in sorted(latest)
        for s in metadata_sequences(
            vid, latest[vid].title, latest[vid].topics, lookup, vocab, seq_len + 1
        )
    ]
    if not behaviour and not metadata:
        raise ValueError(
            f"empty CPT corpus: none of {len(uploads)} uploads / {len(watches)} watches has a "
            f"SID in version {lookup.version!r}"
        )
    return CptCorpus(behaviour, metadata, lookup.version)


def sample_batch(
    corpus: CptCorpus, cfg: CptConfig, rng: np.random.Generator, pad_id: int
) -> tuple[Batch, int]:
    """One batch: Binomial(batch, metadata_fraction) metadata rows, the rest behaviour
    (an empty side gives its rows to the other); returns the batch and its metadata rows."""
    n_meta = int(rng.binomial(cfg.batch_size, cfg.metadata_fraction))
    if not corpus.metadata:
        n_meta = 0
    elif not corpus.behaviour:
        n_meta = cfg.batch_size
    rows = [corpus.metadata[i] for i in rng.integers(0, len(corpus.metadata), n_meta)] + [
        corpus.behaviour[i] for i in rng.integers(0, len(corpus.behaviour), cfg.batch_size - n_meta)
    ]
    return collate(rows, cfg.seq_len, pad_id), n_meta


@dataclass(frozen=True)
class CptResult:
    step: int
    first_loss: float
    final_loss: float  # mean over the last 10% of steps
    examples_per_s: float
    tokens_per_s: float
    path: Path


def train_cpt(
    cfg: CptConfig,
    model_cfg: ModelConfig,
    vocab: Vocab,
    corpus: CptCorpus,
    out_dir: Path | str,
    params: Any = None,
    extra_meta: dict[str, Any] | None = None,
) -> CptResult:
    """Train `cfg.steps` steps from `params` (None: random init) and save the checkpoint."""
    model_cfg = model_cfg.with_vocab(vocab.size)
    if cfg.seq_len > model_cfg.max_len:
        raise ValueError(f"seq_len={cfg.seq_len} exceeds the model's max_len={model_cfg.max_len}")
    out_dir = Path(out_dir)
    key = jax.random.PRNGKey(cfg.seed)
    if params is None:
        params = init_params(model_cfg, key)
    tx = make_optimizer(cfg.optimizer())
    rng = np.random.default_rng(cfg.seed)
    batches = (sample_batch(corpus, cfg, rng, vocab.pad_id)[0] for _ in range(cfg.steps))
    start = time.monotonic()
    state, fitted = fit(
        Stepper(model_cfg, tx), init_state(params, tx), batches, cfg.steps, "cpt", cfg.log_every_s
    )
    elapsed = time.monotonic() - start
    result_meta = {
        "kind": "cpt",
        "model_config": model_cfg.to_dict(),
        "cpt_config": dataclasses.asdict(cfg),
        "sid_version": corpus.sid_version,
        "corpus": corpus.describe(),
        "first_loss": fitted.first_loss,
        "final_loss": fitted.final_loss,
        **(extra_meta or {}),
    }
    save_cpt_checkpoint(out_dir, cfg.steps, state.params, vocab, result_meta)
    log.info(
        "CPT checkpoint %s step %d (final loss %.4f)", out_dir, cfg.steps, result_meta["final_loss"]
    )
    return CptResult(
        cfg.steps,
        fitted.first_loss,
        fitted.final_loss,
        cfg.steps * cfg.batch_size / elapsed,
        fitted.tokens / elapsed,
        out_dir,
    )


def save_cpt_checkpoint(
    out_dir: Path | str, step: int, params: Any, vocab: Vocab, meta: dict[str, Any]
) -> Path:
    """`params` and `vocab` as the CPT checkpoint `plum trainer run --cpt` starts from
    (`meta` must hold the model's `model_config`). Step 0 is an untrained start: the same
    random init as an SFT run that had no CPT."""
    if "model_config" not in meta:
        raise ValueError("a CPT checkpoint's meta needs the model_config")
    store = CheckpointStore(out_dir, max_to_keep=1, async_save=False)
    try:
        vocab.save(store.vocab_dir)
        store.save(step, {"params": params}, meta)
    finally:
        store.close()
    return Path(out_dir)


@dataclass(frozen=True)
class LoadedModel:
    params: Any
    model_config: ModelConfig
    vocab: Vocab
    meta: dict[str, Any]
    step: int


def load_model(directory: Path | str) -> LoadedModel:
    """Params (+ config, vocab, meta) of the newest CPT or SFT checkpoint under `directory`."""
    store = CheckpointStore(directory, async_save=False)
    try:
        step = store.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {Path(directory) / 'checkpoints'}")
        state, meta = store.restore_untyped(step)
        cfg = ModelConfig.from_dict(meta["model_config"])
        params = evaluated_params_of_saved(state)  # the average, when the trainer keeps one
        return LoadedModel(params, cfg, Vocab.load(store.vocab_dir), meta, step)
    finally:
        store.close()


def vocab_for_corpus(
    uploads: Sequence[schema.UploadEvent], vocab_cfg: VocabConfig, level_sizes: Sequence[int]
) -> Vocab:
    return build_vocab(metadata_texts(uploads), vocab_cfg, level_sizes)


def write_summary(path: Path, result: CptResult, corpus: CptCorpus) -> None:
    path.write_text(
        json.dumps(
            {**dataclasses.asdict(result), "path": str(result.path), **corpus.describe()},
            indent=1,
        )
    )


def read_events(
    bootstrap: str, topics: Any, timeout_s: float = 120.0
) -> tuple[list[schema.UploadEvent], list[schema.WatchEvent]]:
    """Valid uploads and watches of the live and replay topics, up to their end offsets now
    (invalid records are the dead-letter topic's business: skipped here and counted)."""
    from streams.kafka.clients import read_all

    limits = schema.ValidationLimits(now_ms=2**62)  # history: no "too far in the future"
    uploads: list[schema.UploadEvent] = []
    watches: list[schema.WatchEvent] = []
    invalid = 0
    for topic, decode, out in (
        (topics.uploads, schema.decode_upload, uploads),
        (topics.uploads_replay, schema.decode_upload, uploads),
        (topics.watches, schema.decode_watch, watches),
        (topics.watches_replay, schema.decode_watch, watches),
    ):
        for rec in read_all(bootstrap, topic, timeout_s=timeout_s):
            try:
                out.append(decode(rec.value, limits))
            except schema.ValidationError:
                invalid += 1
    log.info(
        "read %d uploads, %d watches (%d invalid records skipped)",
        len(uploads),
        len(watches),
        invalid,
    )
    return uploads, watches
