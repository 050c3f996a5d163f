"""Reachability of the configured DICOM destinations (C-ECHO)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.events import EventHandlerType
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import

from cds_daemon.common.config import Destination
from cds_daemon.ops.tls import client_context


@dataclass(frozen=True)
class EchoResult:
    destination: str
    ok: bool
    detail: str
    ms: float


def associate(
    destination: Destination,
    calling_ae: str,
    timeout_s: float,
    contexts: list[tuple[str, str | None]],
    handlers: list[EventHandlerType] | None = None,
) -> Association | str:
    """An established association to ``destination`` (TLS as configured), or why there is none.

    ``contexts`` are (abstract syntax, transfer syntax or None for pynetdicom's defaults), one
    presentation context each; ``handlers`` are pynetdicom event handlers bound to it (e.g. for
    an N-EVENT-REPORT the peer may send on it). Never raises for network problems.
    """
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout_s
    for abstract, transfer in contexts:
        if transfer is None:
            ae.add_requested_context(abstract)
        else:
            ae.add_requested_context(abstract, transfer)
    tls = client_context(destination.tls)
    called, host, port = destination.peer
    try:
        assoc = ae.associate(
            host,
            port,
            ae_title=called,
            tls_args=(tls, None) if tls else None,  # type: ignore[arg-type]  # None: no host name check
            evt_handlers=handlers or None,
        )
    except OSError as exc:
        return f"cannot connect: {exc}"
    if not assoc.is_established:
        if assoc.is_rejected:
            return "association rejected"
        if tls is not None and tls.tls_error is not None:
            return f"TLS failed: {tls.tls_error}"
        return "no association (peer down or timed out)"
    return assoc


def echo(destination: Destination, calling_ae: str, timeout_s: float = 10.0) -> EchoResult:
    """Open an association, send C-ECHO, release. Never raises for network problems."""
    started = time.perf_counter()
    assoc = associate(destination, calling_ae, timeout_s, [(Verification, None)])
    if isinstance(assoc, str):
        return EchoResult(destination.name, False, assoc, _ms(started))
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if status is None or "Status" not in status:
        return EchoResult(destination.name, False, "no C-ECHO response", _ms(started))
    if status.Status != 0:
        return EchoResult(destination.name, False, f"C-ECHO status 0x{status.Status:04X}", _ms(started))
    return EchoResult(destination.name, True, "C-ECHO success", _ms(started))


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
