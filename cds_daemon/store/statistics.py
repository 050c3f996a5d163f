"""Statistics over what the store holds: referral rate, class mix, reviewer agreement."""

from __future__ import annotations

import json
from typing import Any

from cds_daemon.store.database import StoreBase


class StatisticsStore(StoreBase):
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

    def audit_results(self) -> dict[str, dict[str, int]]:
        """Per model version: audit-sampled finalised images, how many a reviewer decided, and how many of
        those the AI got wrong (a changed class or a non-diagnostic specimen; the latest decision counts)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT p.model_version, COUNT(*), COUNT(d.id),"
                " COALESCE(SUM(CASE WHEN d.id IS NOT NULL AND (d.final_class IS NULL OR d.final_class != d.ai_class)"
                " THEN 1 ELSE 0 END), 0)"
                " FROM worklist_images wi JOIN predictions p ON p.sop_instance_uid = wi.sop_instance_uid"
                " LEFT JOIN decisions d ON d.sop_instance_uid = wi.sop_instance_uid"
                " AND d.id = (SELECT MAX(id) FROM decisions x WHERE x.sop_instance_uid = wi.sop_instance_uid)"
                " WHERE wi.audit = 1 GROUP BY p.model_version ORDER BY p.model_version"
            ).fetchall()
        return {str(v): {"sampled": int(n), "decided": int(dec), "errors": int(err)} for v, n, dec, err in rows}

    def recent_predictions(self, limit: int) -> list[tuple[str | None, list[str]]]:
        """(predicted class, referral reasons) of the latest ``limit`` analysed images, newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT predicted, reasons FROM predictions ORDER BY created_at DESC, id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [(r[0], json.loads(r[1])) for r in rows]
