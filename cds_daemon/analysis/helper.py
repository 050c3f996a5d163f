"""The worker's helper process: decoding before the model, reports and durable writes after it.

Why a process and not a thread: building the SR and KOS with highdicom is pure Python and holds
the GIL for tens of milliseconds per case, so a second thread in the daemon mostly waits for the
model thread (measured: 61% -> 68% of model-only throughput). A child process runs that work on
the other core while ONNX Runtime keeps this one busy, and the model thread runs back-to-back.

One child, started with ``spawn`` (the daemon has threads; ``fork`` would copy their locks), serves
jobs in submission order. It keeps each decoded image from :meth:`Offload.prepare` until the
matching :meth:`Offload.report`, so pixels cross the process boundary once (child -> model).

If the child dies (a decoder crash, the kernel's OOM killer), every job it held fails with
``BrokenProcessPool``; :meth:`Offload.retry_alone` runs a job again in a fresh child on its own,
so one poisonous image fails alone and the others go on.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from cds_daemon.analysis.decode import decode
from cds_daemon.analysis.pipeline import build_objects, prepare
from cds_daemon.analysis.quality import QualityResult
from cds_daemon.analysis.slide_result import PreparedSlide, SlideReportJob, build_slide_objects, prepare_slide
from cds_daemon.common.config import Settings
from cds_daemon.ops.logs import configure_logging, get_logger
from cds_daemon.ops.memory import release_memory
from cds_daemon.ops.metrics import HELPER_RESTARTS
from cds_daemon.ops.threads import blas_threads, limit_blas_threads
from cds_daemon.reports.files import write_objects
from cds_daemon.reports.heatmap import MOSAIC_FIELDS
from cds_daemon.reports.result import AIResult
from cds_daemon.reports.template import Templates
from cds_daemon.store import OutputObject
from cds_daemon.store.spool import Spool

__all__ = ["BrokenProcessPool", "Offload", "PreparedPixels", "ReportOutputs"]

log = get_logger("offload")

_STATE: dict[str, Any] = {}
_KEEP = 4  # decoded images kept between prepare and report: the worker has at most 3 in between


@dataclass(frozen=True)
class PreparedPixels:
    """What comes back from the child's prepare step."""

    rgb: np.ndarray
    quality: QualityResult
    ms: float


@dataclass(frozen=True)
class ReportOutputs:
    outputs: list[OutputObject]
    ms: float


def _init(settings: Settings, parent: int) -> None:
    with contextlib.suppress(OSError):  # batch work: the listener's threads in the parent answer first
        os.nice(5)
    configure_logging(settings.log_level)
    limit_blas_threads()
    threading.Thread(target=_exit_with_parent, args=(parent,), name="parent-watch", daemon=True).start()
    _STATE["settings"] = settings
    _STATE["results"] = Spool(settings.storage.results_dir, node=settings.spool_node)
    _STATE["images"] = {}
    _STATE["templates"] = Templates() if settings.reports.templates else None


def _exit_with_parent(parent: int) -> None:
    """A SIGKILLed daemon cannot stop its child, and a job's pipe may stay open: leave with the parent."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def _ready() -> tuple[int, dict[str, int]]:
    return multiprocessing.current_process().pid or 0, blas_threads()


def _prepare(uid: str, path: str) -> PreparedPixels:
    prepared = prepare(Path(path), _STATE["settings"])
    kept: dict[str, tuple[Any, np.ndarray]] = _STATE["images"]
    kept[uid] = (prepared.dataset, prepared.rgb)
    while len(kept) > _KEEP:
        kept.pop(next(iter(kept)))
    return PreparedPixels(prepared.rgb, prepared.quality, prepared.ms)


def _prepare_slide(uid: str, levels: list[tuple[str, str]], mpp: float | None) -> PreparedSlide:
    """Read a slide and choose its fields; the fields' pixels stay here for its report too."""
    prepared = prepare_slide([(u, Path(p)) for u, p in levels], _STATE["settings"], mpp)
    kept: dict[str, Any] = _STATE["images"]
    kept[uid] = [f.field.rgb for f in prepared.fields[:MOSAIC_FIELDS]]  # what its mosaic shows
    while len(kept) > _KEEP:
        kept.pop(next(iter(kept)))
    release_memory()
    return prepared


def _report_slide(uid: str, levels: list[tuple[str, str]], job: SlideReportJob, mpp: float | None) -> ReportOutputs:
    """Build and durably write a slide's objects (its fields are read again if this child did not keep them)."""
    t0 = time.perf_counter()
    pixels = _STATE["images"].pop(uid, None)
    if pixels is None:
        again = prepare_slide([(u, Path(p)) for u, p in levels], _STATE["settings"], mpp)
        pixels = [f.field.rgb for f in again.fields[:MOSAIC_FIELDS]]
    headers = {u: pydicom.dcmread(p, stop_before_pixels=True) for u, p in levels}
    objects = build_slide_objects(
        headers[uid], list(headers.values()), job, pixels, heatmap_jpeg=_STATE["settings"].reports.heatmap_jpeg
    )
    outputs = write_objects(_STATE["results"], objects)
    del objects, pixels
    release_memory()
    return ReportOutputs(outputs, (time.perf_counter() - t0) * 1000)


def _report(uid: str, path: str, result: AIResult) -> ReportOutputs:
    """Build and durably write the result objects for an image this child prepared (else decode it again)."""
    t0 = time.perf_counter()
    kept = _STATE["images"].pop(uid, None)
    if kept is None:
        image = decode(Path(path))
        kept = (image.dataset, image.rgb)
    outputs = write_objects(
        _STATE["results"],
        build_objects(
            kept[0], kept[1], result, _STATE["templates"], heatmap_jpeg=_STATE["settings"].reports.heatmap_jpeg
        ),
    )
    return ReportOutputs(outputs, (time.perf_counter() - t0) * 1000)


class Offload:
    """A one-process pool that restarts itself when its child dies."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._retry_lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self.restarts = 0

    def start(self) -> None:
        """Start the child and wait until it has imported everything (so a broken install fails at start)."""
        with self._lock:
            self._pool = self._new_pool()
            pid, blas = self._pool.submit(_ready).result(timeout=120)
        log.info("offload_started", pid=pid, blas_threads=blas)

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init,
            initargs=(self.settings, os.getpid()),
        )

    def _submit(self, fn: Any, *args: Any) -> Future[Any]:
        with self._lock:
            if self._pool is None:
                raise RuntimeError("the offload process is not running")
            try:
                return self._pool.submit(fn, *args)
            except BrokenProcessPool:
                self._restart_locked()
                return self._pool.submit(fn, *args)

    def _restart_locked(self) -> None:
        old = self._pool
        self._pool = self._new_pool()
        self.restarts += 1
        HELPER_RESTARTS.inc()
        log.error("offload_restarted", restarts=self.restarts, detail="the helper process died; started a new one")
        if old is not None:
            old.shutdown(wait=False, cancel_futures=True)

    def restart_if_broken(self) -> None:
        """After a BrokenProcessPool: start a new child unless another thread already has."""
        with self._lock:
            if self._pool is None:
                return
            try:
                self._pool.submit(_ready)
            except BrokenProcessPool:
                self._restart_locked()

    def prepare(self, uid: str, path: str) -> Future[PreparedPixels]:
        return self._submit(_prepare, uid, path)

    def report(self, uid: str, path: str, result: AIResult) -> Future[ReportOutputs]:
        return self._submit(_report, uid, path, result)

    def prepare_slide(self, uid: str, levels: list[tuple[str, str]], mpp: float | None) -> Future[PreparedSlide]:
        return self._submit(_prepare_slide, uid, levels, mpp)

    def report_slide(
        self, uid: str, levels: list[tuple[str, str]], job: SlideReportJob, mpp: float | None
    ) -> Future[ReportOutputs]:
        return self._submit(_report_slide, uid, levels, job, mpp)

    def retry_alone(self, fn_name: str, *args: Any) -> Any:
        """Run a job that died with its child once more, in a live child, one retry at a time.

        A second ``BrokenProcessPool`` is raised: that job is the one killing the child.
        """
        fn = {"prepare": _prepare, "report": _report, "prepare_slide": _prepare_slide, "report_slide": _report_slide}[
            fn_name
        ]
        with self._retry_lock:
            self.restart_if_broken()
            return self._submit(fn, *args).result()

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None
