"""The result documents of an outbox batch, for the destinations that take results rather than objects
(HL7 to the LIS, FHIR): each SR read (``sr_content``) with what it is about and the order it answers.

Only the SRs go (each image's or slide's AI result, the case's, a reviewer's); the other objects of a result
(heatmaps, KOS, annotations, maps) are for PACS viewers and are marked delivered to such a destination
without being sent. An SR that cannot be read is a dead letter at once: resending it would not help.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cds_daemon.common.vocabulary import OutputKind
from cds_daemon.egress.hl7_message import OrderNumbers
from cds_daemon.egress.results import SendOutcome
from cds_daemon.egress.sr_content import SRContent, SRUnreadable, read_sr
from cds_daemon.store import Order, OutboxItem

RESULT_KINDS = frozenset({OutputKind.SR, OutputKind.CASE_SR, OutputKind.REVIEW_SR})
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
#: (accession, specimen, container) -> the LIS's order for them, if one came in (``Store.order_for``).
OrderLookup = Callable[[str | None, str | None, str | None], Order | None]


@dataclass(frozen=True)
class Document:
    item: OutboxItem
    content: SRContent
    scope: str  # hl7_message.SCOPES: image, slide, case, review
    order: OrderNumbers | None


def scope_of(kind: str, sop_class_uid: str) -> str:
    if kind == OutputKind.REVIEW_SR:
        return "review"
    if kind == OutputKind.CASE_SR:
        return "case"
    return "slide" if sop_class_uid == COMPREHENSIVE_3D_SR else "image"  # a slide's result is a 3D SR


def order_numbers(content: SRContent, orders: OrderLookup | None) -> OrderNumbers | None:
    """The LIS's numbers for the result's specimen, container or accession, if an order came in."""
    order = orders(content.accession or None, content.specimen or None, content.container or None) if orders else None
    return None if order is None else OrderNumbers(order.placer_order, order.filler_order, order.ordering_provider)


def result_documents(
    items: list[OutboxItem], orders: OrderLookup | None, what: str
) -> tuple[list[Document], list[SendOutcome]]:
    """The batch's result documents, and the outcomes of the rest (``what``: the destination, for messages)."""
    documents: list[Document] = []
    outcomes: list[SendOutcome] = []
    for item in items:
        if item.kind not in RESULT_KINDS:
            outcomes.append(SendOutcome(item.id, True, f"not for {what}: only result documents are sent"))
            continue
        try:
            content = read_sr(Path(item.path))
        except (OSError, SRUnreadable) as exc:
            outcomes.append(SendOutcome(item.id, False, f"cannot make the {what} result: {exc}", permanent=True))
            continue
        documents.append(
            Document(item, content, scope_of(item.kind, content.sop_class_uid), order_numbers(content, orders))
        )
    return documents, outcomes
