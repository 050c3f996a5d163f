"""The store: the one module that owns SQL.

SQLite in WAL mode with ``synchronous=FULL`` so that a committed row survives power loss.
One connection guarded by a lock: every DICOM association thread and the worker share it;
SQLite serialises writers anyway and the statements here are short.
SQL is kept portable (no SQLite-only syntax beyond pragmas and ``ON CONFLICT``) so that a
PostgreSQL backend can follow.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

STATES = ("received", "processing", "reported", "delivered", "rejected", "failed")

#: Allowed state transitions. ``processing -> received`` is the restart path.
TRANSITIONS: dict[str, frozenset[str]] = {
    "received": frozenset({"processing"}),
    "processing": frozenset({"reported", "rejected", "failed", "received"}),
    "reported": frozenset({"delivered", "received"}),
    "delivered": frozenset({"received"}),
    "rejected": frozenset({"received"}),
    "failed": frozenset({"received"}),
}

_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE instances (
        id INTEGER PRIMARY KEY,
        sop_instance_uid TEXT NOT NULL UNIQUE,
        sop_class_uid TEXT NOT NULL,
        study_instance_uid TEXT,
        series_instance_uid TEXT,
        accession_number TEXT,
        transfer_syntax_uid TEXT NOT NULL,
        calling_ae TEXT NOT NULL,
        peer_address TEXT NOT NULL,
        spool_path TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        state TEXT NOT NULL
            CHECK (state IN ('received','processing','reported','delivered','rejected','failed')),
        state_reason TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        received_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX instances_state ON instances (state, id);
    CREATE TABLE rejections (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        calling_ae TEXT,
        peer_address TEXT,
        sop_class_uid TEXT,
        sop_instance_uid TEXT,
        status INTEGER NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        sop_instance_uid TEXT,
        detail TEXT
    );
    CREATE INDEX audit_uid ON audit (sop_instance_uid);
    """,
)


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class StateError(Exception):
    """An instance was asked to make a transition the state machine does not allow."""


@dataclass(frozen=True)
class Instance:
    id: int
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str | None
    series_instance_uid: str | None
    accession_number: str | None
    transfer_syntax_uid: str
    calling_ae: str
    peer_address: str
    spool_path: str
    size_bytes: int
    sha256: str
    state: str
    state_reason: str | None
    attempts: int
    received_at: str
    updated_at: str


@dataclass(frozen=True)
class NewInstance:
    """What ingest knows about a received object once its file is durable."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str | None
    series_instance_uid: str | None
    accession_number: str | None
    transfer_syntax_uid: str
    calling_ae: str
    peer_address: str
    spool_path: str
    size_bytes: int
    sha256: str


class Store:
    """All persistent state of the daemon. Thread-safe."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._migrate()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _migrate(self) -> None:
        with self._lock:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(_MIGRATIONS):
                raise RuntimeError(
                    f"database {self.path} has schema version {version}, newer than this software "
                    f"({len(_MIGRATIONS)}); refusing to run an older daemon on it"
                )
            for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
                self._db.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version={number};\nCOMMIT;")

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    # --- instances -------------------------------------------------------------------------

    def record_received(self, new: NewInstance, actor: str) -> bool:
        """Insert a received instance. Returns False if the SOPInstanceUID was already known."""
        now = utcnow()
        with self._tx() as db:
            cur = db.execute(
                """INSERT INTO instances (sop_instance_uid, sop_class_uid, study_instance_uid,
                       series_instance_uid, accession_number, transfer_syntax_uid, calling_ae,
                       peer_address, spool_path, size_bytes, sha256, state, received_at, updated_at)
                   VALUES (?,?,?,?,?,?,?,?,?,?,?,'received',?,?)
                   ON CONFLICT (sop_instance_uid) DO NOTHING""",
                (
                    new.sop_instance_uid,
                    new.sop_class_uid,
                    new.study_instance_uid,
                    new.series_instance_uid,
                    new.accession_number,
                    new.transfer_syntax_uid,
                    new.calling_ae,
                    new.peer_address,
                    new.spool_path,
                    new.size_bytes,
                    new.sha256,
                    now,
                    now,
                ),
            )
            inserted = cur.rowcount == 1
            self._audit(
                db, actor, "received" if inserted else "received-duplicate", new.sop_instance_uid, None
            )
        return inserted

    def has_instance(self, sop_instance_uid: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
            ).fetchone()
        return row is not None

    def get_instance(self, sop_instance_uid: str) -> Instance | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
            ).fetchone()
        return Instance(**dict(row)) if row else None

    def instances(self, state: str | None = None, limit: int = 1000) -> list[Instance]:
        query = "SELECT * FROM instances"
        args: tuple[Any, ...] = ()
        if state is not None:
            query += " WHERE state = ?"
            args = (state,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id LIMIT ?", (*args, limit)).fetchall()
        return [Instance(**dict(r)) for r in rows]

    def known_spool_paths(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT spool_path FROM instances")}

    def set_state(
        self, sop_instance_uid: str, new_state: str, *, actor: str, reason: str | None = None
    ) -> None:
        """Move an instance along the state machine; refuses transitions it does not allow."""
        if new_state not in STATES:
            raise StateError(f"unknown state {new_state!r}")
        with self._tx() as db:
            row = db.execute(
                "SELECT state FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
            ).fetchone()
            if row is None:
                raise StateError(f"no instance {sop_instance_uid}")
            if new_state not in TRANSITIONS[row["state"]]:
                raise StateError(f"{sop_instance_uid}: {row['state']} -> {new_state} is not allowed")
            db.execute(
                "UPDATE instances SET state = ?, state_reason = ?, updated_at = ?,"
                " attempts = attempts + (CASE WHEN ? = 'processing' THEN 1 ELSE 0 END)"
                " WHERE sop_instance_uid = ?",
                (new_state, reason, utcnow(), new_state, sop_instance_uid),
            )
            self._audit(db, actor, f"state:{row['state']}->{new_state}", sop_instance_uid, reason)

    def claim_next(self, actor: str) -> Instance | None:
        """Atomically take the oldest ``received`` instance and mark it ``processing``."""
        with self._tx() as db:
            row = db.execute(
                "SELECT sop_instance_uid FROM instances WHERE state = 'received' ORDER BY id LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            uid = row[0]
            db.execute(
                "UPDATE instances SET state = 'processing', updated_at = ?, attempts = attempts + 1"
                " WHERE sop_instance_uid = ?",
                (utcnow(), uid),
            )
            self._audit(db, actor, "state:received->processing", uid, None)
        return self.get_instance(uid)

    def requeue_interrupted(self, actor: str) -> int:
        """After a restart, instances left ``processing`` go back to ``received``."""
        with self._tx() as db:
            uids = [
                r[0] for r in db.execute("SELECT sop_instance_uid FROM instances WHERE state = 'processing'")
            ]
            db.execute(
                "UPDATE instances SET state = 'received', state_reason = 'requeued after restart',"
                " updated_at = ? WHERE state = 'processing'",
                (utcnow(),),
            )
            for uid in uids:
                self._audit(db, actor, "state:processing->received", uid, "requeued after restart")
        return len(uids)

    def counts_by_state(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM instances GROUP BY state").fetchall()
        counts = dict.fromkeys(STATES, 0)
        counts.update({r[0]: r[1] for r in rows})
        return counts

    # --- rejections and audit ----------------------------------------------------------------

    def record_rejection(
        self,
        *,
        status: int,
        reason: str,
        calling_ae: str | None,
        peer_address: str | None,
        sop_class_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO rejections (at, calling_ae, peer_address, sop_class_uid, sop_instance_uid,"
                " status, reason) VALUES (?,?,?,?,?,?,?)",
                (utcnow(), calling_ae, peer_address, sop_class_uid, sop_instance_uid, status, reason),
            )

    def rejection_counts(self) -> dict[str, int]:
        """Rejections grouped by status code (hex string) and the first words of the reason."""
        with self._lock:
            rows = self._db.execute("SELECT status, reason FROM rejections").fetchall()
        counts: dict[str, int] = {}
        for status, reason in rows:
            key = f"0x{status:04X} {reason.split(':', 1)[0]}"
            counts[key] = counts.get(key, 0) + 1
        return counts

    def audit(self, actor: str, action: str, sop_instance_uid: str | None = None, **detail: Any) -> None:
        with self._tx() as db:
            self._audit(db, actor, action, sop_instance_uid, detail or None)

    def audit_trail(self, sop_instance_uid: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT at, actor, action, detail FROM audit WHERE sop_instance_uid = ? ORDER BY id",
                (sop_instance_uid,),
            ).fetchall()
        return [dict(r) for r in rows]

    @staticmethod
    def _audit(db: sqlite3.Connection, actor: str, action: str, uid: str | None, detail: Any) -> None:
        text = None if detail is None else (detail if isinstance(detail, str) else json.dumps(detail))
        db.execute(
            "INSERT INTO audit (at, actor, action, sop_instance_uid, detail) VALUES (?,?,?,?,?)",
            (utcnow(), actor, action, uid, text),
        )
