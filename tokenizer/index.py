"""The versioned SID index: the fast local copy of `plum.sid-assignments.v1`.

The compacted topic is the source of truth; this SQLite file (WAL mode) is the copy the
SID service reads and writes on every batch, and that `rebuild` restores from the topic
when it is missing or behind. Every SID belongs to a `sid_version` (the tokenizer that
made it); several versions live side by side until one is switched active.

Semantic IDs are always L + 1 codes long: the tokenizer's L codes and one
disambiguation code, 0 for the first video with those L codes, 1 for the second, and so
on ("the next free one for that prefix"). A fixed length keeps the trie and beam search
of the trainer one depth for every item, and makes "every published SID names exactly
one video" a UNIQUE constraint here. Assigning a video that already has a SID under a
version returns that SID unchanged, which makes replays and restarts idempotent.

Topic records are keyed `<sid_version>/<video_id>` (not just the video id): with a
plain video-id key, compaction would erase a video's old-version SID as soon as a
reindex wrote the new one, and the old version must stay readable until switched.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ACTIVE_VERSION_KEY = "active_version"


class SidSpaceExhausted(RuntimeError):
    """More videos share one L-code prefix than the disambiguation level has codes."""


@dataclass(frozen=True)
class Assignment:
    video_id: str
    sid: tuple[int, ...]
    sid_version: str
    ts: int
    new: bool  # False when the video already had this SID under this version


def topic_key(sid_version: str, video_id: str) -> bytes:
    return f"{sid_version}/{video_id}".encode()


def _sid_text(sid: Iterable[int]) -> str:
    return ".".join(str(int(c)) for c in sid)


def _parse_sid(text: str) -> tuple[int, ...]:
    return tuple(int(c) for c in text.split("."))


class SidIndex:
    """One SQLite file; not shared between processes that write (one service per version)."""

    def __init__(self, path: Path | str, disambiguation_size: int = 256):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.disambiguation_size = disambiguation_size
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS sids (
                version TEXT NOT NULL, video_id TEXT NOT NULL, sid TEXT NOT NULL,
                ts INTEGER NOT NULL, PRIMARY KEY (version, video_id), UNIQUE (version, sid));
            CREATE TABLE IF NOT EXISTS prefixes (
                version TEXT NOT NULL, prefix TEXT NOT NULL, next_code INTEGER NOT NULL,
                PRIMARY KEY (version, prefix));
            CREATE TABLE IF NOT EXISTS items (
                video_id TEXT PRIMARY KEY, ts INTEGER NOT NULL,
                layout TEXT NOT NULL,       -- JSON {modality: length}, in blob order
                embeddings BLOB NOT NULL);  -- float32 vectors, concatenated
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            """
        )
        self._in_tx = False

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ transactions

    @contextmanager
    def transaction(self) -> Iterator[SidIndex]:
        """All writes inside commit together or not at all."""
        self._db.execute("BEGIN IMMEDIATE")
        self._in_tx = True
        try:
            yield self
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")
        finally:
            self._in_tx = False

    # ------------------------------------------------------------------ reads

    def lookup(self, version: str, video_id: str) -> tuple[int, ...] | None:
        row = self._db.execute(
            "SELECT sid FROM sids WHERE version = ? AND video_id = ?", (version, video_id)
        ).fetchone()
        return None if row is None else _parse_sid(row[0])

    def video_for(self, version: str, sid: Iterable[int]) -> str | None:
        row = self._db.execute(
            "SELECT video_id FROM sids WHERE version = ? AND sid = ?", (version, _sid_text(sid))
        ).fetchone()
        return None if row is None else row[0]

    def all_sids(self, version: str) -> dict[str, tuple[int, ...]]:
        rows = self._db.execute("SELECT video_id, sid FROM sids WHERE version = ?", (version,))
        return {video: _parse_sid(sid) for video, sid in rows}

    def size(self, version: str) -> int:
        return self._db.execute(
            "SELECT COUNT(*) FROM sids WHERE version = ?", (version,)
        ).fetchone()[0]

    def versions(self) -> list[str]:
        return [
            r[0] for r in self._db.execute("SELECT DISTINCT version FROM sids ORDER BY version")
        ]

    # ------------------------------------------------------------------ writes

    def assign(self, version: str, video_id: str, codes: Iterable[int], ts: int) -> Assignment:
        """The SID of `video_id` under `version`: the existing one, or codes + next free code."""
        existing = self.lookup(version, video_id)
        if existing is not None:
            return Assignment(video_id, existing, version, ts, new=False)
        prefix = _sid_text(codes)
        row = self._db.execute(
            "SELECT next_code FROM prefixes WHERE version = ? AND prefix = ?", (version, prefix)
        ).fetchone()
        code = 0 if row is None else row[0]
        if code >= self.disambiguation_size:
            raise SidSpaceExhausted(
                f"prefix {prefix} of version {version} already has {code} videos "
                f"(disambiguation_size {self.disambiguation_size}); video {video_id!r} cannot get a SID"
            )
        sid = (*(int(c) for c in codes), code)
        self._put(version, video_id, sid, ts)
        return Assignment(video_id, sid, version, ts, new=True)

    def record(self, version: str, video_id: str, sid: Iterable[int], ts: int) -> None:
        """Store an assignment read from the topic (rebuild/sync); keeps prefixes consistent."""
        sid = tuple(int(c) for c in sid)
        current = self.lookup(version, video_id)
        if current == sid:
            return
        if current is not None:
            self._db.execute(
                "DELETE FROM sids WHERE version = ? AND video_id = ?", (version, video_id)
            )
        self._put(version, video_id, sid, ts)

    def _put(self, version: str, video_id: str, sid: tuple[int, ...], ts: int) -> None:
        prefix, code = _sid_text(sid[:-1]), sid[-1]
        self._db.execute(
            "INSERT INTO sids (version, video_id, sid, ts) VALUES (?, ?, ?, ?)",
            (version, video_id, _sid_text(sid), ts),
        )
        self._db.execute(
            "INSERT INTO prefixes (version, prefix, next_code) VALUES (?, ?, ?) "
            "ON CONFLICT (version, prefix) DO UPDATE SET next_code = MAX(next_code, excluded.next_code)",
            (version, prefix, code + 1),
        )

    # ------------------------------------------------------------------ items (for reindex)

    def remember_item(
        self, video_id: str, ts: int, embeddings: Mapping[str, Iterable[float]]
    ) -> None:
        """Keep an item's embeddings (float32) so a reindex needs no replay of uploads."""
        arrays = {k: np.asarray(v, np.float32) for k, v in embeddings.items()}
        layout = json.dumps({k: int(a.size) for k, a in arrays.items()})
        blob = b"".join(a.tobytes() for a in arrays.values())
        self._db.execute(
            "INSERT INTO items (video_id, ts, layout, embeddings) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (video_id) DO UPDATE SET ts = excluded.ts, layout = excluded.layout, "
            "embeddings = excluded.embeddings",
            (video_id, ts, layout, blob),
        )

    def items(self) -> Iterator[tuple[str, int, dict[str, np.ndarray]]]:
        rows = self._db.execute(
            "SELECT video_id, ts, layout, embeddings FROM items ORDER BY ts, video_id"
        )
        for video_id, ts, layout, blob in rows:
            flat = np.frombuffer(blob, np.float32)
            out, start = {}, 0
            for name, size in json.loads(layout).items():
                out[name] = flat[start : start + size].copy()
                start += size
            yield video_id, ts, out

    def item_count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    # ------------------------------------------------------------------ meta

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def topic_offsets(self, topic: str) -> dict[int, int]:
        """Next offset to read per partition of the assignments topic, as synced so far."""
        raw = self.get_meta(f"offsets:{topic}")
        return {int(k): v for k, v in json.loads(raw).items()} if raw else {}

    def set_topic_offsets(self, topic: str, offsets: Mapping[int, int]) -> None:
        merged = self.topic_offsets(topic)
        for p, o in offsets.items():
            merged[p] = max(merged.get(p, 0), o)
        self.set_meta(
            f"offsets:{topic}", json.dumps({str(k): v for k, v in sorted(merged.items())})
        )

    @property
    def active_version(self) -> str | None:
        return self.get_meta(ACTIVE_VERSION_KEY)

    def switch(self, version: str) -> None:
        if self.size(version) == 0:
            raise ValueError(
                f"version {version!r} has no SIDs in {self.path}; known: {self.versions()}"
            )
        self.set_meta(ACTIVE_VERSION_KEY, version)
