"""The inference worker: received instance -> prediction, triage, result objects -> outbox.

Instances are claimed from the store in arrival order (see :class:`Worker` for the stages).
A failure on one image (decode, model, report, even a crash of the helper process) marks that
instance ``failed`` with the reason and keeps its file; the pipeline goes on.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cds_daemon.analysis.decode import DecodeError
from cds_daemon.analysis.engine import Engine
from cds_daemon.analysis.helper import BrokenProcessPool, Offload, PreparedPixels, ReportOutputs
from cds_daemon.analysis.pipeline import (
    Inferred,
    infer,
    make_record,
    not_analysed_objects,
    not_analysed_record,
    not_analysed_result,
)
from cds_daemon.analysis.policy import resolve
from cds_daemon.analysis.slide_result import (
    PreparedSlide,
    SlideInferred,
    SlideReportJob,
    field_rows,
    infer_slide,
    report_job,
    slide_embedding,
    slide_record,
    without_pixels,
)
from cds_daemon.common.clock import timestamp_in
from cds_daemon.common.config import Settings
from cds_daemon.ops.logs import get_logger
from cds_daemon.ops.memory import release_memory
from cds_daemon.ops.metrics import INFERENCE_SECONDS, PIPELINE_SECONDS
from cds_daemon.review.audit import sampled_for_audit
from cds_daemon.store import Instance, LostClaim, OutputObject, Store, StoreUnavailable
from cds_daemon.store.spool import DiskFullError, Spool

log = get_logger("worker")

#: Images decoded ahead of the model; also bounds the cases waiting for their reports.
LOOKAHEAD = 2
#: After the results could not be written for want of space: how long new claims wait.
DISK_FULL_PAUSE_S = 5.0


class OffloadCrash(RuntimeError):
    """The helper process died twice on the same image."""


@dataclass(frozen=True)
class _Claimed:
    """A claimed image (or whole slide: ``levels``, the slide's levels on disk) being decoded ahead."""

    instance: Instance
    started: float
    prepared: Future[Any]
    levels: list[tuple[str, str]] | None = None


@dataclass(frozen=True)
class _InFlight:
    """A case between the model thread and the recorder: its reports are being built."""

    instance: Instance
    started: float
    prepare_ms: float
    inferred: Inferred | None
    reports: Future[ReportOutputs]
    slide: tuple[PreparedSlide, SlideInferred, SlideReportJob] | None = None


class Worker:
    """Claims received instances and runs the pipeline on them.

    In the daemon (:meth:`start`) it is a three-stage pipeline, so the model never waits for I/O or
    report building: the helper process (:mod:`cds_daemon.analysis.helper`) decodes the next images while
    the model thread runs the ensemble on this one, then builds and writes its reports while the
    model goes on; a recorder thread commits each finished case to the store.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        engine: Engine,
        on_reported: Callable[[], None] = lambda: None,
        on_heartbeat: Callable[[], None] = lambda: None,
    ) -> None:
        self.on_heartbeat = on_heartbeat
        self.settings = settings
        self.store = store
        self.engine = engine
        self.results = Spool(settings.storage.results_dir, node=settings.spool_node)  # "not analysed" SRs
        self.on_reported = on_reported
        self.wake_event = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._finished: queue.Queue[_InFlight | None] = queue.Queue(maxsize=LOOKAHEAD + 1)
        self.offload: Offload | None = None
        self.last_heartbeat = time.monotonic()
        self._in_flight: set[str] = set()  # claimed, not yet recorded: the leases the heartbeat renews
        self._in_flight_lock = threading.Lock()
        self._paused_until = 0.0
        self._slide_levels: dict[str, list[tuple[str, str]]] = {}  # a claimed slide's levels, by representative
        self._mpp = engine.bundle.manifest.mpp

    def start(self) -> None:
        self.offload = Offload(self.settings)
        self.offload.start()
        self._threads = [
            threading.Thread(target=self._model_loop, name="inference-worker", daemon=True),
            threading.Thread(target=self._record_loop, name="result-recorder", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming, finish what is in flight (at most a few images), stop the helper process."""
        self._stop.set()
        self.wake_event.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self.offload is not None:
            self.offload.close()

    def wake(self) -> None:
        self.wake_event.set()

    def _claim_ahead(self, ahead: deque[_Claimed]) -> None:
        assert self.offload is not None
        if time.monotonic() < self._paused_until:  # the results disk is full: nothing could be written
            return
        # A slide's fields are many images' worth of pixels: none is claimed ahead while one is in the queue.
        while len(ahead) < LOOKAHEAD and not self._stop.is_set() and not any(c.levels for c in ahead):
            try:
                instance = self.store.claim_next(
                    actor="worker", node=self.settings.node_id, lease_s=self.settings.cluster.lease_s
                )
            except StoreUnavailable:  # the database is down: nothing is lost, try again in a moment
                log.warning("store_unavailable", stage="claim")
                self._stop.wait(1.0)
                return
            if instance is None:
                return
            with self._in_flight_lock:
                self._in_flight.add(instance.sop_instance_uid)
            uid = instance.sop_instance_uid
            if instance.slide_key is None:
                ahead.append(_Claimed(instance, time.perf_counter(), self.offload.prepare(uid, instance.spool_path)))
                continue
            levels = [
                (p.sop_instance_uid, p.spool_path) for p in self.store.slide_parts(instance.slide_key) if p.on_disk
            ]
            self._slide_levels[uid] = levels
            future = self.offload.prepare_slide(uid, levels, self._mpp)
            ahead.append(_Claimed(instance, time.perf_counter(), future, levels))

    def _model_loop(self) -> None:
        ahead: deque[_Claimed] = deque()
        try:
            while not self._stop.is_set() or ahead:
                self.last_heartbeat = time.monotonic()
                self.on_heartbeat()
                self._claim_ahead(ahead)
                if not ahead:
                    self.wake_event.wait(0.5)
                    self.wake_event.clear()
                    continue
                claimed = ahead.popleft()
                self._claim_ahead(ahead)  # the helper decodes the next image while the model runs this one
                if claimed.levels is None:
                    self._infer_one(claimed.instance, claimed.started, claimed.prepared)
                else:
                    self._infer_slide(claimed)
        finally:
            self._finished.put(None)

    def _offloaded(self, future: Future[Any], job: str, *args: Any) -> Any:
        """The job's result; when its helper process died, once more on its own."""
        assert self.offload is not None
        try:
            return future.result()
        except BrokenProcessPool:
            log.error("offload_died", job=job, sop_instance_uid=args[0], detail="retrying the image on its own")
            try:
                return self.offload.retry_alone(job, *args)
            except BrokenProcessPool as exc:
                raise OffloadCrash(f"the helper process died twice on this image during {job}") from exc

    def _infer_one(self, instance: Instance, started: float, prepared_future: Future[PreparedPixels]) -> None:
        assert self.offload is not None
        uid, path = instance.sop_instance_uid, instance.spool_path
        try:
            prepared: PreparedPixels = self._offloaded(prepared_future, "prepare", uid, path)
            policy = resolve(self.settings, self.engine.rules, self.store)  # live mode: the active rule, now
            inferred = infer(prepared.rgb, prepared.quality, self.engine, self.settings, policy)
            report_future = self.offload.report(uid, path, inferred.result)
        except CancelledError:
            self._left_for_restart(uid)
            self._done(uid)
            return
        except Exception as exc:  # one bad image must never stop the worker
            self._failed_with(uid, exc)
            self._done(uid)
            return
        self._finished.put(_InFlight(instance, started, prepared.ms, inferred, report_future))

    def _infer_slide(self, claimed: _Claimed) -> None:
        """A whole slide: its fields through the same engine and rule, then the slide result (slide_result)."""
        assert self.offload is not None and claimed.levels is not None
        uid = claimed.instance.sop_instance_uid
        try:
            prepared: PreparedSlide = self._offloaded(claimed.prepared, "prepare_slide", uid, claimed.levels, self._mpp)
            policy = resolve(self.settings, self.engine.rules, self.store)
            inferred = infer_slide(prepared, self.engine, self.settings, policy)
            prepared = without_pixels(prepared)  # the helper has them for the mosaic; none held here meanwhile
            release_memory()
            job = report_job(prepared, inferred)
            reports = self.offload.report_slide(uid, claimed.levels, job, self._mpp)
        except CancelledError:
            self._left_for_restart(uid)
            self._done(uid)
            return
        except Exception as exc:  # one bad slide must never stop the worker
            self._failed_with(uid, exc)
            self._done(uid)
            return
        self._finished.put(
            _InFlight(claimed.instance, claimed.started, prepared.ms, None, reports, (prepared, inferred, job))
        )

    def _record_loop(self) -> None:
        while (item := self._finished.get()) is not None:
            uid = item.instance.sop_instance_uid
            try:
                if item.slide is not None:
                    self._record_slide(item)
                    continue
                assert item.inferred is not None
                made: ReportOutputs = self._offloaded(
                    item.reports, "report", uid, item.instance.spool_path, item.inferred.result
                )
                timings = {
                    "prepare": item.prepare_ms,
                    "model": item.inferred.ms,
                    "reports": made.ms,
                    "total": (time.perf_counter() - item.started) * 1000,
                }
                self._record(uid, item.inferred, made.outputs, {k: round(v, 1) for k, v in timings.items()})
            except CancelledError:
                self._left_for_restart(uid)
            except LostClaim:
                self._claim_lost(uid)
            except Exception as exc:  # one bad image must never stop the worker
                self._failed_with(uid, exc)
            finally:
                self._done(uid)

    def _done(self, uid: str) -> None:
        with self._in_flight_lock:
            self._in_flight.discard(uid)
        self._slide_levels.pop(uid, None)

    def _parts(self, uid: str) -> tuple[str, ...]:
        """The other levels of the slide ``uid`` carries (read when it was claimed); () for an image."""
        return tuple(u for u, _ in self._slide_levels.get(uid, ()) if u != uid)

    def _record_slide(self, item: _InFlight) -> None:
        assert item.slide is not None
        uid = item.instance.sop_instance_uid
        prepared, inferred, job = item.slide
        made: ReportOutputs = self._offloaded(
            item.reports, "report_slide", uid, self._slide_levels[uid], job, self._mpp
        )
        timings = {
            "prepare": round(prepared.ms, 1),
            "model": round(inferred.ms, 1),
            "reports": round(made.ms, 1),
            "total": round((time.perf_counter() - item.started) * 1000, 1),
        }
        record = slide_record(prepared, inferred, {o.kind: o.object_uid for o in made.outputs}, timings)
        self.store.record_result(
            uid,
            record,
            made.outputs,
            [d.name for d in self.settings.destinations],
            actor="worker",
            holder=self.settings.node_id,
            case_due_at=self._case_due_at(),
            parts=self._parts(uid),
            embedding=slide_embedding(inferred),
            slide_fields=field_rows(inferred),
        )
        PIPELINE_SECONDS.observe(timings["total"] / 1000)
        log.info(
            "slide_reported",
            sop_instance_uid=uid,
            levels=len(self._slide_levels[uid]),
            fields=len(prepared.fields),
            proposals=prepared.proposals,
            predicted=inferred.result.predicted,
            confidence=round(inferred.result.probability(inferred.result.predicted), 4),
            reasons=list(inferred.result.reasons),
            repairs=list(prepared.repairs),
            ms=timings,
        )
        self.on_reported()

    def renew_claims(self) -> int:
        """Renew the leases on the images in flight (the service's heartbeat calls this)."""
        with self._in_flight_lock:
            uids = list(self._in_flight)
        return self.store.renew_leases(self.settings.node_id, self.settings.cluster.lease_s, uids)

    def _case_due_at(self) -> str | None:
        """When this image's case is due for its case SR: the quiet period from now (None: no case SRs)."""
        reports = self.settings.reports
        return timestamp_in(reports.case_quiet_s) if reports.case_sr else None

    def _claim_lost(self, uid: str) -> None:
        """Our lease ran out and another node took this image over: it reports it (same objects, same UIDs)."""
        log.warning("claim_lost", sop_instance_uid=uid)

    def _left_for_restart(self, uid: str) -> None:
        """A stop that ran out of time cancelled this image's job: it stays claimed and is redone at start."""
        log.info("instance_left_for_restart", sop_instance_uid=uid)

    def _record(self, uid: str, inferred: Inferred, outputs: list[OutputObject], timings: dict[str, float]) -> None:
        destinations = [d.name for d in self.settings.destinations]
        record = make_record(inferred, {o.kind: o.object_uid for o in outputs}, timings)
        audit = not inferred.triage.referred and sampled_for_audit(uid, self._audit_rate(inferred.triage.rule_id))
        self.store.record_result(
            uid,
            record,
            outputs,
            destinations,
            actor="worker",
            audit=audit,
            holder=self.settings.node_id,
            case_due_at=self._case_due_at(),
            embedding=None if inferred.prediction.embedding is None else inferred.prediction.embedding.tobytes(),
        )
        pred = inferred.prediction
        INFERENCE_SECONDS.observe(inferred.ms / 1000)
        PIPELINE_SECONDS.observe(timings["total"] / 1000)
        log.info(
            "instance_reported",
            sop_instance_uid=uid,
            predicted=pred.label,
            confidence=round(pred.confidence, 4),
            referred=inferred.triage.referred,
            reasons=list(inferred.triage.reasons),
            reason_texts=list(inferred.triage.texts),  # made by our rules from numbers: no patient data
            audit=audit,
            ms=timings,
        )
        self.on_reported()

    def _audit_rate(self, rule_id: int | None) -> float:
        """The share of finalised images audited: more while a site rule is young (``audit.initial_rate``)."""
        usual, audit = self.settings.worklist.audit_fraction, self.settings.audit
        if rule_id is not None and self.store.finalised_count(rule_id) < audit.initial_images:
            return max(usual, audit.initial_rate)
        return usual

    def _failed_with(self, uid: str, exc: Exception) -> None:
        """The image ends as a visible "not analysed" case, never silently (and the worker goes on)."""
        if isinstance(exc, LostClaim):
            self._claim_lost(uid)
            return
        if isinstance(exc, StoreUnavailable):  # left claimed; the claim runs out and the image is analysed again
            log.error("store_unavailable", stage="record", sop_instance_uid=uid)
            return
        if isinstance(exc, DiskFullError):  # passing, as the store's outage: left claimed, analysed again later
            self._paused_until = time.monotonic() + DISK_FULL_PAUSE_S
            log.error(
                "disk_full",
                stage="results",
                sop_instance_uid=uid,
                detail=f"{exc}; the image is analysed again once its claim runs out, new claims wait "
                f"{DISK_FULL_PAUSE_S:.0f} s",
            )
            return
        reason = str(exc) if isinstance(exc, DecodeError) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, DecodeError):
            log.error("processing_failed", sop_instance_uid=uid, error_type=type(exc).__name__)
        try:
            self._not_analysed(uid, reason[:500], "decode" if isinstance(exc, DecodeError) else type(exc).__name__)
        except StoreUnavailable:
            log.error("store_unavailable", stage="record", sop_instance_uid=uid)

    def _not_analysed(self, uid: str, reason: str, cause: str) -> None:
        """``reason`` (stored, shown to reviewers) may quote the image; ``cause`` (logged) never does."""
        instance = self.store.get_instance(uid)
        result = not_analysed_result(self.engine, reason)
        outputs: list[OutputObject] = []
        if self.settings.reports.not_analysed_sr and instance is not None and instance.on_disk:
            try:
                outputs = not_analysed_objects(Path(instance.spool_path), result, self.results)
            except Exception as exc:  # even the header is unusable: the worklist entry still shows it
                log.error("not_analysed_sr_failed", sop_instance_uid=uid, error_type=type(exc).__name__)
        record = not_analysed_record(result, {o.kind: o.object_uid for o in outputs})
        destinations = [d.name for d in self.settings.destinations]
        try:
            self.store.record_failure(
                uid,
                reason,
                record,
                outputs,
                destinations,
                actor="worker",
                holder=self.settings.node_id,
                case_due_at=self._case_due_at(),
                parts=self._parts(uid),
            )
        except LostClaim:
            self._claim_lost(uid)
            return
        except StoreUnavailable:  # left claimed; the claim runs out and the image is analysed again
            log.error("store_unavailable", stage="record", sop_instance_uid=uid)
            return
        log.warning("instance_not_analysed", sop_instance_uid=uid, cause=cause, sr=bool(outputs))
        self.on_reported()
