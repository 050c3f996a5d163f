"""The review web page served from inside the daemon by waitress, a production WSGI server, in a thread."""

from __future__ import annotations

import threading
from typing import Any

from waitress import wasyncore
from waitress.server import create_server

from cds_daemon.ops.logs import get_logger
from cds_daemon.web.app import WebContext, create_app

log = get_logger("web")


class WebServer:
    """Binds at construction (so a busy port is reported at start), serves after :meth:`start`."""

    def __init__(self, ctx: WebContext) -> None:
        web = ctx.settings.web
        self.app = create_app(ctx)
        self._server: Any = create_server(
            self.app,
            host=web.bind_address,
            port=web.port,
            threads=web.threads,
            ident="cds-review",
            channel_timeout=60,
            connection_limit=100,
            expose_tracebacks=False,
        )
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="review-web", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _serve(self) -> None:
        """waitress's loop, one poll at a time, so that the socket is closed by the thread that polls it."""
        while not self._stopping.is_set():
            wasyncore.loop(timeout=0.5, map=self._server._map, count=1)
        self._close()

    def _close(self) -> None:
        self._server.task_dispatcher.shutdown(timeout=5)
        wasyncore.close_all(self._server._map)

    def start(self) -> None:
        self._thread.start()
        log.info("web_started", address=self._server.effective_host, port=self.port)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        else:
            self._close()
