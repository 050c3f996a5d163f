"""The inference worker: received instance -> prediction, triage, result objects -> outbox.

One thread claims ``received`` instances from the store in arrival order. A failure on
one image (decode, model, report) marks that instance ``failed`` with the reason and keeps
its file; the loop goes on.
"""

from __future__ import annotations

import functools
import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from cds_daemon.bundle import MANIFEST_NAME, sha256_file
from cds_daemon.config import Settings
from cds_daemon.engine import Engine, Prediction
from cds_daemon.logs import get_logger
from cds_daemon.metrics import INFERENCE_SECONDS, PIPELINE_SECONDS
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


def process_image(path: Path, engine: Engine, settings: Settings) -> Processed:
    """The whole per-image pipeline, no store or network: also used by ``cds-daemon replay``."""
    t0 = time.perf_counter()
    image = decode(path)
    t_decode = time.perf_counter()
    quality = assess(image.rgb, was_colour=image.was_colour, settings=settings.quality)
    pred = engine.predict(_at_least(image.rgb, settings.quality.min_side_px))
    t_model = time.perf_counter()
    triage = decide(pred, quality, settings.triage, engine.bundle.manifest.confidence_threshold)
    result = to_ai_result(pred, triage, engine)
    sr = build_ai_sr(image.dataset, result)
    sc = build_heatmap_sc(image.dataset, image.rgb, result) if result.cam is not None else None
    objects: list[tuple[str, pydicom.Dataset]] = [("sr", sr)] + ([("sc", sc)] if sc is not None else [])
    if triage.referred:
        objects.append(("kos", build_review_kos(image.dataset, result, sr, sc)))
    t_end = time.perf_counter()
    timings = {
        "decode": (t_decode - t0) * 1000,
        "model": (t_model - t_decode) * 1000,
        "reports": (t_end - t_model) * 1000,
        "total": (t_end - t0) * 1000,
    }
    return Processed(pred, quality, triage, result, objects, {k: round(v, 1) for k, v in timings.items()})


def encode(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def prediction_record(p: Processed) -> PredictionRecord:
    pred, r = p.prediction, p.result
    return PredictionRecord(
        model_name=r.model_name,
        model_version=r.model_version,
        model_sha256=r.model_sha256,
        predicted=pred.label,
        probabilities=list(r.probabilities),
        referred=p.triage.referred,
        reasons=list(p.triage.reasons),
        detail={
            "reason_texts": list(p.triage.texts),
            "priority": p.triage.priority,
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
            "quality": p.quality.metrics,
            "timings_ms": {**p.timings_ms, **{f"model_{k}": v for k, v in pred.timings_ms.items()}},
            "objects": {kind: str(ds.SOPInstanceUID) for kind, ds in p.objects},
        },
    )


class Worker:
    """Claims received instances and runs :func:`process_image` on each."""

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
        self._thread: threading.Thread | None = None
        self.last_heartbeat = time.monotonic()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="inference-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self.wake_event.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        self.wake_event.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.last_heartbeat = time.monotonic()
            self.on_heartbeat()
            instance = self.store.claim_next(actor="worker")
            if instance is None:
                self.wake_event.wait(0.5)
                self.wake_event.clear()
                continue
            self.handle(instance)

    def handle(self, instance: Instance) -> None:
        uid = instance.sop_instance_uid
        try:
            processed = process_image(Path(instance.spool_path), self.engine, self.settings)
            outputs = []
            for kind, ds in processed.objects:
                spooled = self.results.write(str(ds.SOPInstanceUID), encode(ds))
                outputs.append(OutputObject(kind, str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(spooled.path)))
            destinations = [d.name for d in self.settings.destinations]
            self.store.record_result(uid, prediction_record(processed), outputs, destinations, actor="worker")
        except DecodeError as exc:
            self._fail(uid, str(exc))
            return
        except Exception as exc:  # one bad image must never stop the worker
            log.exception("processing_failed", sop_instance_uid=uid)
            self._fail(uid, f"{type(exc).__name__}: {exc}")
            return
        pred = processed.prediction
        INFERENCE_SECONDS.observe(processed.timings_ms["model"] / 1000)
        PIPELINE_SECONDS.observe(processed.timings_ms["total"] / 1000)
        log.info(
            "instance_reported",
            sop_instance_uid=uid,
            predicted=pred.label,
            confidence=round(pred.confidence, 4),
            referred=processed.triage.referred,
            reasons=list(processed.triage.reasons),
            ms=processed.timings_ms,
        )
        self.on_reported()

    def _fail(self, uid: str, reason: str) -> None:
        log.warning("instance_failed", sop_instance_uid=uid, reason=reason[:300])
        self.store.set_state(uid, "failed", actor="worker", reason=reason[:500])
