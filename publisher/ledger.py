"""The publisher's ledger: what was decided, what serving should run, what each endpoint has.

A restarted publisher (kill -9 included) must neither push a version twice nor skip one,
so everything it learns is written durably, each write its own SQLite transaction
(STATE_DIR/ledger.sqlite, WAL):

    decisions(step, decision, reason, version, metrics JSON, at_ms)
        one row per trainer checkpoint step the gate looked at. A step is decided once:
        "published" and "rejected" are final, "deferred" (too few held-out examples)
        may be overwritten by a later cycle, "rolled_back" marks a published version that
        a rollback took back (its step is never published again).
    targets(id, version, cause, at_ms)
        the version serving should run, newest row last. It is written BEFORE a push, so
        a publisher killed mid-push pushes the same version again after a restart, and
        only to the endpoints whose /v1/status says otherwise.
    endpoints(endpoint, model_version, sid_version, delta_seq, at_ms)
        what each endpoint acknowledged: the model version its /v1/status confirmed and
        the SID delta sequence of its index, where the next delta starts.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from publisher.store import open_db, store_path, transaction

log = logging.getLogger(__name__)

FILENAME = "ledger.sqlite"

PUBLISHED = "published"
REJECTED = "rejected"
DEFERRED = "deferred"
ROLLED_BACK = "rolled_back"
DecisionKind = Literal["published", "rejected", "deferred", "rolled_back"]
FINAL = (PUBLISHED, REJECTED, ROLLED_BACK)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    step INTEGER PRIMARY KEY,
    decision TEXT NOT NULL,
    reason TEXT NOT NULL,
    version INTEGER,
    metrics TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS targets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    version INTEGER NOT NULL,
    cause TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS endpoints (
    endpoint TEXT PRIMARY KEY,
    model_version INTEGER,
    sid_version TEXT,
    delta_seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL
);
"""


class LedgerError(ValueError):
    """A ledger change that would contradict what is recorded."""


@dataclass(frozen=True)
class Decision:
    step: int
    decision: DecisionKind
    reason: str
    version: int | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    at_ms: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "decision": self.decision,
            "reason": self.reason,
            "version": self.version,
            "metrics": dict(self.metrics),
            "at_ms": self.at_ms,
        }


@dataclass(frozen=True)
class EndpointState:
    """What one endpoint acknowledged (all None/0 for one never pushed to)."""

    endpoint: str
    model_version: int | None = None
    sid_version: str | None = None  # of its SID index
    delta_seq: int = 0  # its index's delta sequence
    at_ms: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "model_version": self.model_version,
            "sid_version": self.sid_version,
            "delta_seq": self.delta_seq,
            "at_ms": self.at_ms,
        }


def _now_ms() -> int:
    return int(time.time() * 1000)


class Ledger:
    """See the module docstring. Thread-safe: the publisher's two jobs share one instance;
    another process may read (and `plum publish rollback` write) the same file."""

    def __init__(self, path: Path | str, clock_ms: Callable[[], int] = _now_ms) -> None:
        """`path`: the publisher's state directory (the ledger is its ledger.sqlite), or
        the .sqlite file itself."""
        self.path = store_path(path, FILENAME)
        self._db = open_db(self.path, _SCHEMA)
        self._lock = threading.Lock()
        self._clock_ms = clock_ms

    # ---- decisions
    def decide(
        self,
        step: int,
        decision: Literal["rejected", "deferred"],
        reason: str,
        metrics: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record a rejection or a deferral of `step`; False (nothing written) when the
        step already has a final decision."""
        if decision not in (REJECTED, DEFERRED):
            raise ValueError(f"decide() records rejected/deferred, not {decision!r}")
        with self._lock, transaction(self._db):
            if self._final(step):
                return False
            self._write_decision(step, decision, reason, None, metrics)
        return True

    def publish(
        self, step: int, version: int, reason: str, metrics: Mapping[str, Any] | None = None
    ) -> None:
        """Record `step` as published as `version` AND make `version` the target, in one
        transaction (a crash leaves both or neither)."""
        with self._lock, transaction(self._db):
            final = self._final(step)
            if final is not None and not (final.decision == PUBLISHED and final.version == version):
                raise LedgerError(f"step {step} is already {final.decision} ({final.reason})")
            self._write_decision(step, PUBLISHED, reason, version, metrics)
            self._write_target(version, f"publish step {step}")

    def decision(self, step: int) -> Decision | None:
        with self._lock:
            row = self._db.execute(
                "SELECT step, decision, reason, version, metrics, at_ms FROM decisions "
                "WHERE step = ?",
                (step,),
            ).fetchone()
        return None if row is None else _decision(row)

    def decisions(self, limit: int | None = None) -> list[Decision]:
        """Newest step first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT step, decision, reason, version, metrics, at_ms FROM decisions "
                "ORDER BY step DESC LIMIT ?",
                (-1 if limit is None else limit,),
            ).fetchall()
        return [_decision(r) for r in rows]

    def last_decided_step(self) -> int | None:
        """The newest step with a final decision: only checkpoints after it are candidates."""
        with self._lock:
            row = self._db.execute(
                "SELECT max(step) FROM decisions WHERE decision != ?", (DEFERRED,)
            ).fetchone()
        return None if row[0] is None else int(row[0])

    def published_versions(self) -> list[int]:
        """Versions published and not rolled back, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT version FROM decisions WHERE decision = ? ORDER BY version", (PUBLISHED,)
            ).fetchall()
        return [int(r[0]) for r in rows]

    # ---- the target
    def target(self) -> int | None:
        """The version serving should run (None: nothing published or rolled back to yet)."""
        with self._lock:
            row = self._db.execute(
                "SELECT version FROM targets ORDER BY id DESC LIMIT 1"
            ).fetchone()
        return None if row is None else int(row[0])

    def targets(self, limit: int = 20) -> list[dict[str, Any]]:
        """The target's history, newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT version, cause, at_ms FROM targets ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [{"version": int(v), "cause": c, "at_ms": int(t)} for v, c, t in rows]

    def previous_version(self) -> int | None:
        """The newest published (not rolled back) version before the target: what
        `plum publish rollback` without --to returns to."""
        target = self.target()
        earlier = [v for v in self.published_versions() if target is None or v < target]
        return earlier[-1] if earlier else None

    def rollback(self, version: int) -> list[int]:
        """Make `version` the target and mark every published version after it rolled back
        (their steps stay decided, so they are never published again); a rolled-back
        `version` itself becomes published again. Returns the versions rolled back."""
        with self._lock, transaction(self._db):
            rows = self._db.execute(
                "SELECT step, version FROM decisions WHERE decision = ? AND version > ?",
                (PUBLISHED, version),
            ).fetchall()
            for step, v in rows:
                self._db.execute(
                    "UPDATE decisions SET decision = ?, reason = ?, at_ms = ? WHERE step = ?",
                    (ROLLED_BACK, f"rolled back to version {version}", self._clock_ms(), step),
                )
                log.info("version %d (step %d) rolled back", v, step)
            self._db.execute(
                "UPDATE decisions SET decision = ?, reason = ? WHERE decision = ? AND version = ?",
                (PUBLISHED, f"restored by a rollback to version {version}", ROLLED_BACK, version),
            )
            self._write_target(version, "rollback")
        return sorted(int(v) for _, v in rows)

    # ---- endpoints
    def endpoint(self, endpoint: str) -> EndpointState:
        with self._lock:
            row = self._db.execute(
                "SELECT endpoint, model_version, sid_version, delta_seq, at_ms FROM endpoints "
                "WHERE endpoint = ?",
                (endpoint,),
            ).fetchone()
        return EndpointState(endpoint) if row is None else _endpoint(row)

    def endpoints(self) -> list[EndpointState]:
        with self._lock:
            rows = self._db.execute(
                "SELECT endpoint, model_version, sid_version, delta_seq, at_ms FROM endpoints "
                "ORDER BY endpoint"
            ).fetchall()
        return [_endpoint(r) for r in rows]

    def acknowledge(
        self,
        endpoint: str,
        *,
        model_version: int | None,
        sid_version: str | None,
        delta_seq: int,
    ) -> None:
        """Record what `endpoint` confirmed: its model version and its index position."""
        with self._lock, transaction(self._db):
            self._db.execute(
                "INSERT INTO endpoints (endpoint, model_version, sid_version, delta_seq, at_ms) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (endpoint) DO UPDATE SET "
                "model_version = excluded.model_version, sid_version = excluded.sid_version, "
                "delta_seq = excluded.delta_seq, at_ms = excluded.at_ms",
                (endpoint, model_version, sid_version, int(delta_seq), self._clock_ms()),
            )

    def acknowledge_deltas(self, endpoint: str, sid_version: str, delta_seq: int) -> None:
        """Record the index position of `endpoint`, its model version unchanged."""
        with self._lock, transaction(self._db):
            self._db.execute(
                "INSERT INTO endpoints (endpoint, model_version, sid_version, delta_seq, at_ms) "
                "VALUES (?, NULL, ?, ?, ?) ON CONFLICT (endpoint) DO UPDATE SET "
                "sid_version = excluded.sid_version, delta_seq = excluded.delta_seq, "
                "at_ms = excluded.at_ms",
                (endpoint, sid_version, int(delta_seq), self._clock_ms()),
            )

    # ---- plumbing
    def _final(self, step: int) -> Decision | None:
        row = self._db.execute(
            "SELECT step, decision, reason, version, metrics, at_ms FROM decisions "
            "WHERE step = ? AND decision != ?",
            (step, DEFERRED),
        ).fetchone()
        return None if row is None else _decision(row)

    def _write_decision(
        self,
        step: int,
        decision: str,
        reason: str,
        version: int | None,
        metrics: Mapping[str, Any] | None,
    ) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO decisions (step, decision, reason, version, metrics, at_ms) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                int(step),
                decision,
                reason,
                version,
                json.dumps(dict(metrics or {}), sort_keys=True, allow_nan=True),
                self._clock_ms(),
            ),
        )

    def _write_target(self, version: int, cause: str) -> None:
        self._db.execute(
            "INSERT INTO targets (version, cause, at_ms) VALUES (?, ?, ?)",
            (int(version), cause, self._clock_ms()),
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _decision(row: tuple) -> Decision:
    step, decision, reason, version, metrics, at_ms = row
    return Decision(
        int(step),
        decision,
        reason,
        None if version is None else int(version),
        json.loads(metrics),
        int(at_ms),
    )


def _endpoint(row: tuple) -> EndpointState:
    endpoint, model_version, sid_version, delta_seq, at_ms = row
    return EndpointState(
        endpoint,
        None if model_version is None else int(model_version),
        sid_version,
        int(delta_seq),
        int(at_ms),
    )
