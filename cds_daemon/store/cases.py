"""Case-level results: a case (one specimen's images) is due for its case SR once no image has arrived for the
quiet period; the timer is a row here, so it survives a restart and any node of a cluster may write it."""

from __future__ import annotations

from dataclasses import dataclass

from cds_daemon.common.clock import timestamp
from cds_daemon.store.database import Session
from cds_daemon.store.outbox import OutboxStore
from cds_daemon.store.records import Instance, OutputObject


@dataclass(frozen=True)
class CaseReport:
    case_key: str
    due_at: str | None
    version: int
    sr_uid: str | None
    images: int


class CaseStore(OutboxStore):
    def _case_touch(self, db: Session, sop_instance_uid: str, due_at: str | None) -> None:
        """An image of the case got its result (or its "not analysed"): the case is due again at ``due_at``."""
        if due_at is None:
            return
        row = db.execute("SELECT case_key FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)).fetchone()
        if row is None or not row[0]:
            return
        db.execute(
            "INSERT INTO case_reports (case_key, due_at, updated_at) VALUES (?,?,?)"
            " ON CONFLICT (case_key) DO UPDATE SET due_at = excluded.due_at, updated_at = excluded.updated_at",
            (row[0], due_at, timestamp()),
        )

    def due_cases(self, now: str | None = None, limit: int = 20) -> list[CaseReport]:
        """Cases past their quiet period with no image of theirs still waiting for analysis."""
        with self._lock:
            rows = self._db.execute(
                "SELECT c.case_key, c.due_at, c.version, c.sr_uid, c.images FROM case_reports c"
                " WHERE c.due_at IS NOT NULL AND c.due_at <= ? AND NOT EXISTS (SELECT 1 FROM instances i"
                " WHERE i.case_key = c.case_key AND i.state IN ('received', 'processing'))"
                " ORDER BY c.due_at LIMIT ?",
                (now or timestamp(), limit),
            ).fetchall()
        return [CaseReport(*r) for r in rows]

    def case_report(self, case_key: str) -> CaseReport | None:
        with self._lock:
            row = self._db.execute(
                "SELECT case_key, due_at, version, sr_uid, images FROM case_reports WHERE case_key = ?", (case_key,)
            ).fetchone()
        return None if row is None else CaseReport(*row)

    def case_members(self, case_key: str) -> list[Instance]:
        """The case's images that have a result (or a "not analysed"), in order of arrival."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM instances WHERE case_key = ? AND state IN ('reported', 'delivered', 'failed')"
                " ORDER BY id",
                (case_key,),
            ).fetchall()
        return [Instance(**dict(r)) for r in rows]

    def postpone_case(self, case_key: str, due_at: str | None) -> None:
        """Move a case's timer (None: nothing is due until another image of it arrives)."""
        with self._tx() as db:
            db.execute(
                "UPDATE case_reports SET due_at = ?, updated_at = ? WHERE case_key = ?", (due_at, timestamp(), case_key)
            )

    def record_case_report(
        self, case: CaseReport, sr: OutputObject, images: int, anchor_uid: str, destinations: list[str], *, actor: str
    ) -> bool:
        """The case SR written for ``case`` as read: queue it and close the timer, unless the case changed
        meanwhile (a late image moved ``due_at``: then the timer stays and the next version follows)."""
        now = timestamp()
        with self._tx() as db:
            row = db.execute(
                "SELECT due_at, version FROM case_reports WHERE case_key = ?" + self._for_update, (case.case_key,)
            ).fetchone()
            if row is None or row[1] != case.version:
                return False  # another node wrote this version first
            self._queue(db, anchor_uid, sr, destinations, now, replace=False)
            still = row[0] == case.due_at
            db.execute(
                "UPDATE case_reports SET version = ?, sr_uid = ?, images = ?, updated_at = ?,"
                " due_at = CASE WHEN ? = 1 THEN NULL ELSE due_at END WHERE case_key = ?",
                (case.version + 1, sr.object_uid, images, now, 1 if still else 0, case.case_key),
            )
            self._audit(db, actor, f"case-sr:{case.version + 1}", anchor_uid, {"case_key": case.case_key})
        return True
