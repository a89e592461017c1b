"""Shared by the integration tests that run `plum trainer run` as a real process: the
tiny trainer sections of their config, their 24 videos, SFT examples over them, a real
(tiny, barely trained) tokenizer, and a producer of raw records."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from plum.config import REPO_ROOT
from streams.contracts import schema
from streams.kafka.clients import make_producer

VIDEOS = [f"v{i}" for i in range(24)]
LEVELS = (8, 4, 2)  # what a tokenizer with codebook_base 8 and 3 levels has

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
