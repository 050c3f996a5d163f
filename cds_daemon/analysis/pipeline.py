"""The per-image steps, shared by the daemon's worker, its helper process and ``cds-daemon replay``.

prepare (decode + input-quality gate) -> infer (ensemble, CAM, triage) -> build_objects (SR, heatmap
SC, KOS) -> write_objects (durable files in the results spool) -> make_record (what the store keeps).
No store, network or threads here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from cds_daemon.analysis.decode import decode
from cds_daemon.analysis.engine import Engine, Prediction
from cds_daemon.analysis.policy import FinalisationPolicy, resolve
from cds_daemon.analysis.quality import QualityResult, assess
from cds_daemon.analysis.triage import TriageDecision, decide
from cds_daemon.common.config import Settings
from cds_daemon.common.vocabulary import REASONS, OutputKind, ReferralReason
from cds_daemon.reports.files import write_objects
from cds_daemon.reports.heatmap import build_heatmap_sc
from cds_daemon.reports.kos import build_review_kos
from cds_daemon.reports.result import AIResult
from cds_daemon.reports.sr import build_ai_sr
from cds_daemon.reports.template import Templates
from cds_daemon.store import OutputObject, PredictionRecord
from cds_daemon.store.spool import Spool


@dataclass(frozen=True)
class Processed:
    """What one run of the pipeline made for a source image."""

    prediction: Prediction
    quality: QualityResult
    triage: TriageDecision
    result: AIResult
    objects: list[tuple[str, pydicom.Dataset]]  # (kind, dataset)
    timings_ms: dict[str, float]


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
        model_sha256=engine.identity,
        cam=pred.cam,
        basic_probabilities=tuple(float(pred.basic_probs[c]) for c in classes),
        premium_probabilities=tuple(float(pred.premium_probs[c]) for c in classes),
        finalisation_rule=triage.rule_text,
    )


def not_analysed_result(engine: Engine, reason: str) -> AIResult:
    """The result of an image the AI could not analyse: no class, referred, with the reason."""
    m = engine.bundle.manifest
    classes = tuple(engine.classes)
    return AIResult(
        classes=classes,
        display_names=tuple(m.display_names),
        probabilities=tuple(0.0 for _ in classes),
        predicted="",
        conformal_set=(),
        referred=True,
        reasons=(ReferralReason.NOT_ANALYSED,),
        reason_texts=(f"not analysed by the AI: {reason}",),
        model_name=m.name,
        model_version=m.version,
        model_sha256=engine.identity,
        cam=None,
    )


def not_analysed_objects(path: Path, result: AIResult, results: Spool) -> list[OutputObject]:
    """The "not analysed" SR, written durably; none when even the source header cannot be read."""
    source = pydicom.dcmread(path, stop_before_pixels=True)
    return write_objects(results, [(OutputKind.SR, build_ai_sr(source, result))])


def not_analysed_record(result: AIResult, object_uids: dict[str, str]) -> PredictionRecord:
    """What the store keeps for an image the AI could not analyse (the review page shows the reason)."""
    return PredictionRecord(
        model_name=result.model_name,
        model_version=result.model_version,
        model_sha256=result.model_sha256,
        predicted=None,
        probabilities=None,
        referred=True,
        reasons=list(result.reasons),
        priority=REASONS[ReferralReason.NOT_ANALYSED].priority,
        detail={
            "reason_texts": list(result.reason_texts),
            "priority": REASONS[ReferralReason.NOT_ANALYSED].priority,
            "objects": object_uids,
        },
    )


def _at_least(rgb: np.ndarray, min_side: int) -> np.ndarray:
    """Upscale an image too small to tile (already referred by the quality gate) so the model can run."""
    h, w = rgb.shape[:2]
    if min(h, w) >= min_side:
        return rgb
    scale = min_side / min(h, w)
    size = (max(min_side, round(w * scale)), max(min_side, round(h * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.NEAREST))


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


def infer(
    rgb: np.ndarray, quality: QualityResult, engine: Engine, settings: Settings, policy: FinalisationPolicy
) -> Inferred:
    """Ensemble, conformal set, OOD and CAM, then the referral decision under ``policy``."""
    t0 = time.perf_counter()
    pred = engine.predict(_at_least(rgb, settings.quality.min_side_px))
    triage = decide(pred, quality, settings.triage, policy)
    result = to_ai_result(pred, triage, engine)
    return Inferred(pred, quality, triage, result, (time.perf_counter() - t0) * 1000)


def build_objects(
    source: pydicom.Dataset,
    rgb: np.ndarray,
    result: AIResult,
    templates: Templates | None = None,
    *,
    heatmap_jpeg: bool = True,
) -> list[tuple[str, pydicom.Dataset]]:
    """The AI SR, the heatmap SC (when there is a CAM) and, for a referred case, the review KOS.

    ``templates`` (the worker's helper keeps one per process) makes the SR and KOS from checked templates.
    """
    sr = build_ai_sr(source, result, templates=templates)
    sc = build_heatmap_sc(source, rgb, result, jpeg=heatmap_jpeg) if result.cam is not None else None
    objects: list[tuple[str, pydicom.Dataset]] = [(OutputKind.SR, sr)]
    if sc is not None:
        objects.append((OutputKind.SC, sc))
    if result.referred:
        objects.append((OutputKind.KOS, build_review_kos(source, result, sr, sc, templates=templates)))
    return objects


def process_image(
    path: Path, engine: Engine, settings: Settings, policy: FinalisationPolicy | None = None
) -> Processed:
    """The whole per-image pipeline in this thread, no store or network: ``cds-daemon replay`` and tests.

    The daemon's worker runs the same steps, with decode and reports in its helper process. Without a
    ``policy``, the configured mode's without a store (live mode then reviews everything).
    """
    t0 = time.perf_counter()
    prepared = prepare(path, settings)
    inferred = infer(prepared.rgb, prepared.quality, engine, settings, policy or resolve(settings, engine.rules, None))
    t_model = time.perf_counter()
    objects = build_objects(prepared.dataset, prepared.rgb, inferred.result, heatmap_jpeg=settings.reports.heatmap_jpeg)
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
        priority=triage.priority,
        triage_mode=triage.mode,
        rule_id=triage.rule_id,
        finalisation_confidence=pred.finalisation_confidence,
        candidate=triage.candidate,
        detail={
            "reason_texts": list(triage.texts),
            "priority": triage.priority,
            "confidence": pred.confidence,
            "finalisation_confidence": pred.finalisation_confidence,
            "triage": {"mode": triage.mode, "rule_id": triage.rule_id, "rule": triage.rule_text},
            "conformal_set": list(pred.conformal_set),
            "basic": {"label": pred.basic_label, "probabilities": list(r.basic_probabilities or ())},
            "premium": {"label": pred.premium_label, "probabilities": list(r.premium_probabilities or ())},
            "ood": {
                "mahalanobis": pred.mahalanobis,
                "mahalanobis_ood": pred.mahalanobis_ood,
                "energy": pred.energy,
                "energy_ood": pred.energy_ood,
                "stain": pred.stain,
                "stain_ood": pred.stain_ood,
            },
            "quality": quality.metrics,
            "timings_ms": {**timings_ms, **{f"model_{k}": round(v, 1) for k, v in pred.timings_ms.items()}},
            "objects": object_uids,
        },
    )
