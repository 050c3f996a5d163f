"""HL7 destinations (``kind = "hl7"``): the outbox's result documents as ORU^R01 messages to a LIS over MLLP.

The batch's result documents (``documents``) are sent as ``hl7_message`` makes them. ACKs: AA delivered;
AE, a timeout or a broken connection retried with the outbox's backoff; AR dead-lettered at once with its
reason. Logs carry the control ID and the ACK code, never the message.
"""

from __future__ import annotations

import datetime

from cds_daemon.common.config import Destination
from cds_daemon.egress.documents import OrderLookup, result_documents
from cds_daemon.egress.hl7_message import control_id, oru_r01
from cds_daemon.egress.mllp import exchange
from cds_daemon.egress.results import SendOutcome
from cds_daemon.ops.logs import get_logger
from cds_daemon.store import OutboxItem

log = get_logger("egress")


def send_hl7_batch(
    destination: Destination, items: list[OutboxItem], *, timeout_s: float, orders: OrderLookup | None = None
) -> list[SendOutcome]:
    """An outcome per item (never raises for the peer's problems); ``orders`` finds the LIS's order numbers for
    a result by its specimen, container or accession (``Store.order_for``)."""
    documents, outcomes = result_documents(items, orders, "the LIS (HL7)")
    now = datetime.datetime.now().astimezone()
    messages = [
        (
            d.item,
            control_id(d.content.sop_instance_uid),
            oru_r01(d.content, destination, scope=d.scope, order=d.order, now=now),
        )
        for d in documents
    ]
    if not messages:
        return outcomes
    acks = exchange(destination, [(control, text) for _, control, text in messages], timeout_s)
    for (item, control, _), ack in zip(messages, acks, strict=True):
        log.info("hl7_ack", destination=destination.name, control_id=control, ack=ack.code or "none")
        detail = f"{ack.code or 'no ACK'} {control}" + (f": {ack.text}" if ack.text else "")
        outcomes.append(SendOutcome(item.id, ack.accepted, detail, permanent=ack.rejected))
    return outcomes
