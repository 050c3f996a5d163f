"""Orders in: HL7 v2.5.1 OML^O21 from the laboratory information system over MLLP, answered ORL^O22.

An order registers the LIS's placer and filler order numbers (ORC-2, ORC-3; OBR-2, OBR-3 when ORC leaves
them out) with what they are for: the accession (SPM-30, pre-adopted from v2.7 as IHE PaLM does, else
OBR-3), the specimen (SPM-2) and its container (SAC-3), and the ordering provider (ORC-12). Results whose
SR names that specimen, container or accession then carry the LIS's numbers (``egress.hl7``).

python-hl7's asyncio server frames and unframes; a peer outside ``allowed_peers`` is disconnected before
anything is read. A message that is not OML^O21, has no control ID, or names nothing to match results by
is answered AE or AR with the reason and changes nothing. Logs carry the control ID and the answer only.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import threading
from dataclasses import dataclass

import hl7
import hl7.exceptions
import hl7.mllp

from cds_daemon.common.config import HL7ListenerSettings
from cds_daemon.ops.logs import get_logger
from cds_daemon.ops.tls import server_context
from cds_daemon.store import Order, Store

log = get_logger("hl7")


@dataclass(frozen=True)
class Answer:
    code: str  # AA, AE, AR
    text: str


def _value(message: hl7.Message, segment: str, field: int, component: int = 1) -> str:
    """One component's unescaped value; "" where the segment, field or component is absent."""
    try:
        text = message.extract_field(segment, 1, field, 1, component, 1)
    except (KeyError, IndexError):
        return ""
    return str(message.unescape(str(text))).strip()


def order_of(message: hl7.Message) -> Order | Answer:
    """The order an OML^O21 registers, or the answer that refuses it."""
    control = _value(message, "MSH", 10)
    kind = f"{_value(message, 'MSH', 9, 1)}^{_value(message, 'MSH', 9, 2)}"
    if not control:
        return Answer("AR", "MSH-10 (message control ID) is empty")
    if kind != "OML^O21":
        return Answer("AR", f"{kind} is not accepted here: send OML^O21")
    try:
        message.segment("ORC")
    except KeyError:
        return Answer("AE", "no ORC segment: the order numbers are missing")
    placer = _value(message, "ORC", 2) or _value(message, "OBR", 2)
    filler = _value(message, "ORC", 3) or _value(message, "OBR", 3)
    if not placer and not filler:
        return Answer("AE", "neither a placer (ORC-2) nor a filler order number (ORC-3) is given")
    specimen = _value(message, "SPM", 2, 2) or _value(message, "SPM", 2, 1)
    container = _value(message, "SAC", 3)
    accession = _value(message, "SPM", 30) or _value(message, "OBR", 3) or None
    if not (specimen or container or accession):
        return Answer("AE", "nothing to match results by: give SPM-2, SAC-3 or the accession (SPM-30 or OBR-3)")
    family, given = _value(message, "ORC", 12, 2), _value(message, "ORC", 12, 3)
    provider = "^".join(p for p in (family, given) if p) or None
    return Order(placer, filler, accession, specimen or None, container or None, provider, control)


def reply(message: hl7.Message, answer: Answer) -> hl7.Message:
    """ORL^O22 with MSA (and the reason in MSA-3) for ``message``."""
    ack = message.create_ack(ack_code=answer.code, message_id=f"R{_value(message, 'MSH', 10)[:19]}")
    msh = ack.segment("MSH")
    msh.assign_field("ORL", 9, 1, 1)
    msh.assign_field("O22", 9, 1, 2)
    msh.assign_field("ORL_O22", 9, 1, 3)
    msh.assign_field(datetime.datetime.now().strftime("%Y%m%d%H%M%S"), 7)
    if answer.text:
        ack.segment("MSA").assign_field(message.escape(answer.text[:200]), 3)
    return ack


def handle(message: hl7.Message, store: Store) -> Answer:
    found = order_of(message)
    if isinstance(found, Answer):
        return found
    new = store.record_order(found, actor="hl7")
    return Answer("AA", "order registered" if new else "order updated")


class OrderListener:
    """The MLLP server in a thread of its own (an asyncio loop); ``port`` is the one bound."""

    def __init__(self, settings: HL7ListenerSettings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.port = settings.port
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="hl7-orders", daemon=True)

    def start(self) -> None:
        s = self.settings
        server: asyncio.Server = self._loop.run_until_complete(
            hl7.mllp.start_hl7_server(self._client, s.bind_address, s.port, ssl=server_context(s.tls))
        )
        self._server = server
        self.port = int(server.sockets[0].getsockname()[1])
        self._thread.start()
        log.info("hl7_listener_started", address=s.bind_address, port=self.port, tls=s.tls.enabled)

    async def _client(self, reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
        peer = (writer.get_extra_info("peername") or ("?",))[0]
        try:
            if not self.settings.permits(str(peer)):
                log.warning("hl7_peer_refused", peer=str(peer))
                return
            while True:
                try:
                    message = await asyncio.wait_for(reader.readmessage(), self.settings.timeout_s)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return
                except (hl7.mllp.InvalidBlockError, hl7.exceptions.HL7Exception, ValueError) as exc:
                    log.warning("hl7_unreadable", peer=str(peer), reason=type(exc).__name__)
                    return
                answer = await asyncio.get_running_loop().run_in_executor(None, handle, message, self.store)
                log.info("hl7_order", control_id=_value(message, "MSH", 10)[:40], answer=answer.code)
                writer.writemessage(reply(message, answer))
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()

    def stop(self) -> None:
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
