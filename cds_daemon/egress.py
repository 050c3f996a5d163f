"""Egress: C-STORE SCU that drains the outbox to every configured destination.

Per destination and batch: one association; one presentation context per (SOP class,
transfer syntax) so the peer can accept what it supports, with explicit little endian
always offered as the fallback. Every response status is checked; an empty response means
no answer and is retried. After ``max_attempts`` an item is dead-lettered.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.association import Association

from cds_daemon.config import Destination, EgressSettings
from cds_daemon.logs import get_logger
from cds_daemon.peers import associate
from cds_daemon.store import OutboxItem, Store

log = get_logger("egress")

#: Warning statuses mean "stored" (with coercion or element discrepancies).
_WARNINGS = {0xB000, 0xB006, 0xB007, 0x0107, 0x0116}


@dataclass(frozen=True)
class SendOutcome:
    item_id: int
    ok: bool
    detail: str


def _status_text(status: int) -> str:
    return f"0x{status:04X}"


def send_batch(
    destination: Destination, items: list[OutboxItem], *, calling_ae: str, timeout_s: float
) -> list[SendOutcome]:
    """Send ``items`` over one association; never raises for network or peer problems."""
    datasets: dict[int, pydicom.Dataset] = {}
    outcomes: list[SendOutcome] = []
    for item in items:
        try:
            datasets[item.id] = pydicom.dcmread(item.path)
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            outcomes.append(SendOutcome(item.id, False, f"cannot read {item.path}: {exc}"))
    if not datasets:
        return outcomes
    contexts: list[tuple[str, str | None]] = []
    for ds in datasets.values():
        for ts in (str(ds.file_meta.TransferSyntaxUID), ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            key = (str(ds.SOPClassUID), str(ts))
            if key not in contexts and len(contexts) < 120:
                contexts.append(key)
    assoc = associate(destination, calling_ae, timeout_s, contexts)
    if isinstance(assoc, str):
        return outcomes + [SendOutcome(i, False, assoc) for i in datasets]
    try:
        for item_id, ds in datasets.items():
            outcomes.append(_send_one(assoc, item_id, ds))
            if not assoc.is_established:
                break
    finally:
        if assoc.is_established:
            assoc.release()
    done = {o.item_id for o in outcomes}
    outcomes += [SendOutcome(i, False, "association ended before sending") for i in datasets if i not in done]
    return outcomes


def _send_one(assoc: Association, item_id: int, ds: pydicom.Dataset) -> SendOutcome:
    try:
        status = assoc.send_c_store(ds)
    except (ValueError, RuntimeError) as exc:  # no accepted context for this object
        return SendOutcome(item_id, False, f"not sendable: {exc}")
    if status is None or "Status" not in status:
        return SendOutcome(item_id, False, "no response (timeout or abort)")
    code = int(status.Status)
    if code == 0x0000:
        return SendOutcome(item_id, True, "success")
    if code in _WARNINGS:
        return SendOutcome(item_id, True, f"stored with warning {_status_text(code)}")
    comment = str(status.get("ErrorComment", "")).strip()
    return SendOutcome(item_id, False, f"status {_status_text(code)} {comment}".strip())


def backoff_s(attempt: int, base_s: float, max_s: float) -> float:
    """Exponential backoff: base, 2*base, 4*base ... capped."""
    return float(min(max_s, base_s * 2 ** max(0, attempt - 1)))


class Egress:
    """Drains the outbox. ``run_once`` is what the scheduler calls; ``wake`` asks for a run now."""

    def __init__(self, store: Store, destinations: list[Destination], settings: EgressSettings, calling_ae: str):
        self.store = store
        self.destinations = {d.name: d for d in destinations}
        self.settings = settings
        self.calling_ae = calling_ae
        self._lock = threading.Lock()
        self.wake_event = threading.Event()

    def wake(self) -> None:
        self.wake_event.set()

    def run_once(self) -> int:
        """Send every due item once; returns how many were delivered."""
        if not self._lock.acquire(blocking=False):
            return 0
        try:
            self.wake_event.clear()
            delivered = 0
            due = self.store.due_outbox(limit=self.settings.batch_size)
            by_dest: dict[str, list[OutboxItem]] = {}
            for item in due:
                by_dest.setdefault(item.destination, []).append(item)
            for name, items in by_dest.items():
                delivered += self._send(name, items)
            return delivered
        finally:
            self._lock.release()

    def _send(self, name: str, items: list[OutboxItem]) -> int:
        dest = self.destinations.get(name)
        if dest is None:
            for item in items:
                self.store.mark_dead(item.id, f"destination {name!r} is no longer configured", actor="egress")
            return 0
        started = time.perf_counter()
        outcomes = send_batch(dest, items, calling_ae=self.calling_ae, timeout_s=self.settings.timeout_s)
        by_id = {i.id: i for i in items}
        delivered = 0
        for out in outcomes:
            item = by_id[out.item_id]
            if out.ok:
                completed = self.store.mark_delivered(item.id, actor="egress")
                delivered += 1
                log.info(
                    "object_delivered",
                    destination=name,
                    kind=item.kind,
                    object_uid=item.object_uid,
                    source_uid=item.sop_instance_uid,
                    detail=out.detail,
                    instance_complete=completed,
                )
                continue
            attempt = item.attempts + 1
            if attempt >= self.settings.max_attempts:
                self.store.mark_dead(item.id, out.detail, actor="egress")
                log.error(
                    "object_dead_lettered",
                    destination=name,
                    kind=item.kind,
                    object_uid=item.object_uid,
                    source_uid=item.sop_instance_uid,
                    attempts=attempt,
                    reason=out.detail,
                )
                continue
            delay = backoff_s(attempt, self.settings.retry_base_s, self.settings.retry_max_s)
            when = (datetime.now(UTC) + timedelta(seconds=delay)).isoformat(timespec="milliseconds")
            self.store.mark_retry(item.id, out.detail, when)
            log.warning(
                "object_send_failed",
                destination=name,
                kind=item.kind,
                object_uid=item.object_uid,
                attempts=attempt,
                retry_in_s=round(delay, 1),
                reason=out.detail,
            )
        log.info(
            "egress_batch",
            destination=name,
            sent=len(items),
            delivered=delivered,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return delivered
