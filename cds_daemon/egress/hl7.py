"""HL7 destinations (``kind = "hl7"``): the outbox's result documents as ORU^R01 messages to a LIS over MLLP.

Of what the outbox holds for the destination, the SRs are sent (the AI's per image or slide, the case's,
a reviewer's; ``hl7_message``); the other objects (heatmaps, KOS, annotations, maps) are for PACS viewers
and are marked delivered to the LIS without a message. ACKs: AA delivered; AE, a timeout or a broken
connection retried with the outbox's backoff; AR dead-lettered at once with its reason. Logs carry the
control ID and the ACK code, never the message.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path

from cds_daemon.common.config import Destination
from cds_daemon.common.vocabulary import OutputKind
from cds_daemon.egress.hl7_message import OrderNumbers, control_id, oru_r01
from cds_daemon.egress.mllp import exchange
from cds_daemon.egress.results import SendOutcome
from cds_daemon.egress.sr_content import SRContent, SRUnreadable, read_sr
from cds_daemon.ops.logs import get_logger
from cds_daemon.store import Order, OutboxItem

log = get_logger("egress")

#: The result documents a LIS receives; the rest of a result is for PACS viewers.
HL7_KINDS = frozenset({OutputKind.SR, OutputKind.CASE_SR, OutputKind.REVIEW_SR})
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
#: (accession, specimen, container) -> the LIS's order for them, if one came in.
OrderLookup = Callable[[str | None, str | None, str | None], Order | None]


def scope_of(kind: str, sop_class_uid: str) -> str:
    """What a result document is about: ``hl7_message.SCOPES``."""
    if kind == OutputKind.REVIEW_SR:
        return "review"
    if kind == OutputKind.CASE_SR:
        return "case"
    return "slide" if sop_class_uid == COMPREHENSIVE_3D_SR else "image"  # a slide's result is a 3D SR


def order_numbers(content: SRContent, orders: OrderLookup | None) -> OrderNumbers | None:
    """The LIS's numbers for the result's specimen, container or accession, if an order came in."""
    order = orders(content.accession or None, content.specimen or None, content.container or None) if orders else None
    return None if order is None else OrderNumbers(order.placer_order, order.filler_order, order.ordering_provider)


def send_hl7_batch(
    destination: Destination, items: list[OutboxItem], *, timeout_s: float, orders: OrderLookup | None = None
) -> list[SendOutcome]:
    """An outcome per item (never raises for the peer's problems); ``orders`` finds the LIS's order numbers for
    a result by its specimen, container or accession (``Store.order_for``)."""
    outcomes: list[SendOutcome] = []
    messages: list[tuple[OutboxItem, str, str]] = []
    now = datetime.datetime.now().astimezone()
    for item in items:
        if item.kind not in HL7_KINDS:
            outcomes.append(SendOutcome(item.id, True, "not for the LIS: only result documents go by HL7"))
            continue
        try:
            content = read_sr(Path(item.path))
        except (OSError, SRUnreadable) as exc:
            outcomes.append(SendOutcome(item.id, False, f"cannot make the HL7 message: {exc}", permanent=True))
            continue
        scope = scope_of(item.kind, content.sop_class_uid)
        message = oru_r01(content, destination, scope=scope, order=order_numbers(content, orders), now=now)
        messages.append((item, control_id(content.sop_instance_uid), message))
    if not messages:
        return outcomes
    acks = exchange(destination, [(control, text) for _, control, text in messages], timeout_s)
    for (item, control, _), ack in zip(messages, acks, strict=True):
        log.info("hl7_ack", destination=destination.name, control_id=control, ack=ack.code or "none")
        detail = f"{ack.code or 'no ACK'} {control}" + (f": {ack.text}" if ack.text else "")
        outcomes.append(SendOutcome(item.id, ack.accepted, detail, permanent=ack.rejected))
    return outcomes
