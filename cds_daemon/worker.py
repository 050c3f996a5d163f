"""The inference worker: received instance -> prediction, triage, result objects -> outbox.

Instances are claimed from the store in arrival order (see :class:`Worker` for the stages).
A failure on one image (decode, model, report, even a crash of the helper process) marks that
instance ``failed`` with the reason and keeps its file; the pipeline goes on.
"""

from __future__ import annotations

import functools
import io
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image

from cds_daemon.bundle import MANIFEST_NAME, sha256_file
from cds_daemon.config import Settings
from cds_daemon.engine import Engine, Prediction
from cds_daemon.logs import get_logger
from cds_daemon.metrics import INFERENCE_SECONDS, PIPELINE_SECONDS
from cds_daemon.offload import BrokenProcessPool, Offload, PreparedPixels, ReportOutputs
from cds_daemon.pixels import DecodeError, decode
from cds_daemon.quality import QualityResult, assess
from cds_daemon.reports.heatmap import build_heatmap_sc
from cds_daemon.reports.kos import build_review_kos
from cds_daemon.reports.result import AIResult
from cds_daemon.reports.sr import build_ai_sr
from cds_daemon.spool import Spool
from cds_daemon.store import Instance, OutputObject, PredictionRecord, Store
from cds_daemon.triage import TriageDecision, decide

log = get_logger("worker")

#: Images decoded ahead of the model; also bounds the cases waiting for their reports.
LOOKAHEAD = 2


@dataclass(frozen=True)
class OffloadCrash(RuntimeError):
    """The helper process died twice on the same image."""


@dataclass(frozen=True)
class _InFlight:
    """A case between the model thread and the recorder: its reports are being built."""

    instance: Instance
    started: float
    prepare_ms: float
    inferred: Inferred
    reports: Future[ReportOutputs]


@dataclass(frozen=True)
class Processed:
    """What one run of the pipeline made for a source image."""

    prediction: Prediction
    quality: QualityResult
    triage: TriageDecision
    result: AIResult
    objects: list[tuple[str, pydicom.Dataset]]  # (kind, dataset)
    timings_ms: dict[str, float]


@functools.lru_cache(maxsize=8)
def bundle_identity(bundle_dir: Path) -> str:
    """SHA-256 of manifest.json, which itself lists the SHA-256 of every file: one hash names the bundle."""
    return sha256_file(bundle_dir / MANIFEST_NAME)


def to_ai_result(pred: Prediction, triage: TriageDecision, engine: Engine) -> AIResult:
    classes = tuple(engine.classes)
    m = engine.bundle.manifest
    return AIResult(
        classes=classes,
        display_names=tuple(m.display_names),
        probabilities=tuple(float(pred.probs[c]) for c in classes),
        predicted=pred.label,
        conformal_set=tuple(pred.conformal_set),
        referred=triage.referred,
        reasons=triage.reasons,
        reason_texts=triage.texts,
        model_name=m.name,
        model_version=m.version,
        model_sha256=bundle_identity(engine.bundle.directory),
        cam=pred.cam,
        basic_probabilities=tuple(float(pred.basic_probs[c]) for c in classes),
        premium_probabilities=tuple(float(pred.premium_probs[c]) for c in classes),
    )


def _at_least(rgb: np.ndarray, min_side: int) -> np.ndarray:
    """Upscale an image too small to tile (already referred by the quality gate) so the model can run."""
    h, w = rgb.shape[:2]
    if min(h, w) >= min_side:
        return rgb
    scale = min_side / min(h, w)
    size = (max(min_side, round(w * scale)), max(min_side, round(h * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.NEAREST))


@dataclass(frozen=True)
class Prepared:
    """A decoded source image with its quality verdict: what the model stage needs."""

    dataset: pydicom.Dataset
    rgb: np.ndarray
    was_colour: bool
    quality: QualityResult
    ms: float


@dataclass(frozen=True)
class Inferred:
    """The model's output for one image, triaged and packed for the report builders."""

    prediction: Prediction
    quality: QualityResult
    triage: TriageDecision
    result: AIResult
    ms: float


def prepare(path: Path, settings: Settings) -> Prepared:
    """Decode (raises DecodeError) and run the input-quality gate."""
    t0 = time.perf_counter()
    image = decode(path)
    quality = assess(image.rgb, was_colour=image.was_colour, settings=settings.quality)
    return Prepared(image.dataset, image.rgb, image.was_colour, quality, (time.perf_counter() - t0) * 1000)


def infer(rgb: np.ndarray, quality: QualityResult, engine: Engine, settings: Settings) -> Inferred:
    """Ensemble, conformal set, OOD and CAM, then the referral decision."""
    t0 = time.perf_counter()
    pred = engine.predict(_at_least(rgb, settings.quality.min_side_px))
    triage = decide(pred, quality, settings.triage, engine.bundle.manifest.confidence_threshold)
    result = to_ai_result(pred, triage, engine)
    return Inferred(pred, quality, triage, result, (time.perf_counter() - t0) * 1000)


def build_objects(source: pydicom.Dataset, rgb: np.ndarray, result: AIResult) -> list[tuple[str, pydicom.Dataset]]:
    """The AI SR, the heatmap SC (when there is a CAM) and, for a referred case, the review KOS."""
    sr = build_ai_sr(source, result)
    sc = build_heatmap_sc(source, rgb, result) if result.cam is not None else None
    objects: list[tuple[str, pydicom.Dataset]] = [("sr", sr)] + ([("sc", sc)] if sc is not None else [])
    if result.referred:
        objects.append(("kos", build_review_kos(source, result, sr, sc)))
    return objects


def write_objects(results: Spool, objects: list[tuple[str, pydicom.Dataset]]) -> list[OutputObject]:
    """Each object durably in the results spool, named by its SOPInstanceUID."""
    outputs = []
    for kind, ds in objects:
        spooled = results.write(str(ds.SOPInstanceUID), encode(ds))
        outputs.append(OutputObject(kind, str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(spooled.path)))
    return outputs


def process_image(path: Path, engine: Engine, settings: Settings) -> Processed:
    """The whole per-image pipeline in this thread, no store or network: ``cds-daemon replay`` and tests.

    The daemon's worker runs the same steps, with decode and reports in its helper process.
    """
    t0 = time.perf_counter()
    prepared = prepare(path, settings)
    inferred = infer(prepared.rgb, prepared.quality, engine, settings)
    t_model = time.perf_counter()
    objects = build_objects(prepared.dataset, prepared.rgb, inferred.result)
    t_end = time.perf_counter()
    timings = {
        "prepare": prepared.ms,
        "model": inferred.ms,
        "reports": (t_end - t_model) * 1000,
        "total": (t_end - t0) * 1000,
    }
    return Processed(
        inferred.prediction,
        inferred.quality,
        inferred.triage,
        inferred.result,
        objects,
        {k: round(v, 1) for k, v in timings.items()},
    )


def encode(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def prediction_record(p: Processed) -> PredictionRecord:
    return make_record(
        Inferred(p.prediction, p.quality, p.triage, p.result, p.timings_ms["model"]),
        {kind: str(ds.SOPInstanceUID) for kind, ds in p.objects},
        p.timings_ms,
    )


def make_record(inferred: Inferred, object_uids: dict[str, str], timings_ms: dict[str, float]) -> PredictionRecord:
    """What the store keeps about one prediction (the detail is shown to reviewers and in ``status``)."""
    pred, r, quality, triage = inferred.prediction, inferred.result, inferred.quality, inferred.triage
    return PredictionRecord(
        model_name=r.model_name,
        model_version=r.model_version,
        model_sha256=r.model_sha256,
        predicted=pred.label,
        probabilities=list(r.probabilities),
        referred=triage.referred,
        reasons=list(triage.reasons),
        detail={
            "reason_texts": list(triage.texts),
            "priority": triage.priority,
            "confidence": pred.confidence,
            "conformal_set": list(pred.conformal_set),
            "basic": {"label": pred.basic_label, "probabilities": list(r.basic_probabilities or ())},
            "premium": {"label": pred.premium_label, "probabilities": list(r.premium_probabilities or ())},
            "ood": {
                "mahalanobis": pred.mahalanobis,
                "mahalanobis_ood": pred.mahalanobis_ood,
                "energy": pred.energy,
                "energy_ood": pred.energy_ood,
            },
            "quality": quality.metrics,
            "timings_ms": {**timings_ms, **{f"model_{k}": round(v, 1) for k, v in pred.timings_ms.items()}},
            "objects": object_uids,
        },
    )


class Worker:
    """Claims received instances and runs the pipeline on them.

    In the daemon (:meth:`start`) it is a three-stage pipeline, so the model never waits for I/O or
    report building: the helper process (:mod:`cds_daemon.offload`) decodes the next images while
    the model thread runs the ensemble on this one, then builds and writes its reports while the
    model goes on; a recorder thread commits each finished case to the store. :meth:`handle` runs
    one instance start to end in the calling thread (tests and tools).
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
        self.results = Spool(settings.storage.data_dir / "results")
        self.on_reported = on_reported
        self.wake_event = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._finished: queue.Queue[_InFlight | None] = queue.Queue(maxsize=LOOKAHEAD + 1)
        self.offload: Offload | None = None
        self.last_heartbeat = time.monotonic()

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

    def _claim_ahead(self, ahead: deque[tuple[Instance, float, Future[PreparedPixels]]]) -> None:
        assert self.offload is not None
        while len(ahead) < LOOKAHEAD and not self._stop.is_set():
            instance = self.store.claim_next(actor="worker")
            if instance is None:
                return
            ahead.append(
                (instance, time.perf_counter(), self.offload.prepare(instance.sop_instance_uid, instance.spool_path))
            )

    def _model_loop(self) -> None:
        ahead: deque[tuple[Instance, float, Future[PreparedPixels]]] = deque()
        try:
            while not self._stop.is_set() or ahead:
                self.last_heartbeat = time.monotonic()
                self.on_heartbeat()
                self._claim_ahead(ahead)
                if not ahead:
                    self.wake_event.wait(0.5)
                    self.wake_event.clear()
                    continue
                instance, started, prepared_future = ahead.popleft()
                self._claim_ahead(ahead)  # the helper decodes the next image while the model runs this one
                self._infer_one(instance, started, prepared_future)
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
            inferred = infer(prepared.rgb, prepared.quality, self.engine, self.settings)
            report_future = self.offload.report(uid, path, inferred.result)
        except CancelledError:
            self._left_for_restart(uid)
            return
        except Exception as exc:  # one bad image must never stop the worker
            self._failed_with(uid, exc)
            return
        self._finished.put(_InFlight(instance, started, prepared.ms, inferred, report_future))

    def _record_loop(self) -> None:
        while (item := self._finished.get()) is not None:
            uid = item.instance.sop_instance_uid
            try:
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
            except Exception as exc:  # one bad image must never stop the worker
                self._failed_with(uid, exc)

    def _left_for_restart(self, uid: str) -> None:
        """A stop that ran out of time cancelled this image's job: it stays claimed and is redone at start."""
        log.info("instance_left_for_restart", sop_instance_uid=uid)

    def handle(self, instance: Instance) -> None:
        """One claimed instance, start to end, in this thread."""
        uid = instance.sop_instance_uid
        try:
            processed = process_image(Path(instance.spool_path), self.engine, self.settings)
            outputs = write_objects(self.results, processed.objects)
            inferred = Inferred(
                processed.prediction,
                processed.quality,
                processed.triage,
                processed.result,
                processed.timings_ms["model"],
            )
            self._record(uid, inferred, outputs, processed.timings_ms)
        except DecodeError as exc:
            self._fail(uid, str(exc))
        except Exception as exc:  # one bad image must never stop the worker
            self._failed_with(uid, exc)

    def _record(self, uid: str, inferred: Inferred, outputs: list[OutputObject], timings: dict[str, float]) -> None:
        destinations = [d.name for d in self.settings.destinations]
        record = make_record(inferred, {o.kind: o.object_uid for o in outputs}, timings)
        self.store.record_result(uid, record, outputs, destinations, actor="worker")
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
            ms=timings,
        )
        self.on_reported()

    def _failed_with(self, uid: str, exc: Exception) -> None:
        if isinstance(exc, DecodeError):
            self._fail(uid, str(exc))
            return
        log.exception("processing_failed", sop_instance_uid=uid)
        self._fail(uid, f"{type(exc).__name__}: {exc}")

    def _fail(self, uid: str, reason: str) -> None:
        log.warning("instance_failed", sop_instance_uid=uid, reason=reason[:300])
        self.store.set_state(uid, "failed", actor="worker", reason=reason[:500])
