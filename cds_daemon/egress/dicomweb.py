"""DICOMweb destinations: the result objects by STOW-RS (PS3.18 10.5), with dicomweb-client.

One POST per batch to ``{url}/studies``. The response lists what was stored (Referenced SOP Sequence)
and what failed, with a reason (Failed SOP Sequence); an object in neither, or a whole request that
fails (no connection, HTTP 4xx/5xx), is retried with the same backoff and dead letter as a C-STORE.
The objects keep their deterministic UIDs, so a retry never makes a second copy in the archive.
Authentication: HTTP basic (``username`` + ``password_file``) or a bearer token (``token_file``);
https verifies the server against ``tls.ca_file`` when TLS is enabled, else the system's CAs.
"""

from __future__ import annotations

import time
from typing import Any

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from requests.adapters import HTTPAdapter

from cds_daemon.common.config import Destination
from cds_daemon.egress.peers import EchoResult
from cds_daemon.egress.results import SendOutcome, read_batch
from cds_daemon.store import OutboxItem


class _PinnedCA(HTTPAdapter):
    """https verified against our CA file and nothing else.

    ``Session.verify`` is not enough: requests replaces it with ``$REQUESTS_CA_BUNDLE`` (or
    ``$CURL_CA_BUNDLE``) whenever the request itself sets no ``verify``, which is how dicomweb-client
    calls it. On a host with that variable set, a configured ``tls.ca_file`` would be silently ignored.
    """

    def __init__(self, ca_file: str) -> None:
        super().__init__()
        self._ca_file = ca_file

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs["verify"] = self._ca_file
        return super().send(request, **kwargs)


def http_session(destination: Destination) -> requests.Session:
    """A requests session with the destination's authentication and TLS (DICOMweb and FHIR)."""
    session = requests.Session()
    if destination.token_file is not None:
        token = destination.token_file.read_text().strip()
        session.headers["Authorization"] = f"Bearer {token}"
    elif destination.username is not None:
        password = destination.password_file.read_text().strip() if destination.password_file else ""
        session.auth = (destination.username, password)
    tls = destination.tls
    if tls.enabled:
        session.verify = str(tls.ca_file)
        session.mount("https://", _PinnedCA(str(tls.ca_file)))
        if tls.cert_file is not None and tls.key_file is not None:
            session.cert = (str(tls.cert_file), str(tls.key_file))
    return session


def _client(destination: Destination, timeout_s: float) -> DICOMwebClient:
    assert destination.url is not None  # validated for kind = "dicomweb"
    client = DICOMwebClient(url=destination.url.rstrip("/"), session=http_session(destination), timeout=timeout_s)
    # One attempt per call: the outbox's backoff and dead letter are the retry policy. dicomweb-client's own
    # (up to 5 attempts, on any exception too) would hold the egress thread ~15 s per unreachable archive.
    client.set_http_retry_params(retry=False)
    return client


def _uids(response: pydicom.Dataset, keyword: str) -> dict[str, str]:
    """SOP Instance UIDs in one of the response's sequences, with the failure reason where there is one."""
    out: dict[str, str] = {}
    for item in response.get(keyword, []) or []:
        uid = str(item.get("ReferencedSOPInstanceUID", ""))
        reason = item.get("FailureReason")
        out[uid] = f"STOW-RS failure reason 0x{int(reason):04X}" if reason is not None else ""
    return out


def stow_batch(destination: Destination, items: list[OutboxItem], *, timeout_s: float) -> list[SendOutcome]:
    """Store ``items`` with one STOW-RS request; never raises for network or server problems."""
    datasets, outcomes = read_batch(items)
    if not datasets:
        return outcomes
    try:
        response = _client(destination, timeout_s).store_instances(datasets=list(datasets.values()))
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        return outcomes + [SendOutcome(i, False, f"STOW-RS HTTP {status}") for i in datasets]
    except (requests.RequestException, OSError) as exc:
        return outcomes + [
            SendOutcome(i, False, f"cannot reach {destination.url}: {type(exc).__name__}") for i in datasets
        ]
    stored, failed = _uids(response, "ReferencedSOPSequence"), _uids(response, "FailedSOPSequence")
    by_uid = {str(ds.SOPInstanceUID): item_id for item_id, ds in datasets.items()}
    for uid, item_id in by_uid.items():
        if uid in failed:
            outcomes.append(SendOutcome(item_id, False, failed[uid] or "STOW-RS failed"))
        elif uid in stored:
            outcomes.append(SendOutcome(item_id, True, "STOW-RS stored"))
        else:
            outcomes.append(SendOutcome(item_id, False, "not in the STOW-RS response"))
    return outcomes


def check(destination: Destination, timeout_s: float = 10.0) -> EchoResult:
    """The DICOMweb counterpart of C-ECHO: a QIDO-RS search for one study must answer (HTTP 200 or 204)."""
    started = time.perf_counter()
    try:
        _client(destination, timeout_s).search_for_studies(limit=1)
    except requests.HTTPError as exc:
        status: Any = exc.response.status_code if exc.response is not None else "?"
        return EchoResult(destination.name, False, f"QIDO-RS HTTP {status}", _ms(started))
    except (requests.RequestException, OSError) as exc:
        return EchoResult(destination.name, False, f"cannot reach it: {type(exc).__name__}", _ms(started))
    return EchoResult(destination.name, True, "QIDO-RS answered", _ms(started))


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
