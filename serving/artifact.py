"""The model repository: versioned serving artifacts, written by the publisher, read by serving.

TF-Serving's layout: one directory per version under a base path, the version a positive
integer that only grows (a directory here, an object-store prefix at scale):

    BASE/<version>/manifest.json    what the version is (`Manifest`), with a hash of the rest
    BASE/<version>/params/          inference parameters only (no optimizer state), orbax
    BASE/<version>/vocab/           the trainer vocabulary the parameters index (trainer/vocab.py)
    BASE/<version>/sid-index.json   the SID index of the model's sid_version at export time
                                    (`IndexSnapshot`): a new replica can serve at once, and
                                    SID deltas continue from its `seq`

A version is written into a hidden temporary directory and renamed into place when
complete, so a reader never sees half a version and a writer killed mid-write leaves only
a temporary directory (removed by the next write). `load` checks the content hash, the
parameters' finiteness and the manifest's claims before anything is served: a corrupt or
NaN artifact raises `ArtifactError` and is never served.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from trainer.prompt import PROMPT_LAYOUTS

MANIFEST = "manifest.json"
PARAMS = "params"
VOCAB = "vocab"
SID_INDEX = "sid-index.json"
FORMAT = 1
DTYPES = ("float32", "bfloat16")

# A SID version switch (a model of another sid_version than the one served) must bring an
# index that can replace the served one: every assignment numbered up to its seq, and at
# least this share of the videos the served index holds. Not 1.0: videos uploaded between
# the export and the push reach the new index as deltas right after the swap. Far below it
# is a reindex that has not finished, or no SID service assigning the new version.
SWITCH_MIN_COVERAGE = 0.99


class ArtifactError(ValueError):
    """A version that must not be served: missing, corrupt, non-finite or inconsistent."""


@dataclass(frozen=True)
class IndexSnapshot:
    """Every SID of one sid_version up to delta sequence `seq` (item i has sequence i + 1)."""

    sid_version: str
    seq: int
    video_ids: tuple[str, ...]
    sids: tuple[tuple[int, ...], ...]
    upload_ts: tuple[int, ...] = ()  # per item, epoch ms; () = unknown for all

    def __post_init__(self) -> None:
        if len(self.video_ids) != len(self.sids):
            raise ValueError(f"{len(self.video_ids)} video ids for {len(self.sids)} SIDs")
        if self.upload_ts and len(self.upload_ts) != len(self.video_ids):
            raise ValueError("upload_ts must be empty or one per video")
        if self.seq < len(self.video_ids):
            raise ValueError(f"seq={self.seq} < {len(self.video_ids)} items")

    def to_json(self) -> dict[str, Any]:
        return {
            "sid_version": self.sid_version,
            "seq": self.seq,
            "video_ids": list(self.video_ids),
            "sids": [list(s) for s in self.sids],
            "upload_ts": list(self.upload_ts),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> IndexSnapshot:
        return cls(
            sid_version=str(d["sid_version"]),
            seq=int(d["seq"]),
            video_ids=tuple(str(v) for v in d["video_ids"]),
            sids=tuple(tuple(int(c) for c in s) for s in d["sids"]),
            upload_ts=tuple(int(t) for t in d.get("upload_ts", ())),
        )


@dataclass(frozen=True)
class Manifest:
    """What a version is. `content_hash` covers every other file of the version."""

    version: int
    step: int  # the trainer checkpoint step it was exported from
    sid_version: str
    index_seq: int  # the SID index snapshot's delta sequence
    newest_event_ts_ms: int  # the newest example event time the model trained on (0 = none)
    created_at_ms: int
    dtype: str  # of the stored parameters: float32 or bfloat16
    model_config: dict[str, Any]  # trainer.config.ModelConfig.to_dict()
    max_prompt_len: int  # prompts are built exactly as in training (trainer/prompt.py)
    # in the layout the model was trained in (trainer.prompt.PROMPT_LAYOUTS); a version
    # written before the field existed was trained in "target"
    prompt_layout: str = "target"
    gate: dict[str, Any] = field(default_factory=dict)  # the gate's metrics and decision
    source: dict[str, Any] = field(default_factory=dict)  # run_dir, checkpoint step, ...
    content_hash: str = ""
    format: int = FORMAT

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Manifest:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ArtifactError(f"manifest has unknown fields {sorted(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class Artifact:
    """A loaded, verified version: ready to build a model and a SID index from."""

    manifest: Manifest
    params: Any  # nested dict of float32 numpy arrays
    vocab_dir: Path
    snapshot: IndexSnapshot
    path: Path


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_hash(directory: Path) -> str:
    """sha256 over (relative path, sha256 of the file) of every file but the manifest."""
    h = hashlib.sha256()
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    for p in files:
        rel = p.relative_to(directory).as_posix()
        h.update(rel.encode() + b"\0" + _file_digest(p).encode() + b"\n")
    return h.hexdigest()


def _leaves(tree: Any) -> list[np.ndarray]:
    if isinstance(tree, Mapping):
        return [leaf for key in sorted(tree) for leaf in _leaves(tree[key])]
    if isinstance(tree, (list, tuple)):
        return [leaf for item in tree for leaf in _leaves(item)]
    return [np.asarray(tree)]


def non_finite_leaves(params: Any) -> int:
    """How many parameter arrays hold a NaN or an infinity."""
    return sum(
        1
        for leaf in _leaves(params)
        if leaf.dtype.kind == "f" or str(leaf.dtype) == "bfloat16"
        if not np.isfinite(leaf.astype(np.float32)).all()
    )


def _map(tree: Any, fn) -> Any:
    if isinstance(tree, Mapping):
        return {k: _map(v, fn) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_map(v, fn) for v in tree)
    return fn(np.asarray(tree))


def cast_params(params: Any, dtype: str) -> Any:
    """Floating arrays to `dtype` (float32 or bfloat16); other arrays unchanged."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} must be one of {DTYPES}")
    import ml_dtypes  # ships with jax

    target = np.float32 if dtype == "float32" else ml_dtypes.bfloat16

    def cast(a: np.ndarray) -> np.ndarray:
        if a.dtype.kind == "f" or str(a.dtype) == "bfloat16":
            return a.astype(target)
        return a

    return _map(params, cast)


class ModelRepository:
    """BASE/<version>/ directories; versions are positive integers, newest = largest."""

    def __init__(self, base_path: Path | str) -> None:
        self.base_path = Path(base_path)

    def path(self, version: int) -> Path:
        return self.base_path / str(int(version))

    def versions(self) -> list[int]:
        """Complete versions (a manifest is present), oldest first."""
        if not self.base_path.is_dir():
            return []
        found = []
        for p in self.base_path.iterdir():
            if p.is_dir() and p.name.isdigit() and int(p.name) > 0 and (p / MANIFEST).is_file():
                found.append(int(p.name))
        return sorted(found)

    def latest(self) -> int | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def manifest(self, version: int) -> Manifest:
        path = self.path(version) / MANIFEST
        try:
            return Manifest.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            raise ArtifactError(
                f"version {version} does not exist under {self.base_path}"
            ) from None
        except (ValueError, TypeError) as err:
            raise ArtifactError(f"version {version}: unreadable manifest ({err})") from err

    def write(
        self,
        params: Any,
        vocab_dir: Path | str,
        snapshot: IndexSnapshot,
        *,
        step: int,
        model_config: Mapping[str, Any],
        max_prompt_len: int,
        newest_event_ts_ms: int,
        prompt_layout: str = "target",
        dtype: str = "float32",
        gate: Mapping[str, Any] | None = None,
        source: Mapping[str, Any] | None = None,
    ) -> Manifest:
        """Write the next version atomically and return its manifest.

        Refuses non-finite parameters (a NaN model is never written, let alone served)."""
        bad = non_finite_leaves(params)
        if bad:
            raise ArtifactError(f"{bad} parameter arrays are not finite; not exported")
        import orbax.checkpoint as ocp

        self.base_path.mkdir(parents=True, exist_ok=True)
        for stale in self.base_path.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        version = (self.latest() or 0) + 1
        tmp = self.base_path / f".tmp-{version}-{os.getpid()}"
        tmp.mkdir()
        try:
            checkpointer = ocp.StandardCheckpointer()
            checkpointer.save((tmp / PARAMS).absolute(), cast_params(params, dtype))
            checkpointer.wait_until_finished()
            checkpointer.close()
            shutil.copytree(vocab_dir, tmp / VOCAB)
            (tmp / SID_INDEX).write_text(json.dumps(snapshot.to_json()))
            manifest = Manifest(
                version=version,
                step=int(step),
                sid_version=snapshot.sid_version,
                index_seq=snapshot.seq,
                newest_event_ts_ms=int(newest_event_ts_ms),
                created_at_ms=int(time.time() * 1000),
                dtype=dtype,
                model_config=dict(model_config),
                max_prompt_len=int(max_prompt_len),
                prompt_layout=prompt_layout,
                gate=dict(gate or {}),
                source=dict(source or {}),
                content_hash=content_hash(tmp),
            )
            (tmp / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=1, sort_keys=True))
            os.rename(tmp, self.path(version))  # atomic: readers see all of it or nothing
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return manifest

    def load(self, version: int, expect_sid_version: str | None = None) -> Artifact:
        """The verified version: hash, finiteness and sid_version checked; float32 params."""
        manifest = self.manifest(version)
        path = self.path(version)
        if manifest.format != FORMAT:
            raise ArtifactError(f"version {version}: format {manifest.format} != {FORMAT}")
        if manifest.prompt_layout not in PROMPT_LAYOUTS:
            raise ArtifactError(
                f"version {version}: prompt_layout {manifest.prompt_layout!r} is not one of "
                f"{PROMPT_LAYOUTS}"
            )
        if expect_sid_version is not None and manifest.sid_version != expect_sid_version:
            raise ArtifactError(
                f"version {version} is built for sid_version {manifest.sid_version!r}, "
                f"not {expect_sid_version!r}"
            )
        actual = content_hash(path)
        if actual != manifest.content_hash:
            raise ArtifactError(
                f"version {version}: content hash {actual[:12]} != manifest's "
                f"{manifest.content_hash[:12]} (corrupt or modified artifact)"
            )
        try:
            snapshot = IndexSnapshot.from_json(json.loads((path / SID_INDEX).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ArtifactError(f"version {version}: unreadable SID index ({err})") from err
        if snapshot.sid_version != manifest.sid_version or snapshot.seq != manifest.index_seq:
            raise ArtifactError(
                f"version {version}: SID index ({snapshot.sid_version!r}, seq {snapshot.seq})"
                f" disagrees with the manifest ({manifest.sid_version!r}, "
                f"seq {manifest.index_seq})"
            )
        try:
            import orbax.checkpoint as ocp

            checkpointer = ocp.StandardCheckpointer()
            params = checkpointer.restore((path / PARAMS).absolute())
            checkpointer.close()
        except Exception as err:  # noqa: BLE001 - any failure to read is a bad artifact
            raise ArtifactError(f"version {version}: parameters do not restore ({err})") from err
        bad = non_finite_leaves(params)
        if bad:
            raise ArtifactError(f"version {version}: {bad} parameter arrays are not finite")
        return Artifact(manifest, cast_params(params, "float32"), path / VOCAB, snapshot, path)


def snapshot_of(
    sid_version: str,
    seq: int,
    rows: Sequence[tuple[str, Sequence[int], int]],
) -> IndexSnapshot:
    """An IndexSnapshot from (video_id, sid, upload_ts) rows in sequence order."""
    return IndexSnapshot(
        sid_version,
        seq,
        tuple(r[0] for r in rows),
        tuple(tuple(int(c) for c in r[1]) for r in rows),
        tuple(int(r[2]) for r in rows),
    )


class IndexContents(Protocol):
    """What a version switch checks of an index (an IndexSnapshot, serving's index)."""

    @property
    def sid_version(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def video_ids(self) -> Sequence[str]: ...


def switch_shortfall(
    snapshot: IndexContents,
    served_video_ids: Collection[str],
    min_coverage: float = SWITCH_MIN_COVERAGE,
) -> str | None:
    """Why `snapshot` (an index of a NEW sid_version) cannot replace an index holding
    `served_video_ids`; None when it can. Serving refuses such a version switch, and the
    publisher defers it rather than push an artifact serving would refuse."""
    if snapshot.seq != len(snapshot.video_ids):
        return (
            f"its {snapshot.sid_version!r} index is numbered to seq {snapshot.seq} but holds "
            f"{len(snapshot.video_ids)} assignments (incomplete)"
        )
    if not served_video_ids:
        return None
    held = set(snapshot.video_ids)
    missing = [v for v in served_video_ids if v not in held]
    coverage = 1.0 - len(missing) / len(served_video_ids)
    if coverage < min_coverage:
        return (
            f"its {snapshot.sid_version!r} index holds {len(served_video_ids) - len(missing)} "
            f"of the {len(served_video_ids)} videos served ({coverage:.1%} < "
            f"{min_coverage:.0%}; missing e.g. {missing[:3]}): the reindex is incomplete"
        )
    return None
