"""SSL contexts for DICOM TLS, listener side and client side.

Both follow BCP 195 (RFC 9325) as DICOM PS3.15 B.9 adopts it: TLS 1.2 or 1.3, and with TLS 1.2 only
AEAD cipher suites with forward secrecy (ECDHE/DHE with AES-GCM or ChaCha20-Poly1305); no CBC, no RSA
key exchange, no NULL or export suites. TLS 1.3's suites are all AEAD.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from cds_daemon.common.config import DestinationTLSSettings, TLSSettings


class DeferredHandshakeContext(ssl.SSLContext):
    """A server context whose sockets do not shake hands when they are wrapped.

    pynetdicom wraps every accepted socket on its accept loop. With the default
    ``do_handshake_on_connect`` one client that connects and stays silent would hold that loop,
    and every other caller and the shutdown with it, for as long as it likes. The listener does
    the handshake itself, with a timeout, on the association's own thread (:func:`handshake`).
    """

    def wrap_socket(  # type: ignore[override]
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        return super().wrap_socket(
            sock,
            server_side=server_side,
            do_handshake_on_connect=do_handshake_on_connect and not server_side,
            suppress_ragged_eofs=suppress_ragged_eofs,
            server_hostname=server_hostname,
            session=session,
        )


#: OpenSSL cipher string of the TLS 1.2 suites allowed (TLS 1.3 suites are configured separately, all AEAD).
BCP195_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!DSS:!SHA1"


def _bcp195(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(BCP195_TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION


def peer_subject_cn(sock: object) -> str | None:
    """The common name in the peer certificate of a TLS socket (None: no TLS, or no certificate)."""
    if not isinstance(sock, ssl.SSLSocket):
        return None
    cert: dict[str, Any] = dict(sock.getpeercert() or {})
    for rdn in cert.get("subject", ()):
        for attribute in rdn:
            if attribute[0] == "commonName":
                return str(attribute[1])
    return None


def server_context(tls: TLSSettings) -> ssl.SSLContext | None:
    """Context for the listener, or None when TLS is off. Mutual TLS if ``require_peer_cert``.

    TLS 1.2 or later. Callers' certificates are verified against ``ca_file`` only, never the
    system trust store.
    """
    if not tls.enabled:
        return None
    ctx = DeferredHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    _bcp195(ctx)
    ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if tls.ca_file is not None:
        ctx.load_verify_locations(str(tls.ca_file))
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_peer_cert else ssl.CERT_NONE
    return ctx


def handshake(sock: socket.socket, timeout_s: float) -> None:
    """Complete the server side handshake of a socket from :class:`DeferredHandshakeContext`.

    Raises ``OSError`` (``ssl.SSLError``, ``TimeoutError``) when the caller fails it or is
    silent for ``timeout_s``. A plain socket is left alone.
    """
    if not isinstance(sock, ssl.SSLSocket):
        return
    previous = sock.gettimeout()
    sock.settimeout(timeout_s)
    try:
        sock.do_handshake()
    finally:
        sock.settimeout(previous)


class ClientContext(ssl.SSLContext):
    """A client context that remembers why TLS failed on its socket.

    pynetdicom only logs a failed handshake and reports "no association"; the reason (an
    untrusted certificate, a peer that wants our certificate) is what an operator needs.
    """

    tls_error: str | None = None


class _RecordingSocket(ssl.SSLSocket):
    def connect(self, addr: Any) -> None:
        try:
            super().connect(addr)
        except ssl.SSLError as exc:
            self._record(exc)
            raise

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            return super().recv(buflen, flags)
        except ssl.SSLError as exc:
            self._record(exc)
            raise

    def _record(self, exc: ssl.SSLError) -> None:
        ctx = self.context
        if isinstance(ctx, ClientContext) and ctx.tls_error is None:
            ctx.tls_error = describe_tls_error(exc)


def describe_tls_error(exc: BaseException) -> str:
    """A short reason for a failed TLS handshake, e.g. ``CERTIFICATE_VERIFY_FAILED: unable to get ...``."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"{exc.reason}: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


def client_context(tls: DestinationTLSSettings, server_hostname_check: bool = False) -> ClientContext | None:
    """Context for an outgoing association, or None when TLS is off.

    TLS 1.2 or later. PACS certificates are commonly issued for AE hosts by a hospital CA and
    reached by IP, so host name checking is opt-in; the chain is always verified, against
    ``ca_file``. Our certificate is presented when ``cert_file`` and ``key_file`` are set
    (mutual TLS).
    """
    if not tls.enabled:
        return None
    ctx = ClientContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.sslsocket_class = _RecordingSocket
    _bcp195(ctx)
    ctx.check_hostname = server_hostname_check
    ctx.verify_mode = ssl.CERT_REQUIRED
    if tls.ca_file is not None:
        ctx.load_verify_locations(str(tls.ca_file))
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if tls.cert_file is not None and tls.key_file is not None:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return ctx
