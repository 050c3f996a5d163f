"""Reachability of the configured DICOM destinations (C-ECHO)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from cds_daemon.config import Destination
from cds_daemon.tls import client_context


@dataclass(frozen=True)
class EchoResult:
    destination: str
    ok: bool
    detail: str
    ms: float


def echo(destination: Destination, calling_ae: str, timeout_s: float = 10.0) -> EchoResult:
    """Open an association, send C-ECHO, release. Never raises for network problems."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    ae.add_requested_context(Verification)
    started = time.perf_counter()
    tls = client_context(destination.tls)
    try:
        assoc = ae.associate(
            destination.host,
            destination.port,
            ae_title=destination.ae_title,
            tls_args=(tls, None) if tls else None,
        )
    except OSError as exc:
        return EchoResult(destination.name, False, f"cannot connect: {exc}", _ms(started))
    if not assoc.is_established:
        why = "association rejected" if assoc.is_rejected else "no association (refused or timed out)"
        return EchoResult(destination.name, False, why, _ms(started))
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
