"""Shared by the serving, publisher and integration tests: a tiny model in a real model
repository (serving/artifact.py), and the broken versions serving must refuse.

The model is trainer.config.TINY (the `[trainer_model]` of configs/test.toml) over
tests.trainer_data_support.tiny_vocab() (3 SID levels 4/3/2 + a disambiguation slot),
with freshly initialised parameters: untrained, but a real model whose beam search
serving runs exactly as in production.

    tiny = write_tiny_repo(tmp_path / "models", versions=2, n_videos=16)
    tiny.repo.load(2)                       # a verified Artifact
    write_nan_version(tiny)                 # NaN params, a correct content hash
    corrupt_version(tiny.repo, 2)           # params bytes changed: the hash no longer holds
"""

from __future__ import annotations

import functools
import itertools
import json
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np
from fastapi.testclient import TestClient

from monitoring.metrics import Metrics
from serving.app import create_app
from serving.artifact import (
    MANIFEST,
    PARAMS,
    IndexSnapshot,
    Manifest,
    ModelRepository,
    content_hash,
    snapshot_of,
)
from serving.batcher import Batcher
from serving.config import ServingConfig
from serving.model_slot import ModelSlot, SearchCache
from serving.sid_delta import SidDelta
from tests.trainer_data_support import BASE_TS, LEVELS, tiny_vocab
from trainer.config import TINY, ModelConfig
from trainer.model import init_params
from trainer.vocab import Vocab

SID_VERSION = "v1"
MAX_PROMPT_LEN = 56  # configs/test.toml [trainer_data].max_prompt_len
_CODES = list(itertools.product(*map(range, LEVELS)))  # 24 distinct L-code prefixes
MAX_VIDEOS = 2 * len(_CODES)  # each prefix with and without a disambiguation code


def video_id(i: int) -> str:
    return f"v{i}"


def sid(i: int) -> tuple[int, ...]:
    """Video i's SID: the first 24 carry disambiguation code 0, the next 24 none, so every
    SID is distinct and all 48 are writable by the tiny vocabulary."""
    if not 0 <= i < MAX_VIDEOS:
        raise ValueError(f"the tiny vocabulary writes {MAX_VIDEOS} distinct SIDs; video {i}")
    codes = _CODES[i % len(_CODES)]
    return (*codes, 0) if i < len(_CODES) else tuple(codes)


ASSIGNED_AFTER_MS = 500  # upload -> SID assigned in these fixtures


def rows(start: int, stop: int) -> list[tuple[str, tuple[int, ...], int, int]]:
    """(video_id, sid, upload_ts, assigned_ts) of videos start .. stop - 1, as the
    publisher numbers them."""
    return [
        (video_id(i), sid(i), BASE_TS + i * 1000, BASE_TS + i * 1000 + ASSIGNED_AFTER_MS)
        for i in range(start, stop)
    ]


def snapshot(n_videos: int, sid_version: str = SID_VERSION) -> IndexSnapshot:
    """Videos v0 .. v{n-1} at seq n (item i has sequence i + 1)."""
    return snapshot_of(sid_version, n_videos, [r[:3] for r in rows(0, n_videos)])


def delta(start: int, stop: int, sid_version: str = SID_VERSION) -> SidDelta:
    """The delta that adds videos start .. stop - 1 to an index at seq `start`."""
    return SidDelta.of(sid_version, start, rows(start, stop))


def tiny_model_config(vocab: Vocab) -> ModelConfig:
    return TINY.with_vocab(vocab.size)


def numpy_params(config: ModelConfig, seed: int) -> dict:
    params = init_params(config, jax.random.PRNGKey(seed))
    return jax.tree_util.tree_map(np.asarray, params)


@dataclass
class TinyRepo:
    """A model repository of tiny-model versions and what they were written from."""

    repo: ModelRepository
    vocab: Vocab
    vocab_dir: Path
    model_config: ModelConfig
    snapshot: IndexSnapshot
    max_prompt_len: int = MAX_PROMPT_LEN
    manifests: list[Manifest] = field(default_factory=list)

    @property
    def base_path(self) -> Path:
        return self.repo.base_path

    def write_version(
        self,
        seed: int | None = None,
        snapshot: IndexSnapshot | None = None,
        params: dict | None = None,
        step: int | None = None,
        newest_event_ts_ms: int | None = None,
        prompt_layout: str = "target",
    ) -> Manifest:
        """The next version: parameters from `seed` (default: the version number), trained
        (as its manifest says) in `prompt_layout`."""
        version = (self.repo.latest() or 0) + 1
        manifest = self.repo.write(
            params if params is not None else numpy_params(self.model_config, seed or version),
            self.vocab_dir,
            snapshot or self.snapshot,
            step=100 * version if step is None else step,
            model_config=self.model_config.to_dict(),
            max_prompt_len=self.max_prompt_len,
            prompt_layout=prompt_layout,
            newest_event_ts_ms=BASE_TS + version
            if newest_event_ts_ms is None
            else newest_event_ts_ms,
            dtype="float32",
            gate={"test": True},
            source={"writer": "tests.serving_support"},
        )
        self.manifests.append(manifest)
        return manifest


def write_tiny_repo(
    base_path: Path | str,
    versions: int = 1,
    n_videos: int = 16,
    sid_version: str = SID_VERSION,
    max_prompt_len: int = MAX_PROMPT_LEN,
) -> TinyRepo:
    """A repository at `base_path` with `versions` versions of the tiny model (different
    parameters each), every one shipping an index of videos v0 .. v{n_videos-1}."""
    base_path = Path(base_path)
    vocab = tiny_vocab()
    vocab_dir = vocab.save(base_path.parent / f"{base_path.name}-vocab")
    tiny = TinyRepo(
        ModelRepository(base_path),
        vocab,
        vocab_dir,
        tiny_model_config(vocab),
        snapshot(n_videos, sid_version),
        max_prompt_len,
    )
    for _ in range(versions):
        tiny.write_version()
    return tiny


def _rewrite_params(repo: ModelRepository, version: int, params: dict) -> Manifest:
    """Replace a version's parameters and re-hash it, so only the parameters are wrong."""
    import orbax.checkpoint as ocp

    path = repo.path(version)
    shutil.rmtree(path / PARAMS)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save((path / PARAMS).absolute(), params)
    checkpointer.wait_until_finished()
    checkpointer.close()
    manifest = repo.manifest(version)
    data = manifest.to_json() | {"content_hash": content_hash(path)}
    (path / MANIFEST).write_text(json.dumps(data, indent=1, sort_keys=True))
    return Manifest.from_json(data)


def write_nan_version(tiny: TinyRepo, leaves: Sequence[str] | None = None) -> Manifest:
    """The next version with NaN parameters and a CORRECT content hash: only a finiteness
    check can refuse it (the repository's writer never writes one; a broken exporter or a
    disk copy could). `leaves`: paths ("a/b/c") to poison, default every floating leaf."""
    manifest = tiny.write_version()
    params = numpy_params(tiny.model_config, manifest.version)

    def poison(path, leaf):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        if leaf.dtype.kind == "f" and (leaves is None or name in leaves):
            return np.full_like(leaf, np.nan)
        return leaf

    bad = jax.tree_util.tree_map_with_path(poison, params)
    manifest = _rewrite_params(tiny.repo, manifest.version, bad)
    tiny.manifests[-1] = manifest
    return manifest


def corrupt_version(repo: ModelRepository, version: int) -> Path:
    """Change bytes in the middle of the version's largest parameter file (as a bad disk
    or a partial copy would): its content hash no longer matches. Returns that file."""
    files = [p for p in (repo.path(version) / PARAMS).rglob("*") if p.is_file()]
    target = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    middle = len(data) // 2
    for i in range(middle, min(middle + 64, len(data))):
        data[i] ^= 0xFF
    target.write_bytes(bytes(data))
    return target


# ---------------------------------------------------------------- shared across test modules
# Writing versions and compiling the searches take seconds on 2 cores; every serving test
# module shares one template repository and one search cache per process (copying the
# template is milliseconds), so the serving suite compiles each shape once.


@functools.cache
def shared_search_cache() -> SearchCache:
    """One SearchCache per test process: a search compiled once serves every test."""
    return SearchCache()


@functools.cache
def _template() -> tuple[tempfile.TemporaryDirectory, TinyRepo]:
    tmp = tempfile.TemporaryDirectory(prefix="plum-serving-template-")
    return tmp, write_tiny_repo(Path(tmp.name) / "models", versions=2, n_videos=16)


def copy_tiny_repo(dest: Path | str) -> TinyRepo:
    """A private copy (at `dest`) of the shared template: versions 1 and 2 of the tiny
    model (different parameters), each shipping videos v0 .. v15 at seq 16."""
    _, template = _template()
    dest = Path(dest)
    shutil.copytree(template.base_path, dest)
    copy = TinyRepo(
        ModelRepository(dest),
        template.vocab,
        template.vocab_dir,
        template.model_config,
        template.snapshot,
        template.max_prompt_len,
        list(template.manifests),
    )
    return copy


# ---------------------------------------------------------------- an in-process server

ADMIN_TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# Few shapes so the suite compiles little: one beam width, batches of 1 and 4.
TEST_SERVING = {"beam_widths": (10,), "batch_sizes": (1, 4), "admin_token": ADMIN_TOKEN}


@dataclass
class ServingStack:
    """Everything `plum serve` runs, in this process, over a private copy of the template
    repository (no HTTP server: tests talk to `app` through fastapi.testclient)."""

    tiny: TinyRepo
    cfg: ServingConfig
    metrics: Metrics
    slot: ModelSlot
    batcher: Batcher
    app: Any

    def client(self) -> TestClient:
        return TestClient(self.app, raise_server_exceptions=False)


@contextmanager
def serving_stack(
    directory: Path | str, load: bool = True, **overrides: Any
) -> Iterator[ServingStack]:
    """A ServingStack over `directory`/models (a copy of versions 1 and 2); `load` serves
    the newest version first, as `plum serve` does at start. `overrides`: ServingConfig
    fields on top of TEST_SERVING."""
    tiny = copy_tiny_repo(Path(directory) / "models")
    cfg = ServingConfig(**(TEST_SERVING | overrides | {"model_repo": str(tiny.base_path)}))
    metrics = Metrics.for_component("serving")
    slot = ModelSlot(
        tiny.repo, cfg.beam_widths, cfg.batch_sizes, metrics, searches=shared_search_cache()
    )
    if load:
        slot.load_latest()
    with Batcher(lambda: slot.served, cfg.batch_sizes, cfg.max_wait_ms, metrics) as batcher:
        yield ServingStack(
            tiny, cfg, metrics, slot, batcher, create_app(slot, batcher, cfg, metrics)
        )
