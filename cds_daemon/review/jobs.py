"""The worklist's scheduled jobs: escalation of cases waiting too long, and the daily summary line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from cds_daemon.common.clock import timestamp
from cds_daemon.ops.logs import get_logger
from cds_daemon.store import Store

log = get_logger("review")


def age_text(since: str, now: datetime | None = None) -> str:
    """How long a case has waited, for people: "42 min", "5 h 03 min", "3 d 2 h"."""
    when = datetime.fromisoformat(since)
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    minutes = int(((now or datetime.now(UTC)) - when).total_seconds() // 60)
    if minutes < 60:
        return f"{max(minutes, 0)} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h {minutes % 60:02d} min"
    return f"{minutes // 1440} d {minutes % 1440 // 60} h"


def escalate_overdue(store: Store, hours: float, *, now: datetime | None = None) -> list[int]:
    """Escalate items waiting longer than ``hours``; one log line names them."""
    cutoff = (now or datetime.now(UTC)) - timedelta(hours=hours)
    ids = store.escalate_overdue(timestamp(cutoff), actor="scheduler")
    if ids:
        log.warning("worklist_escalated", items=ids, waiting_longer_than_hours=hours)
    return ids


def worklist_summary(store: Store) -> dict[str, Any]:
    """Counts for the daily summary line and ``cds-daemon status``."""
    agreement = store.agreement()
    return {
        "worklist": store.worklist_counts(),
        "decisions": agreement["decisions"],
        "overrides": agreement["overrides"],
        "override_rate": agreement["override_rate"],
        "referral": store.referral_stats(),
    }


def log_daily_summary(store: Store) -> dict[str, Any]:
    summary = worklist_summary(store)
    log.info("worklist_summary", **summary)
    return summary
