"""The expert-review worklist: cases, their images and the reviewers' decisions."""

from __future__ import annotations

import json
from typing import Any

from cds_daemon.common.clock import timestamp
from cds_daemon.common.vocabulary import WorklistStatus
from cds_daemon.store.database import Session, StoreBase
from cds_daemon.store.records import Decision, WorklistItem


class WorklistStore(StoreBase):
    def _worklist_add(self, db: Session, uid: str, priority: int, actor: str, *, audit: bool = False) -> None:
        """File a referred (or audit-sampled) image under its case (the key ingest recorded); reopen a
        finished case."""
        inst = db.execute(
            "SELECT study_instance_uid, accession_number, case_key FROM instances WHERE sop_instance_uid = ?", (uid,)
        ).fetchone()
        key = inst["case_key"]
        now = timestamp()
        db.execute(
            """INSERT INTO worklist (case_key, study_instance_uid, accession_number, priority, status,
                   created_at, updated_at) VALUES (?,?,?,?,'open',?,?)
               ON CONFLICT (case_key) DO UPDATE SET
                   priority = CASE WHEN excluded.priority < worklist.priority
                       THEN excluded.priority ELSE worklist.priority END,
                   status = CASE WHEN worklist.status = 'done' THEN 'open' ELSE worklist.status END,
                   updated_at = excluded.updated_at""",
            (key, inst["study_instance_uid"], inst["accession_number"], priority, now, now),
        )
        item_id = db.execute("SELECT id FROM worklist WHERE case_key = ?", (key,)).fetchone()[0]
        db.execute(
            "INSERT INTO worklist_images (worklist_id, sop_instance_uid, audit, added_seq) VALUES (?, ?, ?,"
            " (SELECT COALESCE(MAX(added_seq), 0) + 1 FROM worklist_images WHERE worklist_id = ?))"
            " ON CONFLICT (sop_instance_uid) DO NOTHING",
            (item_id, uid, int(audit), item_id),
        )
        action = "worklist:add-audit" if audit else "worklist:add"
        self._audit(db, actor, action, uid, {"worklist_id": item_id, "priority": priority})

    def _worklist_item(self, db: Session, row: Any) -> WorklistItem:
        images = tuple(
            r[0]
            for r in db.execute(
                "SELECT sop_instance_uid FROM worklist_images WHERE worklist_id = ? ORDER BY added_seq", (row["id"],)
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

    def worklist_item_of(self, sop_instance_uid: str) -> WorklistItem | None:
        """The latest worklist item that holds this image."""
        with self._lock:
            row = self._db.execute(
                "SELECT w.* FROM worklist w JOIN worklist_images wi ON wi.worklist_id = w.id"
                " WHERE wi.sop_instance_uid = ? ORDER BY w.id DESC LIMIT 1",
                (sop_instance_uid,),
            ).fetchone()
            return self._worklist_item(self._db, row) if row else None

    def worklist_counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM worklist GROUP BY status").fetchall()
        counts = dict.fromkeys((str(v) for v in WorklistStatus), 0)
        counts.update({r[0]: r[1] for r in rows})
        return counts

    def worklist_assign(self, item_id: int, username: str) -> None:
        """A reviewer opens the case: it is theirs and ``in_review`` (unless already done)."""
        with self._tx() as db:
            db.execute(
                "UPDATE worklist SET assignee = ?, status = CASE WHEN status = 'done' THEN 'done' ELSE 'in_review' END,"
                " updated_at = ? WHERE id = ?",
                (username, timestamp(), item_id),
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
            now = timestamp()
            for item_id in ids:
                db.execute(
                    "UPDATE worklist SET status = 'escalated', escalated_at = ?, updated_at = ? WHERE id = ?",
                    (now, now, item_id),
                )
                self._audit(db, actor, "worklist:escalate", None, {"worklist_id": item_id})
        return ids

    def decisions(self, worklist_id: int | None = None) -> list[Decision]:
        query, args = "SELECT * FROM decisions", tuple[int, ...]()
        if worklist_id is not None:
            query, args = query + " WHERE worklist_id = ?", (worklist_id,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id", args).fetchall()
        return [Decision(**dict(r)) for r in rows]
