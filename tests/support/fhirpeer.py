"""A FHIR server's transaction endpoint for the tests: records each POSTed Bundle (parsed and validated with
fhir.resources, R4B) and answers with scripted HTTP statuses (200 with a transaction-response by default)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.processes import free_port


@dataclass
class FHIRPeer:
    port: int = field(default_factory=free_port)
    script: list[int] = field(default_factory=list)  # statuses for the next requests, then 200
    received: list[Any] = field(default_factory=list)  # fhir.resources Bundles, in order
    statuses: list[int] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    def start(self) -> FHIRPeer:
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                from fhir.resources.R4B.bundle import Bundle

                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    bundle = Bundle.model_validate_json(body)
                except Exception as exc:  # pydantic's validation errors
                    peer.invalid.append(str(exc)[:500])
                    status = 400
                else:
                    status = peer.script.pop(0) if peer.script else 200
                    peer.received.append(bundle)
                peer.statuses.append(status)
                if status == 200:
                    answer: dict[str, Any] = {"resourceType": "Bundle", "type": "transaction-response", "entry": []}
                else:
                    answer = {
                        "resourceType": "OperationOutcome",
                        "issue": [
                            {"severity": "error", "code": "invalid", "diagnostics": f"refused by the test ({status})"}
                        ],
                    }
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def resources(self, n: int, kind: str) -> list[Any]:
        return [e.resource for e in self.received[n].entry or [] if e.resource.get_resource_type() == kind]
