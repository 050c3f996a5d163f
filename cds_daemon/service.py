"""The long-running service: recovery at start, the listener, and a clean stop on SIGTERM."""

from __future__ import annotations

import signal
import threading
from types import FrameType

from cds_daemon.config import Settings
from cds_daemon.ingest import Listener
from cds_daemon.logs import get_logger
from cds_daemon.spool import Spool
from cds_daemon.store import Store
from cds_daemon.systemd_notify import notify

log = get_logger("service")


def open_storage(settings: Settings) -> tuple[Store, Spool]:
    """Open the store and spool (creating them) under the configured data directory."""
    storage = settings.storage
    storage.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(storage.database)
    spool = Spool(storage.spool_dir, min_free_bytes=storage.min_free_mb * 2**20)
    return store, spool


def recover(store: Store, spool: Spool) -> dict[str, int]:
    """Bring disk and database back to agreement after a crash.

    Partial files and complete files without a row were never acknowledged (the row is
    committed before the Success response): the sender still holds them and will resend.
    Partial files are removed; complete ones are moved aside, not deleted, in case the
    database rather than the file is what was lost. Instances caught mid-processing go back
    to the queue.
    """
    partial = spool.clean_incoming()
    orphans = spool.unreferenced(store.known_spool_paths())
    for path in orphans:
        spool.quarantine(path)
    requeued = store.requeue_interrupted(actor="cds-daemon")
    summary = {
        "partial_files_removed": partial,
        "unreferenced_files_moved": len(orphans),
        "requeued": requeued,
    }
    log.info("recovered", **summary)
    return summary


def serve(settings: Settings, stop: threading.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or ``stop`` is set). Returns the process exit code."""
    stop = stop or threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("stop_requested", signal=signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)

    store, spool = open_storage(settings)
    recover(store, spool)
    listener = Listener(settings.listener, store, spool)
    listener.start()
    notify("READY=1")
    log.info("ready", counts=store.counts_by_state())
    try:
        stop.wait()
    finally:
        notify("STOPPING=1")
        listener.stop()
        store.close()
        log.info("stopped")
    return 0
