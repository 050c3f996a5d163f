"""The long-running service: recovery at start, listener, worker, egress, clean stop on SIGTERM."""

from __future__ import annotations

import signal
import threading
from datetime import UTC, datetime
from types import FrameType

from apscheduler.schedulers.background import BackgroundScheduler

from cds_daemon.config import Settings
from cds_daemon.ingest import Listener
from cds_daemon.logs import get_logger
from cds_daemon.spool import Spool
from cds_daemon.store import Store
from cds_daemon.systemd_notify import notify

log = get_logger("service")


class StartupError(Exception):
    """The service cannot start (bad bundle, port in use...); the message says what to fix."""


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


class Service:
    """Everything that runs: built by :meth:`start`, torn down in reverse by :meth:`stop`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store, self.spool = open_storage(settings)
        self.scheduler = BackgroundScheduler(timezone=UTC)
        self.worker = None
        self.egress = None
        self.listener: Listener | None = None

    def start(self) -> None:
        from cds_daemon.bundle import BundleError
        from cds_daemon.egress import Egress

        recover(self.store, self.spool)
        s = self.settings
        self.egress = Egress(self.store, s.destinations, s.egress, calling_ae=s.listener.ae_title)
        self.scheduler.add_job(
            self.egress.run_once,
            "interval",
            seconds=s.egress.poll_s,
            id="egress",
            max_instances=1,
            coalesce=True,
        )
        if s.model_bundle is None:
            log.warning(
                "no_model_bundle", detail="model_bundle is not set: images are received and queued only"
            )
        else:
            from cds_daemon.engine import Engine
            from cds_daemon.worker import Worker

            try:
                engine = Engine(s.model_bundle, threads=s.worker_threads)
            except (BundleError, OSError) as exc:
                raise StartupError(f"model bundle {s.model_bundle}: {exc}") from exc
            log.info("model_loaded", name=engine.manifest.name, version=engine.manifest.version)
            self.worker = Worker(s, self.store, engine, on_reported=self.wake_egress)
            self.worker.start()
        self.scheduler.start()
        self.listener = Listener(
            s.listener, self.store, self.spool, on_received=self.worker.wake if self.worker else lambda: None
        )
        try:
            self.listener.start()
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {s.listener.bind_address}:{s.listener.port}: {exc}"
            ) from exc

    def wake_egress(self) -> None:
        job = self.scheduler.get_job("egress")
        if job is not None:
            job.modify(next_run_time=datetime.now(UTC))

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.stop()
        if self.worker is not None:
            self.worker.stop()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.store.close()


def serve(settings: Settings, stop: threading.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or ``stop`` is set). Returns the process exit code."""
    stop = stop or threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("stop_requested", signal=signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)

    service = Service(settings)
    try:
        service.start()
    except StartupError as exc:
        log.error("startup_failed", reason=str(exc))
        service.stop()
        return 3
    notify("READY=1")
    log.info("ready", counts=service.store.counts_by_state())
    try:
        stop.wait()
    finally:
        notify("STOPPING=1")
        service.stop()
        log.info("stopped")
    return 0
