"""Instances: received images and their state machine, predictions, and refused stores."""

from __future__ import annotations

import json
from typing import Any

from cds_daemon.common.clock import timestamp, timestamp_in
from cds_daemon.common.vocabulary import ROUTINE_PRIORITY, InstanceState
from cds_daemon.store.database import Session
from cds_daemon.store.records import Instance, LostClaim, NewInstance, PredictionRecord, StateError
from cds_daemon.store.slides import SlideStore

#: Allowed state transitions. ``processing -> received`` is the restart path.
TRANSITIONS: dict[str, frozenset[str]] = {
    InstanceState.RECEIVED: frozenset({InstanceState.PROCESSING}),
    InstanceState.PROCESSING: frozenset(
        {InstanceState.REPORTED, InstanceState.REJECTED, InstanceState.FAILED, InstanceState.RECEIVED}
    ),
    InstanceState.REPORTED: frozenset({InstanceState.DELIVERED, InstanceState.RECEIVED}),
    InstanceState.DELIVERED: frozenset({InstanceState.RECEIVED}),
    InstanceState.REJECTED: frozenset({InstanceState.RECEIVED}),
    InstanceState.FAILED: frozenset({InstanceState.RECEIVED}),
}


class InstanceStore(SlideStore):
    def record_received(self, new: NewInstance, actor: str, slide_due_at: str | None = None) -> bool:
        """Insert a received instance. Returns False if the SOPInstanceUID was already known.

        A level of a whole slide (``new.slide_key``) also (re)starts its slide's quiet period: the slide is
        analysed at ``slide_due_at`` unless another of its levels arrives first.
        """
        now = timestamp()
        with self._tx() as db:
            cur = db.execute(
                """INSERT INTO instances (sop_instance_uid, sop_class_uid, study_instance_uid,
                       series_instance_uid, accession_number, transfer_syntax_uid, calling_ae,
                       peer_address, spool_path, size_bytes, sha256, case_key, slide_key, state, received_at,
                       updated_at)
                   VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,'received',?,?)
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
                    new.case_key,
                    new.slide_key,
                    now,
                    now,
                ),
            )
            inserted = bool(cur.rowcount == 1)
            if inserted and new.slide_key is not None:
                db.execute(
                    "INSERT INTO slides (slide_key, due_at, updated_at) VALUES (?, ?, ?)"
                    " ON CONFLICT (slide_key) DO UPDATE SET due_at = excluded.due_at, updated_at = excluded.updated_at",
                    (new.slide_key, slide_due_at or now, now),
                )
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
        if new_state not in {str(v) for v in InstanceState}:
            raise StateError(f"unknown state {new_state!r}")
        with self._tx() as db:
            self._transition(db, sop_instance_uid, new_state, actor, reason)

    def _transition(
        self,
        db: Session,
        sop_instance_uid: str,
        new_state: str,
        actor: str,
        reason: str | None,
        *,
        holder: str | None = None,
    ) -> None:
        """``holder``: the node that claimed the instance; the transition is refused (``LostClaim``) when the
        claim is no longer its own (its lease ran out and another node took the work over)."""
        row = db.execute(
            "SELECT state, claimed_by FROM instances WHERE sop_instance_uid = ?" + self._for_update,
            (sop_instance_uid,),
        ).fetchone()
        if row is None:
            raise StateError(f"no instance {sop_instance_uid}")
        if holder is not None and (row["state"] != InstanceState.PROCESSING or row["claimed_by"] != holder):
            raise LostClaim(
                f"{sop_instance_uid}: no longer claimed by {holder} (now {row['state']}, {row['claimed_by']})"
            )
        if new_state not in TRANSITIONS[row["state"]]:
            raise StateError(f"{sop_instance_uid}: {row['state']} -> {new_state} is not allowed")
        db.execute(
            "UPDATE instances SET state = ?, state_reason = ?, updated_at = ?, claimed_by = NULL, lease_until = NULL,"
            " attempts = attempts + (CASE WHEN ? = 'processing' THEN 1 ELSE 0 END)"
            " WHERE sop_instance_uid = ?",
            (new_state, reason, timestamp(), new_state, sop_instance_uid),
        )
        self._audit(db, actor, f"state:{row['state']}->{new_state}", sop_instance_uid, reason)

    def claim_next(self, actor: str, node: str = "local", lease_s: float = 60.0) -> Instance | None:
        """Take the oldest ``received`` instance (or one whose claim's lease ran out) for ``node``.

        On PostgreSQL the row is locked ``FOR UPDATE SKIP LOCKED``: nodes claiming at once get different
        rows, and none waits for another. The lease is renewed by :meth:`renew_leases` while the node lives.
        """
        now = timestamp()
        with self._tx() as db:
            self._release_due_slides(db, now, actor)
            row = db.execute(
                "SELECT id, sop_instance_uid, state, claimed_by FROM instances WHERE (state = 'received' AND"
                " (slide_key IS NULL OR EXISTS (SELECT 1 FROM slides s"
                " WHERE s.representative = instances.sop_instance_uid AND s.due_at IS NULL)))"
                " OR (state = 'processing' AND lease_until < ?) ORDER BY id LIMIT 1" + self._skip_locked,
                (now,),
            ).fetchone()
            if row is None:
                return None
            uid = row["sop_instance_uid"]
            db.execute(
                "UPDATE instances SET state = 'processing', claimed_by = ?, lease_until = ?, updated_at = ?,"
                " attempts = attempts + 1 WHERE id = ?",
                (node, timestamp_in(lease_s), now, row["id"]),
            )
            if row["state"] == InstanceState.PROCESSING:
                self._audit(db, actor, "state:processing->processing", uid, f"lease of {row['claimed_by']} expired")
            else:
                self._audit(db, actor, "state:received->processing", uid, None)
        return self.get_instance(uid)

    def renew_leases(self, node: str, lease_s: float, uids: list[str]) -> int:
        """Extend ``node``'s claims on the instances it is working on now (its heartbeat); returns how many.

        Only those: a claim the worker dropped (the database failed as it recorded the result) then runs out
        and the instance is taken again, by this node or another.
        """
        if not uids:
            return 0
        until = timestamp_in(lease_s)
        with self._tx() as db:
            res = db.executemany(
                "UPDATE instances SET lease_until = ? WHERE sop_instance_uid = ? AND claimed_by = ?"
                " AND state = 'processing'",
                [(until, uid, node) for uid in uids],
            )
        return int(res.rowcount)

    def requeue_interrupted(self, actor: str, node: str = "local") -> int:
        """After a restart, the instances this node had claimed (and unclaimed ones left ``processing`` by a
        version without claims) go back to ``received``. Other nodes' claims are theirs until their lease
        runs out."""
        with self._tx() as db:
            where = "state = 'processing' AND (claimed_by = ? OR claimed_by IS NULL)"
            uids = [r[0] for r in db.execute(f"SELECT sop_instance_uid FROM instances WHERE {where}", (node,))]
            db.execute(
                "UPDATE instances SET state = 'received', state_reason = 'requeued after restart',"
                f" claimed_by = NULL, lease_until = NULL, updated_at = ? WHERE {where}",
                (timestamp(), node),
            )
            for uid in uids:
                self._audit(db, actor, "state:processing->received", uid, "requeued after restart")
        return len(uids)

    def claims(self) -> dict[str, dict[str, int]]:
        """Work each node holds now: {node: {"instances": n, "outbox": m}}."""
        out: dict[str, dict[str, int]] = {}
        with self._lock:
            for table, state in (("instances", "processing"), ("outbox", "pending")):
                rows = self._db.execute(
                    f"SELECT claimed_by, COUNT(*) FROM {table} WHERE state = ? AND claimed_by IS NOT NULL"
                    " GROUP BY claimed_by",
                    (state,),
                ).fetchall()
                for node, n in rows:
                    out.setdefault(str(node), {"instances": 0, "outbox": 0})[table] = int(n)
        return out

    def counts_by_state(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM instances GROUP BY state").fetchall()
        counts = dict.fromkeys((str(v) for v in InstanceState), 0)
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
            db.execute("UPDATE instances SET purged_at = ? WHERE sop_instance_uid = ?", (timestamp(), sop_instance_uid))
            self._audit(db, actor, "purged-files", sop_instance_uid, None)

    def _upsert_prediction(self, db: Session, uid: str, p: PredictionRecord, now: str) -> None:
        """The image's prediction, replacing an earlier one (a re-run)."""
        db.execute(
            """INSERT INTO predictions (sop_instance_uid, model_name, model_version, model_sha256,
                   predicted, probabilities, referred, reasons, detail, created_at,
                   triage_mode, rule_id, finalisation_confidence, candidate)
               VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)
               ON CONFLICT (sop_instance_uid) DO UPDATE SET model_name = excluded.model_name,
                   model_version = excluded.model_version, model_sha256 = excluded.model_sha256,
                   predicted = excluded.predicted, probabilities = excluded.probabilities,
                   referred = excluded.referred, reasons = excluded.reasons, detail = excluded.detail,
                   created_at = excluded.created_at, triage_mode = excluded.triage_mode,
                   rule_id = excluded.rule_id, finalisation_confidence = excluded.finalisation_confidence,
                   candidate = excluded.candidate""",
            (
                uid,
                p.model_name,
                p.model_version,
                p.model_sha256,
                p.predicted,
                None if p.probabilities is None else json.dumps(p.probabilities),
                int(p.referred),
                json.dumps(p.reasons),
                json.dumps(p.detail),
                now,
                p.triage_mode,
                p.rule_id,
                p.finalisation_confidence,
                None if p.candidate is None else int(p.candidate),
            ),
        )

    def get_prediction(self, sop_instance_uid: str) -> PredictionRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM predictions WHERE sop_instance_uid = ?", (sop_instance_uid,)
            ).fetchone()
        if row is None:
            return None
        detail = json.loads(row["detail"])
        return PredictionRecord(
            model_name=row["model_name"],
            model_version=row["model_version"],
            model_sha256=row["model_sha256"],
            predicted=row["predicted"],
            probabilities=None if row["probabilities"] is None else json.loads(row["probabilities"]),
            referred=bool(row["referred"]),
            reasons=json.loads(row["reasons"]),
            detail=detail,
            priority=int(detail.get("priority", ROUTINE_PRIORITY)),
            triage_mode=row["triage_mode"],
            rule_id=row["rule_id"],
            finalisation_confidence=row["finalisation_confidence"],
            candidate=None if row["candidate"] is None else bool(row["candidate"]),
        )

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
                (timestamp(), calling_ae, peer_address, sop_class_uid, sop_instance_uid, status, code, reason),
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
