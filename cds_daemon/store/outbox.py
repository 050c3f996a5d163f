"""The outbox: result objects waiting for (or done with) delivery to each destination."""

from __future__ import annotations

from cds_daemon.common.clock import timestamp, timestamp_in
from cds_daemon.store.database import Session, StoreBase
from cds_daemon.store.records import OutboxItem, OutputObject

_OUTBOX_SELECT = (
    "SELECT id, sop_instance_uid, kind, object_uid, sop_class_uid, destination, path, state,"
    " attempts, next_attempt_at, last_error, commit_txn FROM outbox"
)


class OutboxStore(StoreBase):
    def _queue(
        self,
        db: Session,
        sop_instance_uid: str,
        out: OutputObject,
        destinations: list[str],
        now: str,
        *,
        replace: bool,
    ) -> None:
        """An outbox row per destination for ``out``; ``replace`` re-queues an object already there."""
        on_conflict = (
            "DO UPDATE SET path = excluded.path, state = 'pending', attempts = 0,"
            " next_attempt_at = excluded.next_attempt_at, last_error = NULL, updated_at = excluded.updated_at"
            if replace
            else "DO NOTHING"
        )
        for dest in destinations:
            db.execute(
                "INSERT INTO outbox (sop_instance_uid, kind, object_uid, sop_class_uid, destination, path, state,"
                " attempts, next_attempt_at, created_at, updated_at) VALUES (?,?,?,?,?,?,'pending',0,?,?,?)"
                f" ON CONFLICT (object_uid, destination) {on_conflict}",
                (sop_instance_uid, out.kind, out.object_uid, out.sop_class_uid, dest, out.path, now, now, now),
            )

    def due_outbox(
        self, now: str | None = None, limit: int = 100, *, node: str = "local", lease_s: float = 120.0
    ) -> list[OutboxItem]:
        """Claim pending items whose next attempt is due, oldest first, for ``node`` to send.

        Items another node claimed stay its own while its lease runs (``SKIP LOCKED`` on PostgreSQL: nodes
        sending at once get different items). A claim ends with the item's next state (or its lease).
        """
        now = now or timestamp()
        with self._tx() as db:
            ids = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM outbox WHERE state = 'pending' AND next_attempt_at <= ?"
                    " AND (claimed_by IS NULL OR claimed_by = ? OR lease_until < ?)"
                    " ORDER BY next_attempt_at, id LIMIT ?" + self._skip_locked,
                    (now, node, now, limit),
                ).fetchall()
            ]
            if not ids:
                return []
            db.executemany(
                "UPDATE outbox SET claimed_by = ?, lease_until = ? WHERE id = ?",
                [(node, timestamp_in(lease_s), i) for i in ids],
            )
            rows = [db.execute(_OUTBOX_SELECT + " WHERE id = ?", (i,)).fetchone() for i in ids]
        return [OutboxItem(**dict(r)) for r in rows]

    def outbox_items(self, sop_instance_uid: str) -> list[OutboxItem]:
        with self._lock:
            rows = self._db.execute(
                _OUTBOX_SELECT + " WHERE sop_instance_uid = ? ORDER BY id",
                (sop_instance_uid,),
            ).fetchall()
        return [OutboxItem(**dict(r)) for r in rows]

    def mark_retry(self, item_id: int, error: str, next_attempt_at: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?, updated_at = ?,"
                " commit_txn = NULL, claimed_by = NULL, lease_until = NULL WHERE id = ?",
                (error[:500], next_attempt_at, timestamp(), item_id),
            )

    def mark_awaiting_commitment(self, item_ids: list[int], transaction_uid: str, resend_at: str) -> None:
        """Stored at the PACS, not yet committed: still pending, sent again at ``resend_at`` unless a report comes."""
        with self._tx() as db:
            db.executemany(
                "UPDATE outbox SET attempts = attempts + 1, last_error = NULL, next_attempt_at = ?, updated_at = ?,"
                " commit_txn = ?, claimed_by = NULL, lease_until = NULL WHERE id = ? AND state = 'pending'",
                [(resend_at, timestamp(), transaction_uid, i) for i in item_ids],
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
                "UPDATE outbox SET state = 'dead', attempts = attempts + 1, last_error = ?, updated_at = ?,"
                " claimed_by = NULL, lease_until = NULL WHERE id = ?",
                (error[:500], timestamp(), item_id),
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
