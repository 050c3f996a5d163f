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
    """
    CREATE TABLE predictions (
        id INTEGER PRIMARY KEY,
        sop_instance_uid TEXT NOT NULL UNIQUE REFERENCES instances (sop_instance_uid),
        model_name TEXT NOT NULL,
        model_version TEXT NOT NULL,
        model_sha256 TEXT NOT NULL,
        predicted TEXT,
        probabilities TEXT,
        referred INTEGER NOT NULL,
        reasons TEXT NOT NULL,
        detail TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        sop_instance_uid TEXT NOT NULL REFERENCES instances (sop_instance_uid),
        kind TEXT NOT NULL,
        object_uid TEXT NOT NULL,
        sop_class_uid TEXT NOT NULL,
        destination TEXT NOT NULL,
        path TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending','delivered','dead')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at TEXT NOT NULL,
        last_error TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        UNIQUE (object_uid, destination)
    );
    CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
    CREATE INDEX outbox_source ON outbox (sop_instance_uid);
    """,
    """
    CREATE TABLE worklist (
        id INTEGER PRIMARY KEY,
        case_key TEXT NOT NULL UNIQUE,
        study_instance_uid TEXT,
        accession_number TEXT,
        priority INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('open','in_review','done','escalated')),
        assignee TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        escalated_at TEXT
    );
    CREATE INDEX worklist_status ON worklist (status, priority, created_at);
    CREATE TABLE worklist_images (
        worklist_id INTEGER NOT NULL REFERENCES worklist (id),
        sop_instance_uid TEXT NOT NULL UNIQUE REFERENCES instances (sop_instance_uid)
    );
    CREATE TABLE decisions (
        id INTEGER PRIMARY KEY,
        worklist_id INTEGER NOT NULL REFERENCES worklist (id),
        sop_instance_uid TEXT NOT NULL REFERENCES instances (sop_instance_uid),
        reviewer TEXT NOT NULL,
        decision TEXT NOT NULL CHECK (decision IN ('confirm','change','non_diagnostic')),
        ai_class TEXT,
        final_class TEXT,
        comment TEXT,
        review_sr_uid TEXT,
        decided_at TEXT NOT NULL
    );
    CREATE INDEX decisions_item ON decisions (worklist_id);
    CREATE TABLE users (
        username TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('reviewer','admin')),
        full_name TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0
    );
    """,
    """
    ALTER TABLE instances ADD COLUMN purged_at TEXT;
    CREATE INDEX instances_purge ON instances (state, updated_at);
    """,
    """
    ALTER TABLE outbox ADD COLUMN commit_txn TEXT;
    CREATE INDEX outbox_commit ON outbox (commit_txn);
    """,
    """
    ALTER TABLE rejections ADD COLUMN code TEXT;
    """,
)


_OUTBOX_SELECT = (
    "SELECT id, sop_instance_uid, kind, object_uid, sop_class_uid, destination, path, state,"
    " attempts, next_attempt_at, last_error, commit_txn FROM outbox"
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
    purged_at: str | None = None


@dataclass(frozen=True)
class OutputObject:
    """A DICOM object made for a source instance, waiting in the outbox."""

    kind: str
    object_uid: str
    sop_class_uid: str
    path: str


@dataclass(frozen=True)
class OutboxItem:
    id: int
    sop_instance_uid: str
    kind: str
    object_uid: str
    sop_class_uid: str
    destination: str
    path: str
    state: str
    attempts: int
    next_attempt_at: str
    last_error: str | None
    commit_txn: str | None = None  # stored, waiting for the PACS's storage commitment report


@dataclass(frozen=True)
class PredictionRecord:
    model_name: str
    model_version: str
    model_sha256: str
    predicted: str | None
    probabilities: list[float] | None
    referred: bool
    reasons: list[str]
    detail: dict[str, Any]


@dataclass(frozen=True)
class WorklistItem:
    id: int
    case_key: str
    study_instance_uid: str | None
    accession_number: str | None
    priority: int
    status: str
    assignee: str | None
    created_at: str
    updated_at: str
    escalated_at: str | None
    images: tuple[str, ...]  # source SOPInstanceUIDs
    decided: tuple[str, ...]  # those with a decision
    reasons: tuple[str, ...]  # union of the images' referral reasons


@dataclass(frozen=True)
class Decision:
    id: int
    worklist_id: int
    sop_instance_uid: str
    reviewer: str
    decision: str
    ai_class: str | None
    final_class: str | None
    comment: str | None
    review_sr_uid: str | None
    decided_at: str


@dataclass(frozen=True)
class User:
    username: str
    password_hash: str
    role: str
    full_name: str
    created_at: str
    disabled: bool


WORKLIST_STATUSES = ("open", "in_review", "done", "escalated")


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
            self._audit(db, actor, "received" if inserted else "received-duplicate", new.sop_instance_uid, None)
        return inserted

    def has_instance(self, sop_instance_uid: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)).fetchone()
        return row is not None

    def get_instance(self, sop_instance_uid: str) -> Instance | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)).fetchone()
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

    def set_state(self, sop_instance_uid: str, new_state: str, *, actor: str, reason: str | None = None) -> None:
        """Move an instance along the state machine; refuses transitions it does not allow."""
        if new_state not in STATES:
            raise StateError(f"unknown state {new_state!r}")
        with self._tx() as db:
            self._transition(db, sop_instance_uid, new_state, actor, reason)

    def _transition(
        self, db: sqlite3.Connection, sop_instance_uid: str, new_state: str, actor: str, reason: str | None
    ) -> None:
        row = db.execute("SELECT state FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)).fetchone()
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
            uids = [r[0] for r in db.execute("SELECT sop_instance_uid FROM instances WHERE state = 'processing'")]
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

    def purgeable(self, before: str, limit: int = 500) -> list[tuple[str, list[str]]]:
        """Delivered instances last updated before ``before`` whose files are still on disk:
        (uid, [spool file, result files])."""
        with self._lock:
            rows = self._db.execute(
                "SELECT sop_instance_uid, spool_path FROM instances WHERE state = 'delivered' AND purged_at IS NULL"
                " AND updated_at < ? ORDER BY id LIMIT ?",
                (before, limit),
            ).fetchall()
            out = []
            for uid, spool_path in rows:
                results = [r[0] for r in self._db.execute("SELECT path FROM outbox WHERE sop_instance_uid = ?", (uid,))]
                out.append((uid, [spool_path, *results]))
        return out

    def mark_purged(self, sop_instance_uid: str, *, actor: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE instances SET purged_at = ? WHERE sop_instance_uid = ?", (utcnow(), sop_instance_uid))
            self._audit(db, actor, "purged-files", sop_instance_uid, None)

    # --- predictions and outbox ---------------------------------------------------------------

    def record_result(
        self,
        sop_instance_uid: str,
        prediction: PredictionRecord,
        outputs: list[OutputObject],
        destinations: list[str],
        *,
        actor: str,
    ) -> None:
        """Prediction, its outbox rows and ``processing -> reported``: all or nothing.

        Re-running an instance replaces its prediction and re-queues its objects (their UIDs
        are deterministic, so the PACS receives replacements, not duplicates).
        """
        now = utcnow()
        p = prediction
        with self._tx() as db:
            db.execute(
                """INSERT INTO predictions (sop_instance_uid, model_name, model_version, model_sha256,
                       predicted, probabilities, referred, reasons, detail, created_at)
                   VALUES (?,?,?,?,?,?,?,?,?,?)
                   ON CONFLICT (sop_instance_uid) DO UPDATE SET model_name = excluded.model_name,
                       model_version = excluded.model_version, model_sha256 = excluded.model_sha256,
                       predicted = excluded.predicted, probabilities = excluded.probabilities,
                       referred = excluded.referred, reasons = excluded.reasons, detail = excluded.detail,
                       created_at = excluded.created_at""",
                (
                    sop_instance_uid,
                    p.model_name,
                    p.model_version,
                    p.model_sha256,
                    p.predicted,
                    None if p.probabilities is None else json.dumps(p.probabilities),
                    int(p.referred),
                    json.dumps(p.reasons),
                    json.dumps(p.detail),
                    now,
                ),
            )
            for out in outputs:
                for dest in destinations:
                    db.execute(
                        """INSERT INTO outbox (sop_instance_uid, kind, object_uid, sop_class_uid, destination,
                               path, state, attempts, next_attempt_at, created_at, updated_at)
                           VALUES (?,?,?,?,?,?,'pending',0,?,?,?)
                           ON CONFLICT (object_uid, destination) DO UPDATE SET path = excluded.path,
                               state = 'pending', attempts = 0, next_attempt_at = excluded.next_attempt_at,
                               last_error = NULL, updated_at = excluded.updated_at""",
                        (
                            sop_instance_uid,
                            out.kind,
                            out.object_uid,
                            out.sop_class_uid,
                            dest,
                            out.path,
                            now,
                            now,
                            now,
                        ),
                    )
            self._transition(db, sop_instance_uid, "reported", actor, "referred" if p.referred else None)
            if p.referred:
                self._worklist_add(db, sop_instance_uid, int(p.detail.get("priority", 5)), actor)
            if not destinations:
                self._audit(db, actor, "no-destinations", sop_instance_uid, None)

    def get_prediction(self, sop_instance_uid: str) -> PredictionRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM predictions WHERE sop_instance_uid = ?", (sop_instance_uid,)
            ).fetchone()
        if row is None:
            return None
        return PredictionRecord(
            model_name=row["model_name"],
            model_version=row["model_version"],
            model_sha256=row["model_sha256"],
            predicted=row["predicted"],
            probabilities=None if row["probabilities"] is None else json.loads(row["probabilities"]),
            referred=bool(row["referred"]),
            reasons=json.loads(row["reasons"]),
            detail=json.loads(row["detail"]),
        )

    def due_outbox(self, now: str | None = None, limit: int = 100) -> list[OutboxItem]:
        """Pending items whose next attempt is due, oldest first."""
        with self._lock:
            rows = self._db.execute(
                _OUTBOX_SELECT
                + " WHERE state = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?",
                (now or utcnow(), limit),
            ).fetchall()
        return [OutboxItem(**dict(r)) for r in rows]

    def next_outbox_due(self) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT MIN(next_attempt_at) FROM outbox WHERE state = 'pending'").fetchone()
        return row[0]

    def outbox_items(self, sop_instance_uid: str) -> list[OutboxItem]:
        with self._lock:
            rows = self._db.execute(
                _OUTBOX_SELECT + " WHERE sop_instance_uid = ? ORDER BY id",
                (sop_instance_uid,),
            ).fetchall()
        return [OutboxItem(**dict(r)) for r in rows]

    def mark_delivered(self, item_id: int, *, actor: str) -> bool:
        """Mark one object delivered; returns True when that completed its source instance."""
        with self._tx() as db:
            row = db.execute(
                "SELECT sop_instance_uid, kind, destination FROM outbox WHERE id = ?", (item_id,)
            ).fetchone()
            db.execute(
                "UPDATE outbox SET state = 'delivered', attempts = attempts + (commit_txn IS NULL), last_error = NULL,"
                " updated_at = ? WHERE id = ?",
                (utcnow(), item_id),
            )
            uid = row["sop_instance_uid"]
            self._audit(db, actor, f"delivered:{row['kind']}", uid, {"destination": row["destination"]})
            left = db.execute(
                "SELECT COUNT(*) FROM outbox WHERE sop_instance_uid = ? AND state != 'delivered'", (uid,)
            ).fetchone()[0]
            state = db.execute("SELECT state FROM instances WHERE sop_instance_uid = ?", (uid,)).fetchone()[0]
            if left == 0 and state == "reported":
                self._transition(db, uid, "delivered", actor, None)
                return True
        return False

    def mark_retry(self, item_id: int, error: str, next_attempt_at: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?, updated_at = ?,"
                " commit_txn = NULL WHERE id = ?",
                (error[:500], next_attempt_at, utcnow(), item_id),
            )

    def mark_awaiting_commitment(self, item_ids: list[int], transaction_uid: str, resend_at: str) -> None:
        """Stored at the PACS, not yet committed: still pending, sent again at ``resend_at`` unless a report comes."""
        with self._tx() as db:
            db.executemany(
                "UPDATE outbox SET attempts = attempts + 1, last_error = NULL, next_attempt_at = ?, updated_at = ?,"
                " commit_txn = ? WHERE id = ? AND state = 'pending'",
                [(resend_at, utcnow(), transaction_uid, i) for i in item_ids],
            )
            for i in item_ids:
                row = db.execute("SELECT sop_instance_uid, kind FROM outbox WHERE id = ?", (i,)).fetchone()
                uid, action = row["sop_instance_uid"], f"commitment-requested:{row['kind']}"
                self._audit(db, "egress", action, uid, transaction_uid)

    def commitment_items(self, transaction_uid: str) -> list[OutboxItem]:
        """The pending items a storage commitment transaction covers (none once it was superseded)."""
        with self._lock:
            rows = self._db.execute(
                _OUTBOX_SELECT + " WHERE commit_txn = ? AND state = 'pending' ORDER BY id", (transaction_uid,)
            ).fetchall()
        return [OutboxItem(**dict(r)) for r in rows]

    def mark_dead(self, item_id: int, error: str, *, actor: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET state = 'dead', attempts = attempts + 1, last_error = ?, updated_at = ?"
                " WHERE id = ?",
                (error[:500], utcnow(), item_id),
            )
            row = db.execute(
                "SELECT sop_instance_uid, kind, destination FROM outbox WHERE id = ?", (item_id,)
            ).fetchone()
            self._audit(db, actor, f"dead-letter:{row['kind']}", row["sop_instance_uid"], error[:500])

    def outbox_counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall()
            awaiting = self._db.execute(
                "SELECT COUNT(*) FROM outbox WHERE state = 'pending' AND commit_txn IS NOT NULL"
            ).fetchone()[0]
        counts = {"pending": 0, "delivered": 0, "dead": 0}
        counts.update({r[0]: r[1] for r in rows})
        counts["awaiting_commitment"] = awaiting  # included in pending
        return counts

    def dead_letters(self, limit: int = 50) -> list[OutboxItem]:
        with self._lock:
            rows = self._db.execute(
                _OUTBOX_SELECT + " WHERE state = 'dead' ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [OutboxItem(**dict(r)) for r in rows]

    def referral_stats(self) -> dict[str, Any]:
        """Referral rate and predicted-class mix over every analysed image."""
        with self._lock:
            total, referred = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(referred), 0) FROM predictions"
            ).fetchone()
            rows = self._db.execute("SELECT predicted, COUNT(*) FROM predictions GROUP BY predicted").fetchall()
        return {
            "analysed": total,
            "referred": referred,
            "rate": referred / total if total else 0.0,
            "classes": {str(r[0]): r[1] for r in rows},
        }

    # --- worklist -------------------------------------------------------------------------------

    def _worklist_add(self, db: sqlite3.Connection, uid: str, priority: int, actor: str) -> None:
        """File a referred image under its case (accession, else study); reopen a finished case."""
        inst = db.execute(
            "SELECT study_instance_uid, accession_number FROM instances WHERE sop_instance_uid = ?", (uid,)
        ).fetchone()
        key = (
            f"accession:{inst['accession_number']}"
            if inst["accession_number"]
            else f"study:{inst['study_instance_uid'] or uid}"
        )
        now = utcnow()
        db.execute(
            """INSERT INTO worklist (case_key, study_instance_uid, accession_number, priority, status,
                   created_at, updated_at) VALUES (?,?,?,?,'open',?,?)
               ON CONFLICT (case_key) DO UPDATE SET priority = MIN(priority, excluded.priority),
                   status = CASE WHEN status = 'done' THEN 'open' ELSE status END, updated_at = excluded.updated_at""",
            (key, inst["study_instance_uid"], inst["accession_number"], priority, now, now),
        )
        item_id = db.execute("SELECT id FROM worklist WHERE case_key = ?", (key,)).fetchone()[0]
        db.execute(
            "INSERT INTO worklist_images (worklist_id, sop_instance_uid) VALUES (?, ?)"
            " ON CONFLICT (sop_instance_uid) DO NOTHING",
            (item_id, uid),
        )
        self._audit(db, actor, "worklist:add", uid, {"worklist_id": item_id, "priority": priority})

    def _worklist_item(self, db: sqlite3.Connection, row: sqlite3.Row) -> WorklistItem:
        images = tuple(
            r[0]
            for r in db.execute(
                "SELECT sop_instance_uid FROM worklist_images WHERE worklist_id = ? ORDER BY rowid", (row["id"],)
            )
        )
        decided = tuple(
            r[0]
            for r in db.execute("SELECT DISTINCT sop_instance_uid FROM decisions WHERE worklist_id = ?", (row["id"],))
        )
        reasons: list[str] = []
        for uid in images:
            pr = db.execute("SELECT reasons FROM predictions WHERE sop_instance_uid = ?", (uid,)).fetchone()
            for reason in json.loads(pr[0]) if pr else []:
                if reason not in reasons:
                    reasons.append(reason)
        return WorklistItem(**dict(row), images=images, decided=decided, reasons=tuple(reasons))

    def worklist(self, status: str | None = None, limit: int = 500) -> list[WorklistItem]:
        """Items by urgency: priority, then oldest first. ``status=None``: everything not done."""
        where, args = ("status = ?", (status,)) if status else ("status != 'done'", ())
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM worklist WHERE {where} ORDER BY priority, created_at LIMIT ?", (*args, limit)
            ).fetchall()
            return [self._worklist_item(self._db, r) for r in rows]

    def worklist_get(self, item_id: int) -> WorklistItem | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM worklist WHERE id = ?", (item_id,)).fetchone()
            return self._worklist_item(self._db, row) if row else None

    def worklist_counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM worklist GROUP BY status").fetchall()
        counts = dict.fromkeys(WORKLIST_STATUSES, 0)
        counts.update({r[0]: r[1] for r in rows})
        return counts

    def worklist_assign(self, item_id: int, username: str) -> None:
        """A reviewer opens the case: it is theirs and ``in_review`` (unless already done)."""
        with self._tx() as db:
            db.execute(
                "UPDATE worklist SET assignee = ?, status = CASE WHEN status = 'done' THEN 'done' ELSE 'in_review' END,"
                " updated_at = ? WHERE id = ?",
                (username, utcnow(), item_id),
            )
            self._audit(db, username, "worklist:open", None, {"worklist_id": item_id})

    def escalate_overdue(self, older_than: str, *, actor: str) -> list[int]:
        """Items still open or in review created before ``older_than`` become ``escalated``."""
        with self._tx() as db:
            ids = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM worklist WHERE status IN ('open','in_review') AND created_at < ?", (older_than,)
                )
            ]
            now = utcnow()
            for item_id in ids:
                db.execute(
                    "UPDATE worklist SET status = 'escalated', escalated_at = ?, updated_at = ? WHERE id = ?",
                    (now, now, item_id),
                )
                self._audit(db, actor, "worklist:escalate", None, {"worklist_id": item_id})
        return ids

    def record_decision(
        self,
        *,
        worklist_id: int,
        sop_instance_uid: str,
        reviewer: str,
        decision: str,
        ai_class: str | None,
        final_class: str | None,
        comment: str | None,
        review_sr: OutputObject | None,
        destinations: list[str],
    ) -> Decision:
        """Store a reviewer's decision and queue its verified SR; close the case when every image is decided."""
        now = utcnow()
        with self._tx() as db:
            member = db.execute(
                "SELECT 1 FROM worklist_images WHERE worklist_id = ? AND sop_instance_uid = ?",
                (worklist_id, sop_instance_uid),
            ).fetchone()
            if member is None:
                raise StateError(f"image {sop_instance_uid} is not in worklist item {worklist_id}")
            cur = db.execute(
                "INSERT INTO decisions (worklist_id, sop_instance_uid, reviewer, decision, ai_class, final_class,"
                " comment, review_sr_uid, decided_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    worklist_id,
                    sop_instance_uid,
                    reviewer,
                    decision,
                    ai_class,
                    final_class,
                    comment,
                    review_sr.object_uid if review_sr else None,
                    now,
                ),
            )
            if review_sr is not None:
                for dest in destinations:
                    db.execute(
                        """INSERT INTO outbox (sop_instance_uid, kind, object_uid, sop_class_uid, destination, path,
                               state, attempts, next_attempt_at, created_at, updated_at)
                           VALUES (?,?,?,?,?,?,'pending',0,?,?,?)
                           ON CONFLICT (object_uid, destination) DO NOTHING""",
                        (
                            sop_instance_uid,
                            review_sr.kind,
                            review_sr.object_uid,
                            review_sr.sop_class_uid,
                            dest,
                            review_sr.path,
                            now,
                            now,
                            now,
                        ),
                    )
            open_images = db.execute(
                "SELECT COUNT(*) FROM worklist_images wi WHERE wi.worklist_id = ? AND NOT EXISTS"
                " (SELECT 1 FROM decisions d WHERE d.worklist_id = wi.worklist_id"
                " AND d.sop_instance_uid = wi.sop_instance_uid)",
                (worklist_id,),
            ).fetchone()[0]
            if open_images == 0:
                db.execute("UPDATE worklist SET status = 'done', updated_at = ? WHERE id = ?", (now, worklist_id))
            self._audit(
                db,
                reviewer,
                f"decision:{decision}",
                sop_instance_uid,
                {"worklist_id": worklist_id, "ai_class": ai_class, "final_class": final_class},
            )
            row = db.execute("SELECT * FROM decisions WHERE id = ?", (cur.lastrowid,)).fetchone()
        return Decision(**dict(row))

    def decisions(self, worklist_id: int | None = None) -> list[Decision]:
        query, args = "SELECT * FROM decisions", ()
        if worklist_id is not None:
            query, args = query + " WHERE worklist_id = ?", (worklist_id,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id", args).fetchall()
        return [Decision(**dict(r)) for r in rows]

    def agreement(self) -> dict[str, Any]:
        """AI vs reviewer on the latest decision per image: confusion counts and override rate."""
        with self._lock:
            rows = self._db.execute(
                "SELECT d.ai_class, d.final_class, d.decision FROM decisions d"
                " WHERE d.id = (SELECT MAX(id) FROM decisions x WHERE x.sop_instance_uid = d.sop_instance_uid)"
            ).fetchall()
        pairs: dict[str, dict[str, int]] = {}
        overrides = 0
        for ai, final, decision in rows:
            final_key = final or "non_diagnostic"
            pairs.setdefault(ai or "none", {}).setdefault(final_key, 0)
            pairs[ai or "none"][final_key] += 1
            overrides += decision != "confirm"
        n = len(rows)
        return {"decisions": n, "overrides": overrides, "override_rate": overrides / n if n else None, "pairs": pairs}

    # --- users ---------------------------------------------------------------------------------

    def create_user(self, username: str, password_hash: str, role: str, full_name: str = "", *, actor: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO users (username, password_hash, role, full_name, created_at) VALUES (?,?,?,?,?)"
                " ON CONFLICT (username) DO UPDATE SET password_hash = excluded.password_hash, role = excluded.role,"
                " full_name = excluded.full_name, disabled = 0",
                (username, password_hash, role, full_name, utcnow()),
            )
            self._audit(db, actor, "user:set", None, {"username": username, "role": role})

    def get_user(self, username: str) -> User | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()
        return None if row is None else User(**{**dict(row), "disabled": bool(row["disabled"])})

    def users(self) -> list[User]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM users ORDER BY username").fetchall()
        return [User(**{**dict(r), "disabled": bool(r["disabled"])}) for r in rows]

    def disable_user(self, username: str, *, actor: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE users SET disabled = 1 WHERE username = ?", (username,))
            self._audit(db, actor, "user:disable", None, {"username": username})

    # --- rejections and audit ----------------------------------------------------------------

    def record_rejection(
        self,
        *,
        status: int,
        code: str,
        reason: str,
        calling_ae: str | None,
        peer_address: str | None,
        sop_class_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO rejections (at, calling_ae, peer_address, sop_class_uid, sop_instance_uid,"
                " status, code, reason) VALUES (?,?,?,?,?,?,?,?)",
                (utcnow(), calling_ae, peer_address, sop_class_uid, sop_instance_uid, status, code, reason),
            )

    def rejection_counts(self) -> dict[str, int]:
        """Rejections grouped by status (hex) and refusal code, e.g. ``{"0xA900 no_pixel_data": 2}``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT status, COALESCE(code, 'unknown'), COUNT(*) FROM rejections GROUP BY status, code"
            ).fetchall()
        return {f"0x{status:04X} {code}": n for status, code, n in rows}

    def recent_rejections(self, limit: int = 20) -> list[dict[str, Any]]:
        """The latest refusals with their full reasons (for ``status``; reasons name no patient data)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT at, calling_ae, peer_address, status, code, reason FROM rejections ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [dict(r) | {"status": f"0x{r['status']:04X}"} for r in rows]

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
