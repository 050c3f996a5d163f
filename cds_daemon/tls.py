"""SSL contexts for DICOM TLS, listener side and client side."""

from __future__ import annotations

import ssl

from cds_daemon.config import TLSSettings


def server_context(tls: TLSSettings) -> ssl.SSLContext | None:
    """Context for the listener, or None when TLS is off. Mutual TLS if ``require_peer_cert``."""
    if not tls.enabled:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if tls.ca_file is not None:
        ctx.load_verify_locations(str(tls.ca_file))
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_peer_cert else ssl.CERT_NONE
    return ctx


def client_context(tls: TLSSettings, server_hostname_check: bool = False) -> ssl.SSLContext | None:
    """Context for an outgoing association, or None when TLS is off.

    PACS certificates are commonly issued for AE hosts by a hospital CA and reached by IP,
    so host name checking is opt-in; the chain is always verified against ``ca_file``.
    """
    if not tls.enabled:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file) if tls.ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = server_hostname_check
    if tls.cert_file is not None and tls.key_file is not None:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return ctx
