"""The connection, transactions and migrations under every aggregate of the store.

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
from pathlib import Path
from typing import Any

from cds_daemon.common.clock import timestamp
from cds_daemon.store.schema import MIGRATIONS


class StoreBase:
    """The database handle; each aggregate's methods live in a subclass, the facade combines them."""

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
            if version > len(MIGRATIONS):
                raise RuntimeError(
                    f"database {self.path} has schema version {version}, newer than this software "
                    f"({len(MIGRATIONS)}); refusing to run an older daemon on it"
                )
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                self._db.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version={number};\nCOMMIT;")

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

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
            (timestamp(), actor, action, uid, text),
        )
