"""Statistics over what the store holds: referral rate, class mix, reviewer agreement."""

from __future__ import annotations

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
