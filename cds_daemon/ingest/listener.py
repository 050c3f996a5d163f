"""The DICOM listener: C-ECHO and C-STORE SCP.

A C-STORE is answered Success only after its bytes are durable in the spool and its row is
committed in the store. The handler parses the header, checks it, writes, records, and
returns; it never decodes pixels or runs the model.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
from pydicom import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import
from pynetdicom.transport import ThreadedAssociationServer

from cds_daemon.common.clock import timestamp_in
from cds_daemon.common.config import ListenerSettings
from cds_daemon.common.vocabulary import RefusalCode
from cds_daemon.egress.commitment import STORAGE_COMMITMENT_PUSH
from cds_daemon.ingest.acceptance import (
    ACCEPTED_SOP_CLASSES,
    ACCEPTED_TRANSFER_SYNTAXES,
    CANNOT_UNDERSTAND,
    NotAcceptable,
    check_dataset,
)
from cds_daemon.ingest.guard import ConnectionGuard
from cds_daemon.ingest.received import (
    discard_unfinished,
    open_received,
    release_incoming_directory,
    use_incoming_directory,
)
from cds_daemon.ops.logs import get_logger
from cds_daemon.ops.metrics import DUPLICATES, RECEIVED, REJECTED, STORE_SECONDS
from cds_daemon.ops.tls import describe_tls_error, handshake, peer_subject_cn, server_context
from cds_daemon.review.cases import case_key
from cds_daemon.store import NewInstance, Store, StoreUnavailable
from cds_daemon.store.spool import DiskFullError, Spool

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
#: While a message arrives, the spool's free space is checked each time this much more has come.
FREE_SPACE_EVERY = 64 * 2**20
P_DATA_TF = 0x04

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")  # a conformant UID; anything else may be free text, kept out of logs
log = get_logger("ingest")


def inflated_size(deflated: bytes, limit: int) -> int:
    """Size of a raw-deflate stream once inflated, counted in 1 MiB steps and never held: stops past ``limit``."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    data = deflated
    while data and total <= limit and not inflater.eof:  # past the end: a pad byte, which zlib leaves unconsumed
        total += len(inflater.decompress(data, 2**20))
        data = inflater.unconsumed_tail
    if total <= limit and not inflater.eof:
        total += len(inflater.flush())
    return total


def _force_parse(ds: Dataset) -> None:
    """Convert every raw element (nested sequences too) so garbage fails here, not later (the header only:
    the pixel data were never read)."""
    for _ in ds.iterall():
        pass


def _deflated_body(path: Path) -> bytes:
    """The deflated data set of a received file (after the File Meta group, which pynetdicom writes)."""
    meta = pydicom.filereader.read_file_meta_info(path)
    with open(path, "rb") as fh:
        fh.seek(128 + 4 + 12 + int(meta.FileMetaInformationGroupLength))
        return fh.read()


class Listener:
    """Owns the pynetdicom AE and its association server."""

    def __init__(
        self,
        settings: ListenerSettings,
        store: Store,
        spool: Spool,
        on_received: Callable[[], None] = lambda: None,
        on_commitment_report: Callable[[int, Dataset], int] | None = None,
        slide_quiet_s: float = 120.0,
    ) -> None:
        self.settings = settings
        self.slide_quiet_s = slide_quiet_s
        self.on_received = on_received
        self.on_commitment_report = on_commitment_report
        self.store = store
        self.spool = spool
        self._server: ThreadedAssociationServer | None = None
        # Connections still in their TLS handshake: cut at stop, which otherwise waits for them.
        self._handshaking: set[socket.socket] = set()
        self._handshake_lock = threading.Lock()
        self._stopping = False
        self.guard = ConnectionGuard(settings, self._connection_refused)
        self.ae = self._make_ae()

    def _make_ae(self) -> AE:
        s = self.settings
        ae = AE(ae_title=s.ae_title)
        ae.maximum_associations = s.max_associations
        ae.maximum_pdu_size = s.max_pdu_size
        ae.acse_timeout = s.acse_timeout_s
        ae.dimse_timeout = s.dimse_timeout_s
        ae.network_timeout = s.network_timeout_s
        ae.require_called_aet = True
        ae.add_supported_context(Verification)
        # A PACS answers a storage commitment request on an association of its own, proposing
        # the SCP role for itself (PS3.4 J.3.3): accept it so its N-EVENT-REPORT reaches egress.
        ae.add_supported_context(STORAGE_COMMITMENT_PUSH, scu_role=True, scp_role=True)
        for sop_class in ACCEPTED_SOP_CLASSES:
            ae.add_supported_context(sop_class, list(ACCEPTED_TRANSFER_SYNTAXES))
        return ae

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("listener not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        with self._handshake_lock:
            self._stopping = False
        use_incoming_directory(self.spool.incoming)
        handlers: list[EventHandlerType] = [
            (evt.EVT_CONN_OPEN, self._on_connection),
            (evt.EVT_CONN_CLOSE, self._on_connection_closed),
            (evt.EVT_DATA_RECV, self._on_data),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_N_EVENT_REPORT, self._on_event_report),
        ]
        self._server = self.ae.start_server(
            (self.settings.bind_address, self.settings.port),
            block=False,
            evt_handlers=handlers,
            ssl_context=server_context(self.settings.tls),
        )
        log.info(
            "listener_started",
            ae_title=self.settings.ae_title,
            address=self.settings.bind_address,
            port=self.port,
            tls=self.settings.tls.enabled,
        )

    def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting; let open associations finish within the grace period; then abort."""
        if self._server is None:
            return
        server, self._server = self._server, None
        with self._handshake_lock:
            self._stopping = True
            unfinished = list(self._handshaking)
        for sock in unfinished:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
        server.shutdown()
        release_incoming_directory(self.spool.incoming)
        deadline = time.monotonic() + (self.settings.stop_grace_s if grace_s is None else grace_s)
        while server.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        leftover = server.active_associations
        for assoc in leftover:
            assoc.abort()
        log.info("listener_stopped", aborted_associations=len(leftover))

    # --- handlers (run on association threads) ----------------------------------------------

    def _on_connection(self, event: Event) -> None:
        """Before anything is read: the peer address and connection limits, the PDU length limit; then, with
        TLS, the handshake, on this connection's thread. A refused or failed one closes the connection."""
        peer = str(event.address[0])  # type: ignore[attr-defined]  # set from the trigger's keywords
        assoc_socket = event.assoc.dul.socket
        sock = assoc_socket.socket if assoc_socket is not None else None
        if sock is None:
            return
        if not self.guard.admit(id(event.assoc), peer):
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            event.assoc.acse_timeout = 0
            return
        self.guard.limit_pdus(assoc_socket, peer)
        if not self.settings.tls.enabled:
            return
        with self._handshake_lock:
            stopping = self._stopping
            if not stopping:
                self._handshaking.add(sock)
        try:
            if stopping:
                raise ConnectionAbortedError("the listener is stopping")
            handshake(sock, self.settings.acse_timeout_s)
        except (OSError, ValueError) as exc:
            # A peer that connects and closes (a port probe) is routine; anything else is worth a warning.
            emit = log.info if isinstance(exc, ssl.SSLEOFError) or self._stopping else log.warning
            emit("tls_handshake_failed", peer=peer, reason=describe_tls_error(exc))
            sock.close()
            self.guard.release(id(event.assoc))  # closed now: not counted against the caller's next try
            # Nothing more can arrive: let the association end now, not after the ACSE timeout.
            event.assoc.acse_timeout = 0
        finally:
            with self._handshake_lock:
                self._handshaking.discard(sock)

    @staticmethod
    def _peer_cn(event: Event) -> str | None:
        assoc_socket = event.assoc.dul.socket
        return peer_subject_cn(assoc_socket.socket if assoc_socket is not None else None)

    def _on_connection_closed(self, event: Event) -> None:
        discard_unfinished(event.assoc)
        self.guard.release(id(event.assoc))

    def _message_limit_mb(self, assoc: Any, pdu: bytes) -> int:
        """The size limit of the message a P-DATA-TF belongs to, by its presentation context's SOP class."""
        if len(pdu) > 10 and pdu[0] == P_DATA_TF:
            context_id = pdu[10]
            for context in assoc.accepted_contexts:
                if context.context_id == context_id:
                    return self.settings.max_dataset_mb_for(str(context.abstract_syntax))
        return self.settings.max_dataset_mb

    def _on_data(self, event: Event) -> None:
        """P-DATA received: a message past its SOP class's ``max_dataset_mb``, or one that would fill the spool
        past its reserve, aborts the association before it grows more (its partial file is removed)."""
        assoc, data = event.assoc, event.data
        address = assoc.requestor.address
        total = self.guard.data_received(id(assoc), address, len(data), self._message_limit_mb(assoc, data))
        if total is None:
            assoc.abort()
            return
        if total // FREE_SPACE_EVERY != (total - len(data)) // FREE_SPACE_EVERY and not self.spool.has_room(0):
            log.error("disk_full", stage="receive", calling_ae=assoc.requestor.ae_title, received_bytes=total)
            self.guard.refuse(address, RefusalCode.OUT_OF_RESOURCES, "the spool is full: transfer aborted")
            assoc.abort()

    def _connection_refused(self, peer: str, code: RefusalCode, reason: str) -> None:
        """Every refusal is counted; ``reason`` is empty when this (peer, code) was reported a moment ago."""
        REJECTED.labels(status="connection", code=code).inc()
        if reason:
            log.warning("connection_refused", peer=peer, code=code)
            with contextlib.suppress(StoreUnavailable):  # the refusal stands; its row is lost with the database
                self.store.record_rejection(status=0, code=code, reason=reason, calling_ae=None, peer_address=peer)

    def _on_event_report(self, event: Event) -> tuple[int, None]:
        if self.on_commitment_report is None or event.request.AffectedSOPClassUID != STORAGE_COMMITMENT_PUSH:
            return 0x0118, None  # no such SOP class
        return self.on_commitment_report(int(event.event_type or 0), event.event_information), None

    def _on_requested(self, event: Event) -> None:
        requestor = event.assoc.requestor
        primitive = requestor.primitive  # the A-ASSOCIATE-RQ, set before EVT_REQUESTED fires
        calling = primitive.calling_ae_title.strip() if primitive is not None else ""
        address = requestor.address
        for caller in self.settings.allowed_callers:
            if caller.ae_title == calling:
                if not caller.permits(address):
                    code, reason = RefusalCode.CALLER_ADDRESS, "calling AE title not permitted from this address"
                elif caller.tls_common_name is not None and caller.tls_common_name != self._peer_cn(event):
                    code, reason = RefusalCode.CALLER_CERTIFICATE, "the certificate is not this AE title's"
                else:
                    return
                break
        else:
            code, reason = RefusalCode.CALLER_UNKNOWN, "calling AE title not recognised"
        log.warning("association_rejected", calling_ae=calling, peer=address, code=code, reason=reason)
        REJECTED.labels(status="0x0103", code=code).inc()
        self.store.record_rejection(
            status=0x0103, code=code, reason=f"association: {reason}", calling_ae=calling, peer_address=address
        )
        event.assoc.acse.send_reject(0x01, 0x01, 0x03)
        # As pynetdicom does for its own rejections: let the DUL flush the A-ASSOCIATE-RJ.
        event.assoc.kill()

    def _on_echo(self, event: Event) -> int:
        log.info("echo", calling_ae=event.assoc.requestor.ae_title, peer=event.assoc.requestor.address)
        return SUCCESS

    def _on_store(self, event: Event) -> int | Dataset:
        try:
            return self._store(event)
        except StoreUnavailable:
            # Nothing is acknowledged that is not committed: the sender keeps the image and retries.
            log.error("store_unavailable", stage="c-store", calling_ae=event.assoc.requestor.ae_title)
            REJECTED.labels(status=f"0x{OUT_OF_RESOURCES:04X}", code=RefusalCode.DATABASE_UNAVAILABLE).inc()
            return OUT_OF_RESOURCES
        finally:
            self.guard.message_done(id(event.assoc))

    def _store(self, event: Event) -> int | Dataset:
        started = time.perf_counter()
        calling = event.assoc.requestor.ae_title
        peer = event.assoc.requestor.address
        context = event.context
        request = event.request
        claimed_uid = str(getattr(request, "AffectedSOPInstanceUID", "") or "")
        path = Path(event.dataset_path)  # the data set as it arrived, on disk (received.use_incoming_directory)
        if context.transfer_syntax == DeflatedExplicitVRLittleEndian:
            limit = self.settings.max_dataset_mb * 2**20
            if inflated_size(_deflated_body(path), limit) > limit:
                reason = f"deflated data set inflates past {self.settings.max_dataset_mb} MiB"
                return self._refuse(
                    OUT_OF_RESOURCES, RefusalCode.DATASET_TOO_LARGE, reason, calling, peer, context, claimed_uid
                )
        try:
            received = open_received(path)
            _force_parse(received.header)
            header = check_dataset(
                received,
                context_sop_class=context.abstract_syntax,
                request_sop_instance=claimed_uid,
                transfer_syntax=context.transfer_syntax,
                max_image_pixels=self.settings.max_image_pixels,
                max_slide_pixels=self.settings.max_slide_pixels,
            )
        except NotAcceptable as exc:
            return self._refuse(exc.status, exc.code, str(exc), calling, peer, context, claimed_uid)
        except Exception as exc:  # ReceivedFileError, and the many types pydicom raises on malformed input
            reason = f"unreadable dataset: {exc}"
            return self._refuse(
                CANNOT_UNDERSTAND, RefusalCode.UNREADABLE_DATASET, reason, calling, peer, context, claimed_uid
            )

        uid = header.sop_instance_uid
        if self.store.has_instance(uid):
            self.store.audit(calling, "received-duplicate", uid, peer=peer)
            self._log_received(started, calling, peer, context, uid, 0, duplicate=True)
            return SUCCESS
        try:
            spooled = self.spool.adopt(uid, path)
        except DiskFullError as exc:
            log.error("disk_full", reason=str(exc), calling_ae=calling, sop_instance_uid=uid)
            reason = f"out of resources: {exc}"
            return self._refuse(OUT_OF_RESOURCES, RefusalCode.OUT_OF_RESOURCES, reason, calling, peer, context, uid)
        except OSError as exc:
            log.error("spool_write_failed", reason=str(exc), sop_instance_uid=uid)
            reason = f"cannot store: {exc.strerror}"
            return self._refuse(OUT_OF_RESOURCES, RefusalCode.OUT_OF_RESOURCES, reason, calling, peer, context, uid)
        self.store.record_received(
            NewInstance(
                sop_instance_uid=uid,
                sop_class_uid=header.sop_class_uid,
                study_instance_uid=header.study_instance_uid,
                series_instance_uid=header.series_instance_uid,
                accession_number=header.accession_number,
                transfer_syntax_uid=str(context.transfer_syntax),
                calling_ae=calling,
                peer_address=peer,
                spool_path=str(spooled.path),
                size_bytes=spooled.size,
                sha256=spooled.sha256,
                case_key=case_key(
                    accession_number=header.accession_number,
                    study_instance_uid=header.study_instance_uid,
                    sop_instance_uid=uid,
                    specimen_identifier=header.specimen_identifier,
                    container_identifier=header.container_identifier,
                ),
                slide_key=header.slide_key,
            ),
            actor=calling,
            slide_due_at=None if header.slide_key is None else timestamp_in(self.slide_quiet_s),
        )
        self._log_received(started, calling, peer, context, uid, spooled.size, duplicate=False)
        self.on_received()
        return SUCCESS

    def _log_received(
        self, started: float, calling: str, peer: str, context: Any, uid: str, size: int, *, duplicate: bool
    ) -> None:
        elapsed = time.perf_counter() - started
        STORE_SECONDS.observe(elapsed)
        (DUPLICATES if duplicate else RECEIVED).inc()
        log.info(
            "instance_received",
            calling_ae=calling,
            peer=peer,
            sop_class_uid=context.abstract_syntax,
            sop_instance_uid=uid,
            transfer_syntax=context.transfer_syntax,
            bytes=size,
            ms=round(elapsed * 1000, 2),
            duplicate=duplicate,
        )

    def _refuse(
        self, status: int, code: RefusalCode, reason: str, calling: str, peer: str, context: Any, uid: str
    ) -> Dataset:
        reason = reason[:200]
        REJECTED.labels(status=f"0x{status:04X}", code=code).inc()
        # The reason can quote the data set (a value that did not parse): the store keeps it, the log does not.
        log.warning(
            "store_refused",
            status=f"0x{status:04X}",
            code=code,
            calling_ae=calling,
            peer=peer,
            sop_class_uid=context.abstract_syntax,
            sop_instance_uid=uid if _UID.fullmatch(uid or "") else "(not a UID)",
        )
        with contextlib.suppress(StoreUnavailable):  # the refusal stands; its row is lost with the database
            self.store.record_rejection(
                status=status,
                code=code,
                reason=reason,
                calling_ae=calling,
                peer_address=peer,
                sop_class_uid=str(context.abstract_syntax),
                sop_instance_uid=uid or None,
            )
        rsp = Dataset()
        rsp.Status = status
        rsp.ErrorComment = reason[:64]
        return rsp
