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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streams.contracts.sid import DEFAULT_DISAMBIGUATION_SIZE

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
    return ".".join(map(str, map(int, sid)))


def _parse_sid(text: str) -> tuple[int, ...]:
    return tuple(int(c) for c in text.split("."))


# Bound parameters per IN (...) query: under SQLite's default limit of 999 on old builds.
_IN_CHUNK = 900


def _marks(n: int) -> str:
    return ",".join("?" * n)


class SidIndex:
    """One SQLite file; not shared between processes that write (one service per version)."""

    def __init__(self, path: Path | str, disambiguation_size: int = DEFAULT_DISAMBIGUATION_SIZE):
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
        self.begin()
        try:
            yield self
        except BaseException:
            self.rollback()
            raise
        else:
            self.commit()

    def begin(self) -> None:
        """Open a write transaction explicitly (for a commit that waits on something else,
        like the SID service's Kafka transaction); end it with commit() or rollback()."""
        self._db.execute("BEGIN IMMEDIATE")
        self._in_tx = True

    def commit(self) -> None:
        self._db.execute("COMMIT")
        self._in_tx = False

    def rollback(self) -> None:
        self._db.execute("ROLLBACK")
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

    def lookup_many(self, version: str, video_ids: Iterable[str]) -> dict[str, tuple[int, ...]]:
        """The SIDs of those of `video_ids` that have one under `version` (one query per chunk)."""
        ids = list(video_ids)
        found: dict[str, tuple[int, ...]] = {}
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            rows = self._db.execute(
                f"SELECT video_id, sid FROM sids WHERE version = ? AND video_id IN ({_marks(len(chunk))})",
                (version, *chunk),
            )
            found.update((video, _parse_sid(sid)) for video, sid in rows)
        return found

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

    def assign_many(
        self, version: str, codes: Iterable[tuple[str, Iterable[int]]], ts: int
    ) -> list[Assignment | SidSpaceExhausted]:
        """`assign` for many videos at once, in order; the same SIDs as calling it per video.

        A video whose prefix is full gets its `SidSpaceExhausted` in its place in the
        result (nothing written for it); the others are written with one `executemany`
        per table, which is what makes a batch of thousands cheap.
        """
        items = [(video, tuple(map(int, row))) for video, row in codes]
        existing = self.lookup_many(version, {video for video, _ in items})
        texts = [_sid_text(row) for _, row in items]  # each video's prefix
        next_code = self._next_codes(
            version,
            {t for (video, _), t in zip(items, texts, strict=True) if video not in existing},
        )
        out: list[Assignment | SidSpaceExhausted] = []
        sid_rows: list[tuple[str, str, str, int]] = []
        used: set[str] = set()
        for (video, row), prefix in zip(items, texts, strict=True):
            sid = existing.get(video)
            if sid is not None:
                out.append(Assignment(video, sid, version, ts, new=False))
                continue
            code = next_code.get(prefix, 0)
            if code >= self.disambiguation_size:
                out.append(
                    SidSpaceExhausted(
                        f"prefix {prefix} of version {version} already has {code} videos "
                        f"(disambiguation_size {self.disambiguation_size}); video {video!r} cannot get a SID"
                    )
                )
                continue
            next_code[prefix] = code + 1
            sid = (*row, code)
            existing[video] = sid  # a video listed twice keeps its first SID
            used.add(prefix)
            sid_rows.append((version, video, f"{prefix}.{code}" if prefix else str(code), ts))
            out.append(Assignment(video, sid, version, ts, new=True))
        if sid_rows:
            self._db.executemany(
                "INSERT INTO sids (version, video_id, sid, ts) VALUES (?, ?, ?, ?)", sid_rows
            )
            self._db.executemany(
                "INSERT INTO prefixes (version, prefix, next_code) VALUES (?, ?, ?) "
                "ON CONFLICT (version, prefix) DO UPDATE SET next_code = MAX(next_code, excluded.next_code)",
                [(version, p, next_code[p]) for p in used],
            )
        return out

    def _next_codes(self, version: str, prefixes: Iterable[str]) -> dict[str, int]:
        wanted = list(prefixes)
        found: dict[str, int] = {}
        for start in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[start : start + _IN_CHUNK]
            rows = self._db.execute(
                f"SELECT prefix, next_code FROM prefixes WHERE version = ? AND prefix IN ({_marks(len(chunk))})",
                (version, *chunk),
            )
            found.update(rows)
        return found

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

    def remember_items(
        self,
        layout: Mapping[str, int],
        video_ids: Sequence[str],
        ts: Sequence[int],
        vectors: np.ndarray,
    ) -> None:
        """`remember_item` for many items at once. `vectors` is [len(video_ids), total
        length]: each row the item's modalities concatenated in `layout` ({modality:
        length}) order."""
        layout_text = json.dumps({k: int(v) for k, v in layout.items()})
        flat = np.ascontiguousarray(vectors, np.float32)
        blob, width = flat.tobytes(), flat.shape[1] * 4 if flat.ndim == 2 else 0
        self._db.executemany(
            "INSERT INTO items (video_id, ts, layout, embeddings) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (video_id) DO UPDATE SET ts = excluded.ts, layout = excluded.layout, "
            "embeddings = excluded.embeddings",
            [
                (video, t, layout_text, blob[i * width : (i + 1) * width])
                for i, (video, t) in enumerate(zip(video_ids, ts, strict=True))
            ],
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
