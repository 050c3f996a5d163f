"""A laboratory information system's HL7 receiver for the tests: hl7apy's MLLP server (another implementation
than the daemon's python-hl7), which parses every message and validates it against the 2.5.1 structures,
and answers with a scripted ACK code per message (AA by default; None: no answer, the sender times out)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tests.support.processes import free_port

VT, FS, CR = "\x0b", "\x1c", "\r"


@dataclass
class Received:
    text: str
    message: Any  # hl7apy Message
    control_id: str
    answered: str | None


@dataclass
class LISPeer:
    port: int = field(default_factory=free_port)
    script: list[str | None] = field(default_factory=list)  # ACK codes for the next messages, then AA
    received: list[Received] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    _server: Any = None

    def answer(self, text: str) -> str:
        from hl7apy.consts import VALIDATION_LEVEL
        from hl7apy.parser import parse_message

        try:
            message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
            message.validate()
        except Exception as exc:  # hl7apy's validation errors have several types
            self.invalid.append(f"{type(exc).__name__}: {exc}")
            code: str | None = "AE"
            message = None
            control = text.split("|")[9] if text.count("|") > 9 else ""
        else:
            control = str(message.msh.msh_10.value)
            code = self.script.pop(0) if self.script else "AA"
        self.received.append(Received(text, message, control, code))
        if code is None:
            time.sleep(30)  # longer than the sender waits
            return ""
        ack = (
            f"MSH|^~\\&|LIS|LAB|THYROID_CDS|CDS|{time.strftime('%Y%m%d%H%M%S')}||ACK^R01^ACK|A{control[:19]}|P|2.5.1{CR}"
            f"MSA|{code}|{control}|{'refused by the test' if code != 'AA' else ''}{CR}"
        )
        return f"{VT}{ack}{FS}{CR}"

    def start(self) -> LISPeer:
        from hl7apy.mllp import AbstractHandler, MLLPServer

        peer = self

        class Handler(AbstractHandler):  # type: ignore[misc]
            def reply(self) -> str:
                return peer.answer(self.incoming_message)

        self._server = MLLPServer("127.0.0.1", self.port, {"ORU^R01^ORU_R01": (Handler,)}, timeout=10)
        self._server.daemon_threads = True  # a handler that sleeps (no answer) must not hold up stop()
        self._server.block_on_close = False
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def segments(self, n: int, name: str) -> list[list[str]]:
        """The ``name`` segments of message ``n``, each as its fields (``[0]`` is the segment's name)."""
        return [line.split("|") for line in self.received[n].text.split(CR) if line.startswith(name + "|")]
