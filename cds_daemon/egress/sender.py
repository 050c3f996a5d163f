"""Egress: C-STORE SCU that drains the outbox to every configured destination.

Per destination and batch: one association; one presentation context per (SOP class,
transfer syntax) so the peer can accept what it supports, with explicit little endian
always offered as the fallback. Every response status is checked; an empty response means
no answer and is retried. After ``max_attempts`` an item is dead-lettered.

With ``storage_commitment`` on a destination, the stored objects of a batch are not yet
delivered: the same association asks for storage commitment (:mod:`cds_daemon.egress.commitment`),
and an object is delivered when the PACS's report commits it. A failed object is sent again;
no report within ``commitment_timeout_s`` sends the batch again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pydicom
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.events import Event, EventHandlerType

from cds_daemon.common.clock import timestamp_in
from cds_daemon.common.config import Destination, EgressSettings
from cds_daemon.egress.commitment import (
    REQUEST_ACTION,
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH,
    new_transaction_uid,
    parse_report,
    request_dataset,
)
from cds_daemon.egress.dicomweb import stow_batch
from cds_daemon.egress.fhir import send_fhir_batch
from cds_daemon.egress.hl7 import send_hl7_batch
from cds_daemon.egress.peers import associate
from cds_daemon.egress.results import SendOutcome, read_batch
from cds_daemon.ops.logs import get_logger
from cds_daemon.store import OutboxItem, Store

log = get_logger("egress")

#: Warning statuses mean "stored" (with coercion or element discrepancies).
_WARNINGS = {0xB000, 0xB006, 0xB007, 0x0107, 0x0116}


#: Called before the N-ACTION with (transaction UID, stored item ids) so a fast report finds them.
BeforeCommitment = Callable[[str, list[int]], None]
#: The answer to an N-EVENT-REPORT: (event type, event information) -> DIMSE status.
ReportHandler = Callable[[int, Dataset], int]


@dataclass(frozen=True)
class CommitmentRequest:
    """The storage commitment request made after a batch: its transaction, or why it failed."""

    transaction_uid: str | None
    item_ids: list[int]
    error: str | None = None


def _status_text(status: int) -> str:
    return f"0x{status:04X}"


def send_batch(
    destination: Destination,
    items: list[OutboxItem],
    *,
    calling_ae: str,
    timeout_s: float,
    before_commitment: BeforeCommitment | None = None,
    on_report: ReportHandler | None = None,
) -> tuple[list[SendOutcome], CommitmentRequest | None]:
    """Send ``items`` over one association; never raises for network or peer problems.

    With the destination's ``storage_commitment`` the second value is the commitment request
    for the objects that were stored (None when nothing was).
    """
    datasets, outcomes = read_batch(items)
    if not datasets:
        return outcomes, None
    contexts: list[tuple[str, str | None]] = []
    for ds in datasets.values():
        for ts in (str(ds.file_meta.TransferSyntaxUID), ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            key = (str(ds.SOPClassUID), str(ts))
            if key not in contexts and len(contexts) < 120:
                contexts.append(key)
    commit = destination.storage_commitment
    handlers: list[EventHandlerType] = []
    if commit:
        contexts += [
            (STORAGE_COMMITMENT_PUSH, ExplicitVRLittleEndian),
            (STORAGE_COMMITMENT_PUSH, ImplicitVRLittleEndian),
        ]
        if on_report is not None:  # a PACS may report on this association before we release it
            handlers.append((evt.EVT_N_EVENT_REPORT, _report_handler(on_report)))
    assoc = associate(destination, calling_ae, timeout_s, contexts, handlers)
    if isinstance(assoc, str):
        return outcomes + [SendOutcome(i, False, assoc) for i in datasets], None
    request = None
    try:
        for item_id, ds in datasets.items():
            outcomes.append(_send_one(assoc, item_id, ds))
            if not assoc.is_established:
                break
        stored = [o.item_id for o in outcomes if o.ok]
        if commit and stored:
            request = _request_commitment(assoc, [datasets[i] for i in stored], stored, before_commitment)
    finally:
        if assoc.is_established:
            assoc.release()
    done = {o.item_id for o in outcomes}
    outcomes += [SendOutcome(i, False, "association ended before sending") for i in datasets if i not in done]
    return outcomes, request


def _report_handler(on_report: ReportHandler) -> Callable[[Event], tuple[int, None]]:
    def handle(event: Event) -> tuple[int, None]:
        return on_report(int(event.event_type or 0), event.event_information), None

    return handle


def _request_commitment(
    assoc: Association, stored: list[pydicom.Dataset], ids: list[int], before: BeforeCommitment | None
) -> CommitmentRequest:
    if not assoc.is_established:
        return CommitmentRequest(None, ids, "association ended before the storage commitment request")
    txn = new_transaction_uid()
    if before is not None:
        before(txn, ids)
    action = request_dataset(txn, [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in stored])
    try:
        status, _reply = assoc.send_n_action(
            action, REQUEST_ACTION, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE
        )
    except (ValueError, RuntimeError) as exc:  # the peer did not accept the Storage Commitment context
        return CommitmentRequest(None, ids, f"storage commitment not supported by the peer ({exc})")
    if status is None or "Status" not in status:
        return CommitmentRequest(None, ids, "no answer to the storage commitment request")
    if int(status.Status) != 0x0000:
        return CommitmentRequest(None, ids, f"storage commitment request refused: {_status_text(int(status.Status))}")
    return CommitmentRequest(txn, ids)


def _send_one(assoc: Association, item_id: int, ds: pydicom.Dataset) -> SendOutcome:
    try:
        status = assoc.send_c_store(ds)
    except (ValueError, RuntimeError) as exc:  # no accepted context for this object
        if not ds.file_meta.TransferSyntaxUID.is_compressed:
            return SendOutcome(item_id, False, f"not sendable: {exc}")
        try:  # e.g. the JPEG heatmap to a peer that takes only uncompressed: the same instance, decoded
            ds.decompress(generate_instance_uid=False)
            status = assoc.send_c_store(ds)
        except Exception as retry:  # a decoder's or pynetdicom's: the reason goes to the outbox
            return SendOutcome(item_id, False, f"not sendable: {exc}; decompressed: {retry}")
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

    def __init__(
        self,
        store: Store,
        destinations: list[Destination],
        settings: EgressSettings,
        calling_ae: str,
        *,
        node: str = "local",
        lease_s: float = 120.0,
    ):
        self.store = store
        self.node, self.lease_s = node, lease_s
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
            due = self.store.due_outbox(limit=self.settings.batch_size, node=self.node, lease_s=self.lease_s)
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
        request: CommitmentRequest | None = None
        if dest.kind == "dicomweb":
            outcomes = stow_batch(dest, items, timeout_s=self.settings.timeout_s)
        elif dest.kind == "hl7":
            outcomes = send_hl7_batch(dest, items, timeout_s=self.settings.timeout_s, orders=self.store.order_for)
        elif dest.kind == "fhir":
            outcomes = send_fhir_batch(dest, items, timeout_s=self.settings.timeout_s, orders=self.store.order_for)
        else:
            outcomes, request = send_batch(
                dest,
                items,
                calling_ae=self.calling_ae,
                timeout_s=self.settings.timeout_s,
                before_commitment=self._before_commitment,
                on_report=self.commitment_report,
            )
        by_id = {i.id: i for i in items}
        delivered = 0
        for out in outcomes:
            item = by_id[out.item_id]
            if out.ok and dest.storage_commitment:
                if request is not None and request.error is not None:
                    self._failed(item, request.error)
                continue
            if out.ok:
                self._delivered(item, out.detail)
                delivered += 1
            else:
                self._failed(item, out.detail, permanent=out.permanent)
        if request is not None and request.transaction_uid is not None:
            log.info(
                "commitment_requested",
                destination=name,
                transaction_uid=request.transaction_uid,
                objects=len(request.item_ids),
            )
        log.info(
            "egress_batch",
            destination=name,
            sent=len(items),
            delivered=delivered,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return delivered

    def _before_commitment(self, transaction_uid: str, item_ids: list[int]) -> None:
        resend = timestamp_in(self.settings.commitment_timeout_s)
        self.store.mark_awaiting_commitment(item_ids, transaction_uid, resend)

    def commitment_report(self, event_type: int, info: Dataset) -> int:
        """A storage commitment N-EVENT-REPORT, on our association or the listener's; returns its DIMSE status."""
        try:
            report = parse_report(event_type, info)
        except ValueError as exc:
            log.warning("commitment_report_invalid", reason=str(exc))
            return 0x0113 if "event type" in str(exc) else 0x0115
        items = self.store.commitment_items(report.transaction_uid)
        if not items:
            # Already settled, or superseded by a resend after the timeout: nothing left to do.
            log.warning("commitment_report_unmatched", transaction_uid=report.transaction_uid)
            return 0x0000
        committed = set(report.committed)
        for item in items:
            if item.object_uid in report.failed:
                self._failed(item, report.failed[item.object_uid])
            elif item.object_uid in committed:
                self._delivered(item, f"committed ({report.transaction_uid})")
        log.info(
            "commitment_report",
            transaction_uid=report.transaction_uid,
            committed=len(committed),
            failed=len(report.failed),
        )
        return 0x0000

    def _delivered(self, item: OutboxItem, detail: str) -> None:
        completed = self.store.mark_delivered(item.id, actor="egress")
        log.info(
            "object_delivered",
            destination=item.destination,
            kind=item.kind,
            object_uid=item.object_uid,
            source_uid=item.sop_instance_uid,
            detail=detail,
            instance_complete=completed,
        )

    def _failed(self, item: OutboxItem, detail: str, *, permanent: bool = False) -> None:
        attempt = item.attempts + 1
        if permanent or attempt >= self.settings.max_attempts:
            self.store.mark_dead(item.id, detail, actor="egress")
            log.error(
                "object_dead_lettered",
                destination=item.destination,
                kind=item.kind,
                object_uid=item.object_uid,
                source_uid=item.sop_instance_uid,
                attempts=attempt,
                reason=detail,
            )
            return
        delay = backoff_s(attempt, self.settings.retry_base_s, self.settings.retry_max_s)
        self.store.mark_retry(item.id, detail, timestamp_in(delay))
        log.warning(
            "object_send_failed",
            destination=item.destination,
            kind=item.kind,
            object_uid=item.object_uid,
            attempts=attempt,
            retry_in_s=round(delay, 1),
            reason=detail,
        )
