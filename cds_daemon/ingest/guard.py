"""Refuse before reading: limits on what any host on the network can make the listener hold.

pynetdicom reads a whole PDU into memory before any handler sees it (a 32-bit length, so up to 4 GiB),
and gives every connection two threads. So, when a TCP connection opens, before one byte is read:

- the peer address must lie in a network some allowed caller may connect from, else the connection is
  closed at once (the AE title is checked later, once the A-ASSOCIATE-RQ has arrived);
- at most ``max_associations`` connections are open at once, and ``max_connections_per_address`` from
  one address (threads are counted where they start, not once an association is up);
- no PDU may declare more than our negotiated maximum PDU length (the A-ASSOCIATE-RQ may use 64 KiB):
  a larger one closes the connection when its 6-byte header is read, its body never is;
- the data received for one message may not exceed ``max_dataset_mb`` of its SOP class (the association
  is aborted);
- a read that waits more than ``network_timeout_s`` closes the connection: pynetdicom blocks in
  ``recv`` until a whole PDU has arrived, so without a socket timeout a peer that sends half a
  header and stops would hold two threads (and a connection slot) for ever.

Refusals are counted by code; the log line and the store row for one (address, code) are written at
most once a minute, so a flood cannot flood the journal or the database.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from cds_daemon.common.config import ListenerSettings
from cds_daemon.common.vocabulary import RefusalCode

#: Room an A-ASSOCIATE-RQ may take even when our maximum PDU length is set lower (many contexts).
ASSOCIATION_PDU_BYTES = 64 * 1024
PDU_HEADER = 6
REPORT_EVERY_S = 60.0

Refuse = Callable[[str, RefusalCode, str], None]  # (peer address, code, reason)


class PduTooLarge(ConnectionAbortedError):
    """A peer declared a PDU longer than we accept; the connection is closed without reading it."""


class ConnectionGuard:
    def __init__(self, settings: ListenerSettings, refuse: Refuse) -> None:
        self.settings = settings
        self._refuse = refuse
        self._lock = threading.Lock()
        self._open: dict[int, str] = {}  # connection key -> peer address
        self._received: dict[int, int] = {}  # connection key -> bytes of the message being received
        self._reported: dict[tuple[str, RefusalCode], float] = {}
        self.max_pdu = max(settings.max_pdu_size, ASSOCIATION_PDU_BYTES) + PDU_HEADER

    def known_address(self, address: str) -> bool:
        return any(caller.permits(address) for caller in self.settings.allowed_callers)

    def admit(self, key: int, address: str) -> bool:
        """Count a new connection, or refuse it (unknown address, too many open); True when admitted."""
        if not self.known_address(address):
            self.refuse(address, RefusalCode.PEER_UNKNOWN, "connection from an address no allowed caller uses")
            return False
        with self._lock:
            total = len(self._open)
            mine = sum(1 for a in self._open.values() if a == address)
            if total < self.settings.max_associations and mine < self.settings.max_connections_per_address:
                self._open[key] = address
                return True
        limit = "connections" if total >= self.settings.max_associations else "connections from this address"
        self.refuse(address, RefusalCode.TOO_MANY_CONNECTIONS, f"too many open {limit}")
        return False

    def release(self, key: int) -> None:
        with self._lock:
            self._open.pop(key, None)
            self._received.pop(key, None)

    def open_connections(self) -> int:
        with self._lock:
            return len(self._open)

    def limit_pdus(self, assoc_socket: Any, address: str) -> None:
        """Make the association's socket refuse to read a PDU body longer than ``max_pdu``.

        pynetdicom's DUL reads each PDU as ``recv(6)`` (type, reserved, length) and then ``recv(length)``;
        the second call is where a hostile length would be honoured, so it is refused there, before
        allocating. pynetdicom handles the error as a closed connection.
        """
        recv = assoc_socket.recv
        limit = self.max_pdu
        if assoc_socket.socket is not None:  # a TLS socket wrapped later inherits the timeout
            assoc_socket.socket.settimeout(self.settings.network_timeout_s)

        def guarded(nr_bytes: int) -> bytearray:
            if nr_bytes > limit:
                self.refuse(address, RefusalCode.PDU_TOO_LARGE, f"PDU of {nr_bytes} bytes (at most {limit})")
                raise PduTooLarge(f"PDU of {nr_bytes} bytes refused")
            data: bytearray = recv(nr_bytes)
            return data

        assoc_socket.recv = guarded

    def data_received(self, key: int, address: str, nbytes: int, limit_mb: int | None = None) -> int | None:
        """Count P-DATA of the message being received: the bytes so far, or None once past ``limit_mb``
        (the message's SOP class limit; ``max_dataset_mb`` when not given)."""
        limit_mb = self.settings.max_dataset_mb if limit_mb is None else limit_mb
        with self._lock:
            total = self._received.get(key, 0) + nbytes
            self._received[key] = total
        if total <= limit_mb * 2**20:
            return total
        self.refuse(address, RefusalCode.DATASET_TOO_LARGE, f"message over {limit_mb} MiB: aborted")
        return None

    def message_done(self, key: int) -> None:
        with self._lock:
            self._received[key] = 0

    def refuse(self, address: str, code: RefusalCode, reason: str) -> None:
        """Count every refusal; report one per (address, code) and minute."""
        now = time.monotonic()
        with self._lock:
            last = self._reported.get((address, code))
            quiet = last is not None and now - last < REPORT_EVERY_S
            if not quiet:
                self._reported[(address, code)] = now
                if len(self._reported) > 10_000:  # forget the oldest, so memory stays bounded
                    self._reported = dict(sorted(self._reported.items(), key=lambda kv: kv[1])[-5_000:])
        self._refuse(address, code, reason if not quiet else "")
