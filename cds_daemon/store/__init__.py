"""The store: all persistent state of the daemon, and the one package that holds SQL.

``Store`` is the facade every other module uses. Its methods live with their aggregate:
instances (and predictions, refusals), outbox, worklist (and decisions), users, statistics;
the transactions that span aggregates (a result, a reviewer's decision) are defined here.
The durable file spools (received images, result objects) are in :mod:`cds_daemon.store.spool`.
"""

from __future__ import annotations

from cds_daemon.common.clock import timestamp
from cds_daemon.common.vocabulary import REASONS, ReferralReason
from cds_daemon.store.cases import CaseReport, CaseStore
from cds_daemon.store.cluster import ClusterStore
from cds_daemon.store.database import StoreUnavailable, is_database_url
from cds_daemon.store.instances import TRANSITIONS, InstanceStore
from cds_daemon.store.records import (
    Decision,
    Instance,
    LostClaim,
    NewInstance,
    OutboxItem,
    OutputObject,
    PredictionRecord,
    StateError,
    User,
    WorklistItem,
)
from cds_daemon.store.similar import Confirmed, SimilarStore
from cds_daemon.store.statistics import StatisticsStore
from cds_daemon.store.users import UserStore
from cds_daemon.store.worklist import WorklistStore

__all__ = [
    "TRANSITIONS",
    "CaseReport",
    "Confirmed",
    "Decision",
    "Instance",
    "LostClaim",
    "NewInstance",
    "OutboxItem",
    "OutputObject",
    "PredictionRecord",
    "StateError",
    "Store",
    "StoreUnavailable",
    "User",
    "WorklistItem",
    "is_database_url",
]


#: An audit-sampled case waits like an ordinary low-confidence referral, so reviewers cannot tell them apart.
AUDIT_PRIORITY = REASONS[ReferralReason.LOW_CONFIDENCE].priority


class Store(InstanceStore, CaseStore, WorklistStore, UserStore, StatisticsStore, ClusterStore, SimilarStore):
    """All persistent state of the daemon. Thread-safe."""

    def record_result(
        self,
        sop_instance_uid: str,
        prediction: PredictionRecord,
        outputs: list[OutputObject],
        destinations: list[str],
        *,
        actor: str,
        audit: bool = False,
        holder: str | None = None,
        case_due_at: str | None = None,
        embedding: bytes | None = None,
    ) -> None:
        """Prediction, its outbox rows and ``processing -> reported``: all or nothing.

        Re-running an instance replaces its prediction and re-queues its objects (their UIDs
        are deterministic, so the PACS receives replacements, not duplicates). ``audit``: a finalised
        image also goes to the worklist, for the blind audit of what is finalised.
        """
        now = timestamp()
        p = prediction
        with self._tx() as db:
            self._upsert_prediction(db, sop_instance_uid, p, now)
            for out in outputs:
                self._queue(db, sop_instance_uid, out, destinations, now, replace=True)
            self._transition(db, sop_instance_uid, "reported", actor, "referred" if p.referred else None, holder=holder)
            if p.referred:
                self._worklist_add(db, sop_instance_uid, p.priority, actor)
            elif audit:
                self._worklist_add(db, sop_instance_uid, AUDIT_PRIORITY, actor, audit=True)
            if not destinations:
                self._audit(db, actor, "no-destinations", sop_instance_uid, None)
            self._case_touch(db, sop_instance_uid, case_due_at)
            if embedding is not None:
                self._save_embedding(db, sop_instance_uid, p.model_sha256, embedding)

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
        actor: str | None = None,
    ) -> Decision:
        """Store a reviewer's decision and queue its verified SR; close the case when every image is decided."""
        now = timestamp()
        with self._tx() as db:
            member = db.execute(
                "SELECT 1 FROM worklist_images WHERE worklist_id = ? AND sop_instance_uid = ?",
                (worklist_id, sop_instance_uid),
            ).fetchone()
            if member is None:
                raise StateError(f"image {sop_instance_uid} is not in worklist item {worklist_id}")
            decision_id = db.execute(
                "INSERT INTO decisions (worklist_id, sop_instance_uid, reviewer, decision, ai_class, final_class,"
                " comment, review_sr_uid, decided_at) VALUES (?,?,?,?,?,?,?,?,?) RETURNING id",
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
            ).fetchone()[0]
            if review_sr is not None:
                self._queue(db, sop_instance_uid, review_sr, destinations, now, replace=False)
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
                actor or reviewer,
                f"decision:{decision}",
                sop_instance_uid,
                {"worklist_id": worklist_id, "reviewer": reviewer, "ai_class": ai_class, "final_class": final_class},
            )
            row = db.execute("SELECT * FROM decisions WHERE id = ?", (decision_id,)).fetchone()
        return Decision(**dict(row))

    def mark_delivered(self, item_id: int, *, actor: str) -> bool:
        """Mark one object delivered; returns True when that completed its source instance."""
        with self._tx() as db:
            row = db.execute(
                "SELECT sop_instance_uid, kind, destination FROM outbox WHERE id = ?", (item_id,)
            ).fetchone()
            db.execute(
                "UPDATE outbox SET state = 'delivered', last_error = NULL, updated_at = ?, claimed_by = NULL,"
                " lease_until = NULL, attempts = attempts + (CASE WHEN commit_txn IS NULL THEN 1 ELSE 0 END)"
                " WHERE id = ?",
                (timestamp(), item_id),
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

    def record_failure(
        self,
        sop_instance_uid: str,
        reason: str,
        prediction: PredictionRecord,
        outputs: list[OutputObject],
        destinations: list[str],
        *,
        actor: str,
        holder: str | None = None,
        case_due_at: str | None = None,
    ) -> None:
        """An image the AI could not analyse: ``processing -> failed`` with the reason, its "not analysed"
        prediction and SR in the outbox, and a worklist entry, all or nothing: it never ends silently."""
        now = timestamp()
        with self._tx() as db:
            self._upsert_prediction(db, sop_instance_uid, prediction, now)
            for out in outputs:
                self._queue(db, sop_instance_uid, out, destinations, now, replace=True)
            self._transition(db, sop_instance_uid, "failed", actor, reason, holder=holder)
            self._worklist_add(db, sop_instance_uid, prediction.priority, actor)
            self._case_touch(db, sop_instance_uid, case_due_at)
