"""SQLite plumbing shared by the publisher's two stores (deltas.py, ledger.py).

Both must survive a kill -9 with every committed write and be readable by another process
(`plum publish status`) while the publisher runs: WAL journal, synchronous=FULL, one
autocommit connection per store, explicit BEGIN IMMEDIATE transactions for the writes
that belong together.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BUSY_TIMEOUT_S = 30.0  # another process may hold the write lock briefly


def store_path(path: Path | str, filename: str) -> Path:
    """The SQLite file: `path` itself when it names a .sqlite file, else path/filename
    (the publisher's state directory)."""
    path = Path(path)
    return path if path.suffix == ".sqlite" else path / filename


def open_db(path: Path, schema: str) -> sqlite3.Connection:
    """A connection to `path` (parents created) with `schema` applied; usable from any
    thread, so the caller serialises access with its own lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # a kill -9 right after COMMIT must not lose it
    db.executescript(schema)
    return db


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on an error: all of it or nothing."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
