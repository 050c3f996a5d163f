"""MLLP (HL7 v2 over TCP, optionally TLS) with python-hl7's asyncio streams: messages out, their ACKs in.

python-hl7 frames and unframes (<VT> message <FS><CR>); a reply without that framing, one that is not an
HL7 message, or an ACK for another control ID is a failure of that message, retried. One connection per
message (receivers differ: some close the connection after each ACK), each waiting for its ACK
(``timeout_s``) before the next message is sent, in the outbox's order.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass

import hl7
import hl7.exceptions
import hl7.mllp

from cds_daemon.common.config import Destination
from cds_daemon.egress.peers import EchoResult
from cds_daemon.ops.tls import client_context


@dataclass(frozen=True)
class Ack:
    """What the receiver answered: MSA-1 (AA, AE, AR; CA, CE, CR), MSA-3 and ERR's text, or why there is none."""

    code: str | None
    text: str

    @property
    def accepted(self) -> bool:
        return self.code in ("AA", "CA")

    @property
    def rejected(self) -> bool:
        """AR / CR: the receiver will never take this message (dead letter, not retried)."""
        return self.code in ("AR", "CR")


def _ack_of(reply: hl7.Message, control_id: str) -> Ack:
    try:
        msa = reply.segment("MSA")
    except KeyError:
        return Ack(None, "the reply has no MSA segment")
    code = str(msa(1))
    if str(msa(2)) != control_id:
        return Ack(None, f"the ACK is for control ID {str(msa(2))[:40]!r}, not {control_id}")
    text = str(msa(3)) if len(msa) > 3 else ""
    try:
        err = reply.segment("ERR")
        text = "; ".join(t for t in (text, str(err(8)) if len(err) > 8 else "") if t)
    except KeyError:
        pass
    return Ack(code, text[:500])


async def _one(destination: Destination, control: str, text: str, timeout_s: float) -> Ack:
    try:
        reader, writer = await asyncio.wait_for(
            hl7.mllp.open_hl7_connection(
                destination.host, destination.port, encoding="utf-8", ssl=client_context(destination.tls)
            ),
            timeout_s,
        )
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        return Ack(None, f"cannot connect to {destination.address}: {exc or type(exc).__name__}")
    try:
        writer.writemessage(hl7.parse(text))
        await writer.drain()
        reply = await asyncio.wait_for(reader.readmessage(), timeout_s)
    except TimeoutError:
        return Ack(None, f"no ACK within {timeout_s:g} s")
    except (OSError, asyncio.IncompleteReadError, hl7.mllp.InvalidBlockError) as exc:
        return Ack(None, f"connection failed: {type(exc).__name__} {exc}".strip())
    except hl7.exceptions.HL7Exception as exc:
        return Ack(None, f"the reply is not an HL7 message: {exc}")
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 2)
    return _ack_of(reply, control)


async def _exchange(destination: Destination, messages: list[tuple[str, str]], timeout_s: float) -> list[Ack]:
    acks: list[Ack] = []
    for control, text in messages:
        ack = await _one(destination, control, text, timeout_s)
        acks.append(ack)
        if ack.code is None and ack.text.startswith("cannot connect"):  # the rest would wait the same way
            acks += [Ack(None, ack.text)] * (len(messages) - len(acks))
            break
    return acks


def exchange(destination: Destination, messages: list[tuple[str, str]], timeout_s: float) -> list[Ack]:
    """Send ``(control ID, message)`` pairs in order over one connection; one Ack per message."""
    return asyncio.run(_exchange(destination, messages, timeout_s))


async def _connect(destination: Destination, timeout_s: float) -> str | None:
    try:
        _, writer = await asyncio.wait_for(
            hl7.mllp.open_hl7_connection(destination.host, destination.port, ssl=client_context(destination.tls)),
            timeout_s,
        )
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        return f"cannot connect: {exc or type(exc).__name__}"
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 2)
    return None


def check(destination: Destination, timeout_s: float = 10.0) -> EchoResult:
    """``cds-daemon check``: the LIS accepts a connection (TLS included); no message is sent."""
    started = time.perf_counter()
    error = asyncio.run(_connect(destination, timeout_s))
    ms = round((time.perf_counter() - started) * 1000, 1)
    return EchoResult(destination.name, error is None, error or "MLLP connection accepted", ms)
