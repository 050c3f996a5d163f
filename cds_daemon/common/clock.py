"""Timestamps as the store keeps them.

UTC, ISO 8601 with milliseconds (``2026-11-29T14:00:00.123+00:00``). The store orders and compares
these strings in SQL (due times, escalation and retention cut-offs), which is only right when every
one of them is written the same way: so they are all made here.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def timestamp(at: datetime | None = None) -> str:
    """``at`` (default: now) as the store's UTC timestamp string."""
    return (at or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="milliseconds")


def timestamp_in(seconds: float) -> str:
    """The store's timestamp ``seconds`` from now (negative: in the past)."""
    return timestamp(datetime.now(UTC) + timedelta(seconds=seconds))
