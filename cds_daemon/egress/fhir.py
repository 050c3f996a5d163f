"""FHIR destinations (``kind = "fhir"``): each result document as a FHIR transaction (``fhir_bundle``),
POSTed to the server's base URL, from the same outbox as every destination.

HTTP 200/201 with a transaction-response: delivered. A 4xx other than 408 and 429 is the server refusing
the content for good: dead-lettered with its OperationOutcome's words. Anything else (5xx, 408, 429, no
connection, a timeout) is retried with the outbox's backoff. Authentication and TLS as for DICOMweb.
Only the result documents go (``documents``); the other objects are marked delivered without a request.
"""

from __future__ import annotations

import datetime

import requests

from cds_daemon.common.config import Destination
from cds_daemon.egress.dicomweb import http_session
from cds_daemon.egress.documents import OrderLookup, result_documents
from cds_daemon.egress.fhir_bundle import transaction
from cds_daemon.egress.results import SendOutcome
from cds_daemon.ops.logs import get_logger
from cds_daemon.store import OutboxItem

log = get_logger("egress")

FHIR_JSON = "application/fhir+json"


def _reason(response: requests.Response) -> str:
    """An OperationOutcome's diagnostics, else the HTTP status."""
    try:
        issues = response.json().get("issue") or []
        words = "; ".join(str(i.get("diagnostics") or i.get("details", {}).get("text") or "") for i in issues)
    except (ValueError, AttributeError):
        words = ""
    return f"HTTP {response.status_code}" + (f": {words[:300]}" if words.strip("; ") else "")


def send_fhir_batch(
    destination: Destination, items: list[OutboxItem], *, timeout_s: float, orders: OrderLookup | None = None
) -> list[SendOutcome]:
    """One transaction per result document; an outcome per item (never raises for the server's problems)."""
    session = http_session(destination)
    url = str(destination.url).rstrip("/")
    now = datetime.datetime.now().astimezone()
    documents, outcomes = result_documents(items, orders, "FHIR")
    for document in documents:
        item = document.item
        bundle = transaction(document.content, scope=document.scope, order=document.order, now=now)
        body = bundle.model_dump_json(exclude_none=True)
        try:
            response = session.post(
                url, data=body.encode(), headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}, timeout=timeout_s
            )
        except (requests.RequestException, OSError) as exc:
            outcomes.append(SendOutcome(item.id, False, f"cannot reach {url}: {type(exc).__name__}"))
            continue
        code = response.status_code
        log.info("fhir_transaction", destination=destination.name, object_uid=item.object_uid, status=code)
        if code in (200, 201):
            outcomes.append(SendOutcome(item.id, True, f"HTTP {code}"))
        else:
            permanent = 400 <= code < 500 and code not in (408, 429)
            outcomes.append(SendOutcome(item.id, False, _reason(response), permanent=permanent))
    return outcomes
