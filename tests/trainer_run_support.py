"""Shared by the integration tests that run `plum trainer run` as a real process: the
tiny trainer sections of their config, their 24 videos, SFT examples over them, a real
(tiny, barely trained) tokenizer, and a producer of raw records."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from plum.config import REPO_ROOT
from streams.contracts import schema
from streams.kafka.clients import make_producer
from tokenizer.index import SidIndex
from trainer.config import TINY, VocabConfig
from trainer.cpt import CptConfig, build_corpus, train_cpt, vocab_for_corpus
from trainer.prompt import SidLookup

VIDEOS = [f"v{i}" for i in range(24)]
LEVELS = (8, 4, 2)  # what a tokenizer with codebook_base 8 and 3 levels has


def video_sid(i: int) -> tuple[int, ...]:
    return (i % 8, i // 8, i % 2, i // 16)  # unique for the 24 videos


def sid_lookup() -> SidLookup:
    """Every video's SID under version sv1."""
    return SidLookup("sv1", {v: video_sid(i) for i, v in enumerate(VIDEOS)})


def write_sid_index(path: Path) -> Path:
    """A SID index with every video under active version sv1."""
    index = SidIndex(path)
    for i, v in enumerate(VIDEOS):
        index.record("sv1", v, video_sid(i), 0)
    index.switch("sv1")
    index.close()
    return path


def small_cpt_checkpoint(directory: Path) -> Path:
    """A CPT checkpoint of a tiny model (2 steps) over the 24 videos, in `directory`."""
    uploads = [schema.UploadEvent(v, 0, f"title {v}", "", "c", ("t",), 60.0, {}) for v in VIDEOS]
    vocab = vocab_for_corpus(uploads, VocabConfig(300, 1, 3), LEVELS)
    corpus = build_corpus(uploads, [], sid_lookup(), vocab, seq_len=48)
    model = dataclasses.replace(TINY, d_model=32, d_ff=64, max_len=64)
    train_cpt(CptConfig(steps=2, batch_size=4, seq_len=48), model, vocab, corpus, directory)
    return directory


# [trainer_model], [trainer_vocab], [trainer], [trainer_data]: a model that compiles in
# seconds, a checkpoint every 3 steps, batches of 4 fresh examples. A test adds [sid],
# [trainer_cpt] and what else it runs.
TINY_TRAINER_CONFIG = """
[trainer_model]
d_model = 32
n_layers = 2
n_heads = 4
n_kv_heads = 2
d_ff = 64
max_len = 64

[trainer_vocab]
text_vocab_size = 300
min_frequency = 1

[trainer]
checkpoint_every_steps = 3
checkpoint_every_s = 3600.0
learning_rate = 0.001
warmup_steps = 0
log_every_s = 1.0

[trainer_data]
batch_size = 4
seq_len = 48
max_prompt_len = 40
fresh_fraction = 1.0
fresh_wait_ms = 100
prefetch_batches = 2
sid_refresh_s = 0.5
"""


def sft_examples(start: int, n: int, unknown_every: int = 0) -> list[schema.SftExample]:
    """Examples start .. start + n - 1 over VIDEOS (seeded by `start`); every
    `unknown_every`-th target is a video no index knows (0 = none)."""
    rng = np.random.default_rng(start)
    out = []
    for i in range(start, start + n):
        hist = tuple(
            schema.HistoryItem(VIDEOS[int(v)], 0.5, 30.0, float(k))
            for k, v in enumerate(rng.integers(0, len(VIDEOS), 3))
        )
        target = "unknown-video" if unknown_every and i % unknown_every == 0 else VIDEOS[i % 24]
        out.append(
            schema.SftExample(
                f"ev{i:05d}",
                f"u{i % 7}",
                hist,
                VIDEOS[(i + 1) % 24],
                target,
                1.0,
                1_700_000_000_000 + i,
            )
        )
    return out


def produce(
    bootstrap: str, topic: str, records: list[bytes], keys: list[bytes] | None = None
) -> None:
    """Send raw records (keys: one per record; default u0 .. u6 in turn) and flush."""
    producer = make_producer(bootstrap)
    for i, value in enumerate(records):
        key = keys[i] if keys is not None else f"u{i % 7}".encode()
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


def tokenizer_checkpoint(directory: Path, items: int = 32, dim: int = 8) -> Path:
    """A real (tiny, barely trained) tokenizer checkpoint with SID levels LEVELS, trained
    on `items` random `dim`-d text embeddings."""
    from tokenizer.checkpoint import save_tokenizer
    from tokenizer.config import load_tokenizer_config
    from tokenizer.train import train_tokenizer

    emb = {"text": np.random.default_rng(0).normal(size=(items, dim)).astype(np.float32)}
    config = load_tokenizer_config(
        REPO_ROOT / "configs" / "test.toml", env={}, steps=3, codebook_base=8, num_levels=3
    )
    tok = train_tokenizer(emb, None, config)
    assert tok.level_sizes == LEVELS
    save_tokenizer(tok, directory)
    return directory
