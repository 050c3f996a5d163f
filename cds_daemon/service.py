"""The long-running service: recovery at start, listener, worker, egress, clean stop on SIGTERM."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from apscheduler.schedulers.background import BackgroundScheduler

from cds_daemon.common.clock import timestamp, timestamp_in
from cds_daemon.common.config import Settings, usable_cores
from cds_daemon.common.version import software_version
from cds_daemon.common.vocabulary import TriageMode
from cds_daemon.ingest.listener import Listener
from cds_daemon.ops.health import HealthServer
from cds_daemon.ops.logs import get_logger
from cds_daemon.ops.metrics import (
    AUDIT_UPPER_BOUND,
    MONITOR_ALERT,
    REGISTRY,
    TRIAGE_FALLBACKS,
    TRIAGE_FINALISING,
    StoreCollector,
)
from cds_daemon.ops.systemd import notify
from cds_daemon.ops.threads import blas_threads, limit_blas_threads
from cds_daemon.store import Store, StoreUnavailable
from cds_daemon.store.spool import Spool

if TYPE_CHECKING:  # imported when started: a service without a model bundle never loads ONNX Runtime
    from cds_daemon.analysis.worker import Worker
    from cds_daemon.egress.sender import Egress
    from cds_daemon.ingest.hl7_orders import OrderListener
    from cds_daemon.review.audit import Monitoring
    from cds_daemon.web.server import WebServer

log = get_logger("service")


class StartupError(Exception):
    """The service cannot start (bad bundle, port in use...); the message says what to fix."""


def open_storage(settings: Settings) -> tuple[Store, Spool]:
    """Open the store and spool (creating them) under the configured data directory."""
    storage = settings.storage
    storage.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(storage.database)
    spool = Spool(
        storage.spool_dir,
        min_free_bytes=storage.min_free_mb * 2**20,
        max_used_ratio=storage.max_used_percent / 100,
        node=settings.spool_node,
    )
    return store, spool


def recover(store: Store, spool: Spool, node: str = "local", *, shared: bool = False) -> dict[str, int]:
    """Bring disk and database back to agreement after a crash.

    Partial files and complete files without a row were never acknowledged (the row is
    committed before the Success response): the sender still holds them and will resend.
    Partial files are removed; complete ones are moved aside, not deleted, in case the
    database rather than the file is what was lost. Instances caught mid-processing go back
    to the queue. ``shared``: other nodes use the same spool and store; only this node's partial files
    and claims are its to clean up, and a file is an orphan only once it is an hour old.
    """
    partial = spool.clean_incoming()
    orphans = spool.unreferenced(store.known_spool_paths(), min_age_s=3600.0 if shared else 0.0)
    for path in orphans:
        spool.quarantine(path)
    requeued = store.requeue_interrupted(actor="cds-daemon", node=node)
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
        self.worker: Worker | None = None
        self.runtime: str | None = None  # how the model runs here (runtime, threads, cores): status and health
        self.egress: Egress | None = None
        self.listener: Listener | None = None
        self.health: HealthServer | None = None
        self.web: WebServer | None = None
        self.orders: OrderListener | None = None
        self.web_problem: str | None = None
        self.monitoring: Monitoring | None = None
        self._last_watchdog = 0.0
        self._started = timestamp()
        self._collector = StoreCollector(self.store, settings.storage.data_dir, settings.node_id)

    def start(self) -> None:
        from cds_daemon.common.manifest import BundleError
        from cds_daemon.egress.sender import Egress

        limit_blas_threads()
        s = self.settings
        recover(self.store, self.spool, s.node_id, shared=s.storage.database_url is not None)
        shutil.rmtree(s.worker_scratch, ignore_errors=True)  # repaired slide headers of a run that crashed
        self._heartbeat()
        self.scheduler.add_job(
            self._heartbeat, "interval", seconds=s.cluster.heartbeat_s, id="heartbeat", max_instances=1, coalesce=True
        )
        self.egress = Egress(
            self.store,
            s.destinations,
            s.egress,
            calling_ae=s.listener.ae_title,
            node=s.node_id,
            lease_s=max(s.cluster.lease_s, 2 * s.egress.timeout_s),
        )
        self.scheduler.add_job(
            self.egress.run_once,
            "interval",
            seconds=s.egress.poll_s,
            id="egress",
            max_instances=1,
            coalesce=True,
        )
        if s.model_bundle is None:
            log.warning("no_model_bundle", detail="model_bundle is not set: images are received and queued only")
        else:
            from cds_daemon.analysis.engine import Engine
            from cds_daemon.analysis.worker import Worker

            threads = s.model_threads()
            try:
                engine = Engine(s.model_bundle, threads=threads, chunk=s.backbone_chunk)
            except (BundleError, OSError) as exc:
                raise StartupError(f"model bundle {s.model_bundle}: {exc}") from exc
            chosen = "set" if s.worker_threads else "chosen"
            self.runtime = (
                f"onnxruntime {package_version('onnxruntime')}: {threads} model thread(s) ({chosen}), "
                f"helper process on another core, {usable_cores()} usable core(s)"
            )
            log.info(
                "model_loaded",
                name=engine.manifest.name,
                version=engine.manifest.version,
                runtime=self.runtime,
                detail="model threads: worker_threads, or (0) the usable cores less one for the helper process",
            )
            self.worker = Worker(s, self.store, engine, on_reported=self.wake_egress, on_heartbeat=self.watchdog)
            self.worker.start()
        self._add_worklist_jobs()
        if s.reports.case_sr and s.model_bundle is not None:
            from cds_daemon.review.case_reports import write_due_case_reports

            every = max(0.5, min(15.0, s.reports.case_quiet_s / 4))
            job = functools.partial(write_due_case_reports, on_queued=self.wake_egress)
            self._cluster_job("case-reports", every, job, self.store, s, seconds=every)
        if self.worker is None:
            self.scheduler.add_job(self.watchdog, "interval", seconds=5, id="watchdog")
        if s.storage.retention_days is not None:
            self._cluster_job("retention", 3600, self.retention, hours=1, next_run_time=datetime.now(UTC))
        self.scheduler.start()
        if s.health.enabled:
            REGISTRY.register(self._collector)
            self.health = HealthServer(
                s.health.bind_address, s.health.port, self.readiness, self.liveness, info=self.triage_info
            )
            self.health.start()
        if s.web.enabled:
            self._start_web()
        self.listener = Listener(
            s.listener,
            self.store,
            self.spool,
            on_received=self.worker.wake if self.worker else lambda: None,
            on_commitment_report=self.egress.commitment_report,
            slide_quiet_s=s.slides.quiet_s,
        )
        try:
            self.listener.start()
        except OSError as exc:
            raise StartupError(f"cannot listen on {s.listener.bind_address}:{s.listener.port}: {exc}") from exc
        if s.hl7_listener.enabled:
            from cds_daemon.ingest.hl7_orders import OrderListener

            self.orders = OrderListener(s.hl7_listener, self.store)
            try:
                self.orders.start()
            except OSError as exc:
                where = f"{s.hl7_listener.bind_address}:{s.hl7_listener.port}"
                raise StartupError(f"HL7 orders: cannot listen on {where}: {exc}") from exc

    def _add_worklist_jobs(self) -> None:
        from cds_daemon.review.jobs import escalate_overdue, log_daily_summary

        w = self.settings.worklist
        self._cluster_job(
            "worklist-escalation",
            w.escalation_check_minutes * 60,
            escalate_overdue,
            self.store,
            w.escalate_after_hours,
            minutes=w.escalation_check_minutes,
            next_run_time=datetime.now(UTC),
        )
        self._cluster_job(
            "worklist-summary", 86400, log_daily_summary, self.store, trigger="cron", hour=w.summary_hour_utc
        )
        self.scheduler.add_job(
            self.monitor,
            "interval",
            minutes=w.monitor_minutes,
            id="monitoring",
            next_run_time=datetime.now(UTC),
            max_instances=1,
            coalesce=True,
        )

    def _cluster_job(
        self,
        name: str,
        every_s: float,
        job: Callable[..., object],
        *args: object,
        trigger: str = "interval",
        **when: Any,
    ) -> None:
        """Schedule ``job`` to run on one node of the cluster per ``every_s`` (see ``_once``)."""
        self.scheduler.add_job(
            self._once, trigger, args=(name, every_s, job, *args), id=name, max_instances=1, coalesce=True, **when
        )

    def _once(self, name: str, every_s: float, job: Callable[..., object], *args: object) -> bool:
        """Run a job on one node of the cluster per period (advisory lock and last run in the store)."""
        try:
            with self.store.cluster_job(name, every_s, self.settings.node_id) as mine:
                if mine:
                    (log.info if every_s >= 60 else log.debug)("cluster_job", name=name, node_id=self.settings.node_id)
                    job(*args)
                return mine
        except StoreUnavailable:
            log.warning("store_unavailable", stage=name)
            return False

    def _heartbeat(self) -> None:
        """This node is alive: its row in ``nodes`` and the leases on the images it works on."""
        try:
            self.store.node_heartbeat(
                self.settings.node_id,
                socket.gethostname(),
                os.getpid(),
                f"{software_version()} (schema {self.store.schema_version})",
                self._started,
                self.runtime,
            )
            if self.worker is not None:
                self.worker.renew_claims()
        except StoreUnavailable:
            log.warning("store_unavailable", stage="heartbeat")

    def triage_info(self) -> dict[str, Any]:
        """What may be finalised now, and why (health's JSON, the metric); a store that is down says so."""
        from cds_daemon.analysis.policy import resolve

        if self.worker is None:
            return {"triage": {"configured": str(self.settings.triage.mode), "mode": None, "why": "no model"}}
        policy = resolve(self.settings, self.worker.engine.rules, self.store)
        TRIAGE_FINALISING.clear()
        TRIAGE_FINALISING.labels(configured=policy.configured, mode=policy.mode).set(int(policy.finalises))
        return {
            "triage": {
                "configured": str(policy.configured),
                "mode": str(policy.mode),
                "rule_id": policy.rule_id,
                "why": policy.why,
            },
            "runtime": self.runtime,
        }

    def monitor(self) -> Monitoring:
        """The audit and drift checks, and the fail-safe that acts on them in live mode; each failing check is
        logged, exported and shown on the web."""
        from cds_daemon.review.audit import ALERT_KINDS, check_for, fail_safe

        engine = self.worker.engine if self.worker is not None else None
        manifest = engine.manifest if engine is not None else None
        result = check_for(self.store, manifest, self.settings, engine.identity if engine is not None else None)
        if fail_safe(self.store, self.settings, result) is not None:
            TRIAGE_FALLBACKS.inc()
        with contextlib.suppress(StoreUnavailable):
            self.triage_info()
        failing = {a.kind for a in result.alerts}
        for kind in ALERT_KINDS:
            MONITOR_ALERT.labels(kind=kind).set(int(kind in failing))
        for version, figures in result.audit.items():
            AUDIT_UPPER_BOUND.labels(model_version=version).set(figures["upper_bound"])
        for alert in result.alerts:
            log.warning("monitoring_alert", kind=alert.kind, detail=alert.text)
        self.monitoring = result
        return result

    def _start_web(self) -> None:
        """The reviewers' page. A busy port leaves DICOM ingest running and makes the daemon not ready."""
        from cds_daemon.review.service import ReviewService
        from cds_daemon.web.app import WebContext
        from cds_daemon.web.server import WebServer

        web = self.settings.web
        review = ReviewService(self.settings, self.store, on_queued=self.after_decision)
        ctx = WebContext(
            self.settings,
            self.store,
            review,
            self.worker.engine if self.worker else None,
            alerts=lambda: self.monitoring.alerts if self.monitoring is not None else [],
        )
        try:
            self.web = WebServer(ctx)
        except OSError as exc:
            self.web_problem = f"review web page cannot listen on {web.bind_address}:{web.port}: {exc}"
            log.error("web_failed", reason=self.web_problem)
            return
        self.web.start()
        if not self.store.users():
            log.warning("no_review_users", detail="create one with: cds-daemon user add NAME --role admin")

    def watchdog(self) -> None:
        """systemd WATCHDOG=1, at most every 5 s; called from the worker loop, so a stuck worker stops it."""
        now = time.monotonic()
        if now - self._last_watchdog >= 5:
            self._last_watchdog = now
            notify("WATCHDOG=1")

    def liveness(self) -> list[str]:
        problems = []
        if (
            self.worker is not None
            and time.monotonic() - self.worker.last_heartbeat > self.settings.health.worker_stall_s
        ):
            problems.append(f"worker loop silent for more than {self.settings.health.worker_stall_s:.0f} s")
        return problems

    def readiness(self) -> list[str]:
        problems = self.liveness()
        if self.listener is None or not self.listener.running:
            problems.append("DICOM listener is not running")
        if self.settings.model_bundle is None:
            problems.append("no model bundle configured: images are queued, not analysed")
        elif self.worker is None:
            problems.append("model not loaded")
        free = self.spool.free_bytes()
        if free < self.spool.min_free_bytes or self.spool.used_ratio() > self.spool.max_used_ratio:
            problems.append("disk above the watermark: new images are refused (0xA700)")
        if self.web_problem:
            problems.append(self.web_problem)
        unreachable = self.store.ping()
        if unreachable is not None:
            problems.append(f"the database does not answer ({unreachable}): new images are refused (0xA700)")
            return problems
        dead = self.store.outbox_counts()["dead"]
        if dead:
            problems.append(f"{dead} result object(s) dead-lettered: see cds-daemon status")
        return problems

    def retention(self) -> int:
        """Delete the files of instances delivered more than ``retention_days`` ago; the rows stay."""
        days = self.settings.storage.retention_days
        if days is None:
            return 0
        cutoff = timestamp_in(-days * 86400)
        purged = 0
        for uid, paths in self.store.purgeable(cutoff):
            for path in paths:
                Path(path).unlink(missing_ok=True)
            self.store.mark_purged(uid, actor="retention")
            purged += 1
        if purged:
            log.info("retention_purged", instances=purged, older_than_days=days)
        return purged

    def after_decision(self) -> None:
        """A reviewer decided: send the verified SR now and, in live mode, run the audit checks now (a decision
        on an audited image may be the evidence the fail-safe acts on)."""
        self.wake_egress()
        if self.settings.triage.mode == TriageMode.LIVE and self.scheduler.get_job("monitoring") is not None:
            self.scheduler.modify_job("monitoring", next_run_time=datetime.now(UTC))

    def wake_egress(self) -> None:
        job = self.scheduler.get_job("egress")
        if job is not None:
            job.modify(next_run_time=datetime.now(UTC))

    def stop(self) -> None:
        if self.web is not None:
            self.web.stop()
        if self.health is not None:
            self.health.stop()
            REGISTRY.unregister(self._collector)
        if self.listener is not None:
            self.listener.stop()
        if self.orders is not None:
            self.orders.stop()
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

    try:
        service = Service(settings)
    except StoreUnavailable as exc:  # systemd restarts the unit; nothing was acknowledged meanwhile
        log.error("startup_failed", reason=str(exc))
        return 3
    try:
        service.start()
    except StartupError as exc:
        log.error("startup_failed", reason=str(exc))
        service.stop()
        return 3
    notify("READY=1")
    log.info("ready", counts=service.store.counts_by_state(), blas_threads=blas_threads())
    try:
        stop.wait()
    finally:
        notify("STOPPING=1")
        service.stop()
        log.info("stopped")
    return 0
