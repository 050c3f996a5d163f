"""Site calibration: the pool of images reviewed in shadow mode, the certified site rules and their history.

A rule is bound to one bundle (its SHA-256 identity). At most one rule is active per bundle (a partial unique
index); every node reads the active rule from here, so activating or deactivating one takes effect across the
cluster without a restart.
"""

from __future__ import annotations

import json
from typing import Any

from cds_daemon.common.clock import timestamp
from cds_daemon.store.database import Session, StoreBase
from cds_daemon.store.records import PoolRow, SiteRule, StateError, TriageEvent

OOD_CODES = ("ood_mahalanobis", "ood_energy", "ood_stain")
#: A reviewed slide joins the pool ``slide:<bundle>``, never the bundle's own pool of fields: a slide-level rule
#: would be certified on slides, and a field-level rule on fields.
SLIDE_POOL_PREFIX = "slide:"


def _rule(row: Any) -> SiteRule:
    values = dict(row)
    values["active"] = bool(values["active"])
    values["reference"] = json.loads(values["reference"]) if values.get("reference") else None
    return SiteRule(**values)


class CalibrationStore(StoreBase):
    def _pool_add(self, db: Session, uid: str, decision_id: int, final_class: str | None, now: str) -> bool:
        """Add (or update, for a changed decision) the image's pool row when its prediction was made in shadow
        mode; False when it does not belong in the pool (live or bundle mode, or not analysed). A whole slide
        goes to its bundle's slide pool (``SLIDE_POOL_PREFIX``)."""
        p = db.execute(
            "SELECT p.model_sha256, p.predicted, p.triage_mode, p.finalisation_confidence, p.candidate, i.slide_key"
            " FROM predictions p JOIN instances i USING (sop_instance_uid) WHERE p.sop_instance_uid = ?",
            (uid,),
        ).fetchone()
        if p is None or p["triage_mode"] != "shadow" or not p["predicted"] or p["finalisation_confidence"] is None:
            return False
        pool = p["model_sha256"] if p["slide_key"] is None else f"{SLIDE_POOL_PREFIX}{p['model_sha256']}"
        db.execute(
            """INSERT INTO calibration_pool (model_sha256, sop_instance_uid, decision_id, confidence, candidate,
                   ai_class, final_class, added_at) VALUES (?,?,?,?,?,?,?,?)
               ON CONFLICT (model_sha256, sop_instance_uid) DO UPDATE SET decision_id = excluded.decision_id,
                   final_class = excluded.final_class""",
            (
                pool,
                uid,
                decision_id,
                float(p["finalisation_confidence"]),
                int(bool(p["candidate"])),
                p["predicted"],
                final_class,
                now,
            ),
        )
        return True

    def pool(self, model_sha256: str) -> list[PoolRow]:
        """The bundle's pool, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM calibration_pool WHERE model_sha256 = ? ORDER BY id", (model_sha256,)
            ).fetchall()
        return [PoolRow(**{**dict(r), "candidate": bool(r["candidate"])}) for r in rows]

    def pool_reference(self, model_sha256: str) -> dict[str, Any]:
        """What the pool's images looked like to the model: predicted-class mix and out-of-distribution share.
        While a rule certified on this pool is in force, drift is measured from here, not from the bundle's
        test split (the guarantee assumes later cases resemble the pool's)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT p.predicted, p.reasons FROM calibration_pool c JOIN predictions p"
                " ON p.sop_instance_uid = c.sop_instance_uid WHERE c.model_sha256 = ?",
                (model_sha256,),
            ).fetchall()
        n = len(rows)
        mix: dict[str, float] = {}
        ood = 0
        for predicted, reasons in rows:
            mix[str(predicted)] = mix.get(str(predicted), 0.0) + 1.0 / n
            ood += any(code in OOD_CODES for code in json.loads(reasons))
        return {"n": n, "ood_rate": ood / n if n else 0.0, "predicted_mix": mix, "source": "site calibration pool"}

    def add_site_rule(self, model_sha256: str, fields: dict[str, Any], *, pool_max_id: int, actor: str) -> SiteRule:
        """Store a certified (not yet active) rule; ``fields`` as :meth:`FinalisationRule.to_json` gives them."""
        now = timestamp()
        reference = json.dumps(self.pool_reference(model_sha256))
        with self._tx() as db:
            rule_id = db.execute(
                "INSERT INTO site_rules (model_sha256, alpha, delta, threshold, n_pool, n_candidates, n_finalised,"
                " errors, upper_bound, method, pool_max_id, certified_by, certified_at, reference)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
                (
                    model_sha256,
                    fields["alpha"],
                    fields["delta"],
                    fields["threshold"],
                    fields["n_calibration"],
                    fields["n_candidates"],
                    fields["n_finalised"],
                    fields["errors"],
                    fields["upper_bound"],
                    fields["method"],
                    pool_max_id,
                    actor,
                    now,
                    reference,
                ),
            ).fetchone()[0]
            self._triage_event(db, model_sha256, rule_id, "certified", actor, None, now)
            self._audit(db, actor, "calibration:certify", None, {"rule_id": rule_id, "model_sha256": model_sha256})
            row = db.execute("SELECT * FROM site_rules WHERE id = ?", (rule_id,)).fetchone()
        return _rule(row)

    def site_rules(self, model_sha256: str | None = None) -> list[SiteRule]:
        """Certified rules, newest first (all bundles, or one)."""
        where, args = ("", ()) if model_sha256 is None else (" WHERE model_sha256 = ?", (model_sha256,))
        sql = "SELECT * FROM site_rules" + where
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id DESC", args).fetchall()
        return [_rule(r) for r in rows]

    def site_rule(self, rule_id: int) -> SiteRule | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM site_rules WHERE id = ?", (rule_id,)).fetchone()
        return None if row is None else _rule(row)

    def active_rule(self, model_sha256: str) -> SiteRule | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM site_rules WHERE model_sha256 = ? AND active = 1", (model_sha256,)
            ).fetchone()
        return None if row is None else _rule(row)

    def activate_rule(self, rule_id: int, *, actor: str) -> SiteRule:
        """Put the rule in force for its bundle, replacing the one active before."""
        now = timestamp()
        with self._tx() as db:
            row = db.execute(f"SELECT * FROM site_rules WHERE id = ?{self._for_update}", (rule_id,)).fetchone()
            if row is None:
                raise StateError(f"no site rule {rule_id}")
            if row["threshold"] is None:
                raise StateError(f"site rule {rule_id} finalises nothing (no threshold could be certified)")
            sha = row["model_sha256"]
            db.execute(
                "UPDATE site_rules SET active = 0, deactivated_by = ?, deactivated_at = ?,"
                " deactivation_reason = ? WHERE model_sha256 = ? AND active = 1 AND id != ?",
                (actor, now, f"replaced by site rule {rule_id}", sha, rule_id),
            )
            db.execute(
                "UPDATE site_rules SET active = 1, activated_by = ?, activated_at = ?, deactivated_by = NULL,"
                " deactivated_at = NULL, deactivation_reason = NULL WHERE id = ?",
                (actor, now, rule_id),
            )
            self._triage_event(db, sha, rule_id, "activated", actor, None, now)
            self._audit(db, actor, "calibration:activate", None, {"rule_id": rule_id, "model_sha256": sha})
            row = db.execute("SELECT * FROM site_rules WHERE id = ?", (rule_id,)).fetchone()
        return _rule(row)

    def deactivate_rule(self, rule_id: int, *, actor: str, reason: str, event: str = "deactivated") -> bool:
        """Take the rule out of force (``event`` "fallback" when the fail-safe does it); False if it was not
        active (another node got there first)."""
        now = timestamp()
        with self._tx() as db:
            row = db.execute(
                f"SELECT model_sha256, active FROM site_rules WHERE id = ?{self._for_update}", (rule_id,)
            ).fetchone()
            if row is None:
                raise StateError(f"no site rule {rule_id}")
            if not row["active"]:
                return False
            db.execute(
                "UPDATE site_rules SET active = 0, deactivated_by = ?, deactivated_at = ?, deactivation_reason = ?"
                " WHERE id = ?",
                (actor, now, reason, rule_id),
            )
            self._triage_event(db, row["model_sha256"], rule_id, event, actor, reason, now)
            self._audit(db, actor, f"calibration:{event}", None, {"rule_id": rule_id, "reason": reason})
        return True

    def triage_events(self, model_sha256: str | None = None, limit: int = 50) -> list[TriageEvent]:
        """Certifications, activations, deactivations and fallbacks, newest first."""
        where, args = ("", ()) if model_sha256 is None else (" WHERE model_sha256 = ?", (model_sha256,))
        sql = "SELECT * FROM triage_events" + where
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [TriageEvent(**dict(r)) for r in rows]

    def finalised_count(self, rule_id: int) -> int:
        """Images the rule has finalised so far (the audit samples more while a rule is young)."""
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM predictions WHERE rule_id = ? AND referred = 0", (rule_id,)
            ).fetchone()
        return int(row[0])

    def rule_audit(self, rule_id: int) -> dict[str, int]:
        """The blind audit of one site rule: finalised images it sampled, how many a reviewer decided, and how
        many of those the AI got wrong (a changed class or a non-diagnostic specimen; the latest decision)."""
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*), COUNT(d.id),"
                " COALESCE(SUM(CASE WHEN d.id IS NOT NULL AND (d.final_class IS NULL OR d.final_class != d.ai_class)"
                " THEN 1 ELSE 0 END), 0)"
                " FROM worklist_images wi JOIN predictions p ON p.sop_instance_uid = wi.sop_instance_uid"
                " LEFT JOIN decisions d ON d.sop_instance_uid = wi.sop_instance_uid"
                " AND d.id = (SELECT MAX(id) FROM decisions x WHERE x.sop_instance_uid = wi.sop_instance_uid)"
                " WHERE wi.audit = 1 AND p.rule_id = ?",
                (rule_id,),
            ).fetchone()
        return {"sampled": int(row[0]), "decided": int(row[1]), "errors": int(row[2])}

    def _triage_event(
        self, db: Session, sha: str, rule_id: int | None, event: str, actor: str, reason: str | None, now: str
    ) -> None:
        db.execute(
            "INSERT INTO triage_events (at, model_sha256, rule_id, event, actor, reason) VALUES (?,?,?,?,?,?)",
            (now, sha, rule_id, event, actor, reason),
        )
