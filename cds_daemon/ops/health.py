"""Health and metrics over HTTP: /healthz/live, /healthz/ready (with reasons), /metrics (Prometheus).

Bounded like the DICOM listener: each connection gets ``TIMEOUT_S`` to send its request (a client that
connects and says nothing, or trickles bytes, is dropped) and at most ``MAX_CONNECTIONS`` are served at
once; more are closed on arrival rather than given a thread each.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cds_daemon.ops.logs import get_logger
from cds_daemon.ops.metrics import REGISTRY

log = get_logger("health")

#: Returns the reasons the service is not ready; empty = ready.
ReadinessCheck = Callable[[], list[str]]


TIMEOUT_S = 5.0
MAX_CONNECTIONS = 8


class _BoundedServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 16

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # busy: close at once instead of queueing a thread
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class HealthServer:
    def __init__(
        self,
        address: str,
        port: int,
        readiness: ReadinessCheck,
        liveness: ReadinessCheck,
        info: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        self.readiness = readiness
        self.liveness = liveness
        self.info = info  # shown beside the verdict (the triage mode in force and why), never changes it
        outer = self

        class Handler(BaseHTTPRequestHandler):
            timeout = TIMEOUT_S  # applied to the connection's socket: a silent client is dropped

            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
                elif self.path in ("/healthz/live", "/healthz"):
                    self._json(outer.liveness())
                elif self.path == "/healthz/ready":
                    self._json(outer.readiness())
                else:
                    self._send(404, b'{"error": "not found"}', "application/json")

            def _json(self, problems: list[str]) -> None:
                try:
                    extra = outer.info()
                except Exception as exc:  # the store may be down: the verdict still answers
                    extra = {"info_error": type(exc).__name__}
                body = json.dumps({"ok": not problems, "reasons": problems, **extra}).encode()
                self._send(200 if not problems else 503, body, "application/json")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = _BoundedServer((address, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="health-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        log.info("health_started", port=self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
