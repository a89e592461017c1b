"""Shared by the SID service's integration and fault tests: simulated uploads, a small
tokenizer trained on them in seconds, and `plum tokenizer serve` as a child process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from plum.config import REPO_ROOT
from streams.contracts import schema
from streams.simulator.config import load_config as load_simulator_config
from streams.simulator.stream import SimRecord, generate
from tokenizer.config import load_tokenizer_config
from tokenizer.train import train_tokenizer

TEST_CONFIG = REPO_ROOT / "configs" / "test.toml"


def simulated_uploads(events: int = 1500, bad_fraction: float = 0.05) -> list[SimRecord]:
    """The simulator's upload records: valid ones and malformed ones of every upload kind
    (a record's `kind` is "valid" or the reason it must be dead-lettered with)."""
    cfg = load_simulator_config(TEST_CONFIG, events=events, bad_fraction=bad_fraction)
    return [r for r in generate(cfg) if r.topic.endswith("plum.uploads.v1")]


def small_tokenizer(uploads: list[SimRecord]):
    """A tokenizer trained on the valid `uploads`. Deliberately small codebooks and few
    steps: collisions must happen so the disambiguation path is exercised."""
    valid = [schema.decode_upload(r.value) for r in uploads if r.kind == "valid"]
    names = sorted(valid[0].embeddings)
    emb = {n: np.asarray([u.embeddings[n] for u in valid], np.float32) for n in names}
    config = load_tokenizer_config(TEST_CONFIG, env={}, steps=60, codebook_base=16)
    return train_tokenizer(emb, None, config)


def serve_process(
    bootstrap: str,
    topic_prefix: str,
    checkpoint: Path,
    index_path: Path,
    stderr,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """`plum tokenizer serve` on the test's topics with /metrics on a free port (the
    runtime logs which on `stderr`); `env` adds settings (PLUM_SID_SERVICE__...)."""
    cmd = [
        sys.executable, "-m", "plum.cli", "tokenizer", "serve",
        "--config", str(TEST_CONFIG),
        "--bootstrap", bootstrap,
        "--topic-prefix", topic_prefix,
        "--checkpoint", str(checkpoint),
        "--index", str(index_path),
        "--metrics-port", "0",
    ]  # fmt: skip
    return subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=dict(os.environ, **(env or {})), stderr=stderr, text=True
    )
