"""The store: all persistent state of the daemon, and the one package that holds SQL.

``Store`` is the facade every other module uses. Its methods live with their aggregate:
instances (and predictions, refusals), outbox, worklist (and decisions), users, statistics;
the transactions that span aggregates (a result, a reviewer's decision) are defined here.
The durable file spools (received images, result objects) are in :mod:`cds_daemon.store.spool`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cds_daemon.common.clock import timestamp
from cds_daemon.common.vocabulary import REASONS, ReferralReason
from cds_daemon.store.calibration import CalibrationStore
from cds_daemon.store.cases import CaseReport, CaseStore
from cds_daemon.store.cluster import ClusterStore
from cds_daemon.store.database import Session, StoreUnavailable, is_database_url, lock_key
from cds_daemon.store.instances import TRANSITIONS, InstanceStore
from cds_daemon.store.orders import Order, OrderStore
from cds_daemon.store.records import (
    Decision,
    Instance,
    LostClaim,
    NewInstance,
    OutboxItem,
    OutputObject,
    PoolRow,
    PredictionRecord,
    SiteRule,
    StateError,
    TriageEvent,
    User,
    WorklistItem,
)
from cds_daemon.store.similar import Confirmed, SimilarStore
from cds_daemon.store.slides import SlideField
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
    "Order",
    "OutboxItem",
    "OutputObject",
    "PoolRow",
    "PredictionRecord",
    "SiteRule",
    "SlideField",
    "StateError",
    "Store",
    "StoreUnavailable",
    "TriageEvent",
    "User",
    "WorklistItem",
    "is_database_url",
]


#: An audit-sampled case waits like an ordinary low-confidence referral, so reviewers cannot tell them apart.
AUDIT_PRIORITY = REASONS[ReferralReason.LOW_CONFIDENCE].priority


@dataclass(frozen=True)
class DecisionSlot:
    """The right to record the next decision on one image, inside the store's transaction (``Store.deciding``)."""

    store: Store
    db: Session
    sop_instance_uid: str
    sequence: int

    def record(self, **fields: Any) -> Decision:
        """:meth:`Store.record_decision`'s fields, less the image: recorded with this slot's sequence."""
        return self.store._record_decision(
            self.db, sop_instance_uid=self.sop_instance_uid, sequence=self.sequence, **fields
        )


class Store(
    InstanceStore,
    CaseStore,
    WorklistStore,
    UserStore,
    StatisticsStore,
    ClusterStore,
    SimilarStore,
    CalibrationStore,
    OrderStore,
):
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
        parts: tuple[str, ...] = (),
        slide_fields: Sequence[SlideField] = (),
    ) -> None:
        """Prediction, its outbox rows and ``processing -> reported``: all or nothing.

        ``parts``: for a whole slide, its other levels the analysis read; they are reported with it;
        ``slide_fields``: its analysed fields' features and Grad-CAMs (the review page's).

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
            self._complete_parts(db, list(parts), "reported", sop_instance_uid, actor)
            if p.referred:
                self._worklist_add(db, sop_instance_uid, p.priority, actor)
            elif audit:
                self._worklist_add(db, sop_instance_uid, AUDIT_PRIORITY, actor, audit=True)
            if not destinations:
                self._audit(db, actor, "no-destinations", sop_instance_uid, None)
            self._case_touch(db, sop_instance_uid, case_due_at)
            if embedding is not None:
                self._save_embedding(db, sop_instance_uid, p.model_sha256, embedding)
            if slide_fields:
                self._save_slide_fields(db, sop_instance_uid, p.model_sha256, slide_fields)

    @contextmanager
    def deciding(self, sop_instance_uid: str) -> Iterator[DecisionSlot]:
        """Decisions on one image one at a time, across nodes: the slot holds the next sequence number until
        its decision is recorded (a PostgreSQL advisory lock per image; SQLite's write lock), so two
        reviewers deciding one image at once get sequence n and n + 1, never both n. The unique index on
        (image, sequence) backs this up."""
        with self._tx() as db:
            if self.postgres:
                db.execute("SELECT pg_advisory_xact_lock(?)", (lock_key(f"decision:{sop_instance_uid}"),))
            last = db.execute(
                "SELECT COALESCE(MAX(sequence), 0) FROM decisions WHERE sop_instance_uid = ?", (sop_instance_uid,)
            ).fetchone()[0]
            yield DecisionSlot(self, db, sop_instance_uid, int(last) + 1)

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
        fields_viewed: Sequence[int] = (),
        diagnostic_field: int | None = None,
    ) -> Decision:
        """Store a reviewer's decision (the next in sequence for the image) and queue its verified SR."""
        with self.deciding(sop_instance_uid) as slot:
            return slot.record(
                worklist_id=worklist_id,
                reviewer=reviewer,
                decision=decision,
                ai_class=ai_class,
                final_class=final_class,
                comment=comment,
                review_sr=review_sr,
                destinations=destinations,
                actor=actor,
                fields_viewed=fields_viewed,
                diagnostic_field=diagnostic_field,
            )

    def _record_decision(
        self,
        db: Session,
        *,
        worklist_id: int,
        sop_instance_uid: str,
        sequence: int,
        reviewer: str,
        decision: str,
        ai_class: str | None,
        final_class: str | None,
        comment: str | None,
        review_sr: OutputObject | None,
        destinations: list[str],
        actor: str | None = None,
        fields_viewed: Sequence[int] = (),
        diagnostic_field: int | None = None,
    ) -> Decision:
        """The decision row, its SR in the outbox, its pool row (shadow mode) and the case closed when every
        image is decided: one transaction. A slide's ``diagnostic_field`` becomes the slide's example among the
        similar cases (its features replace the slide's)."""
        now = timestamp()
        member = db.execute(
            "SELECT 1 FROM worklist_images WHERE worklist_id = ? AND sop_instance_uid = ?",
            (worklist_id, sop_instance_uid),
        ).fetchone()
        if member is None:
            raise StateError(f"image {sop_instance_uid} is not in worklist item {worklist_id}")
        decision_id = db.execute(
            "INSERT INTO decisions (worklist_id, sop_instance_uid, reviewer, decision, ai_class, final_class,"
            " comment, review_sr_uid, decided_at, sequence, fields_viewed, diagnostic_field)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
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
                sequence,
                json.dumps(sorted(set(fields_viewed))) if fields_viewed else None,
                diagnostic_field,
            ),
        ).fetchone()[0]
        if diagnostic_field is not None:
            self._diagnostic_example(db, sop_instance_uid, diagnostic_field)
        if review_sr is not None:
            self._queue(db, sop_instance_uid, review_sr, destinations, now, replace=False)
        pooled = self._pool_add(db, sop_instance_uid, decision_id, final_class, now)
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
            {
                "worklist_id": worklist_id,
                "reviewer": reviewer,
                "ai_class": ai_class,
                "final_class": final_class,
                "sequence": sequence,
                "calibration_pool": pooled,
                **({"fields_viewed": sorted(set(fields_viewed))} if fields_viewed else {}),
                **({"diagnostic_field": diagnostic_field} if diagnostic_field is not None else {}),
            },
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
                self._deliver_parts(db, uid, actor)
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
        parts: tuple[str, ...] = (),
    ) -> None:
        """An image the AI could not analyse: ``processing -> failed`` with the reason, its "not analysed"
        prediction and SR in the outbox, and a worklist entry, all or nothing: it never ends silently."""
        now = timestamp()
        with self._tx() as db:
            self._upsert_prediction(db, sop_instance_uid, prediction, now)
            for out in outputs:
                self._queue(db, sop_instance_uid, out, destinations, now, replace=True)
            self._transition(db, sop_instance_uid, "failed", actor, reason, holder=holder)
            self._complete_parts(db, list(parts), "failed", sop_instance_uid, actor)
            self._worklist_add(db, sop_instance_uid, prediction.priority, actor)
            self._case_touch(db, sop_instance_uid, case_due_at)
