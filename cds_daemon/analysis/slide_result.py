"""A whole slide through the same engine and gates as a camera image, field by field, and its slide result.

prepare_slide (the helper process: read, choose fields, quality gate per field) -> infer_slide (the model
thread: :func:`~cds_daemon.analysis.pipeline.infer` on each field, the referral rule unchanged) ->
:func:`aggregate` (the case rule of ``reports.case_sr``: worst category, its highest probability, the union
of the reasons). A slide is always referred (``slide_validation``) until a slide-level rule is certified:
the reviews of slides are kept in a pool of their own (``slide:<bundle>``), never mixed with the fields'.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import Dataset

from cds_daemon.analysis.decode import DecodeError
from cds_daemon.analysis.engine import Engine
from cds_daemon.analysis.fields import Field, select_fields
from cds_daemon.analysis.pipeline import Inferred, infer
from cds_daemon.analysis.policy import FinalisationPolicy
from cds_daemon.analysis.quality import QualityResult, assess
from cds_daemon.analysis.slide_reader import SlideGeometry, SlideImage, SlideUnreadable
from cds_daemon.common.config import Settings
from cds_daemon.common.vocabulary import REASONS, THRESHOLD_REASONS, OutputKind, ReferralReason, TriageMode
from cds_daemon.reports.case_sr import suspicion, worst_category
from cds_daemon.reports.kos import build_review_kos
from cds_daemon.reports.result import AIResult
from cds_daemon.reports.slide_objects import build_slide_annotations, build_slide_heatmap, build_slide_mosaic
from cds_daemon.reports.slide_sr import SLIDE_RULE_TEXT, SlideFinding, SlideFrame, build_slide_sr
from cds_daemon.store import PredictionRecord, SlideField

#: A slide whose finest level is coarser than the bundle's µm/px by more than this is not read (its fields
#: would be upsampled: not what the model learnt on).
MAX_UPSAMPLING = 1.25
#: The heatmap map lies on the coarsest level at least this wide: a field's Grad-CAM is a 7 x 7 grid, so a
#: finer map only interpolates it (and a 40,000 px slide's level 2 would make an 18 MB float map).
PM_MIN_WIDTH = 512
#: A slide among the similar cases: the mean features of its most suspicious fields (until a reviewer marks
#: its diagnostic field, whose features then stand for it).
TOP_FIELDS = 3


class NoInformativeField(DecodeError):
    """Nothing on the slide is worth analysing (glass, blood): "not analysed" with this reason."""


@dataclass(frozen=True)
class PreparedField:
    field: Field
    quality: QualityResult


@dataclass(frozen=True)
class PreparedSlide:
    """What the helper hands the model thread for one slide."""

    fields: list[PreparedField]
    geometry: SlideGeometry
    parts: tuple[str, ...]  # the levels read (SOP Instance UIDs)
    repairs: tuple[str, ...]
    proposals: int
    mask_mpp: float
    ms: float


@dataclass(frozen=True)
class SlideInferred:
    """The model's output for each field and the slide result."""

    fields: list[tuple[PreparedField, Inferred]]
    result: AIResult
    candidate: bool
    priority: int
    ms: float


def prepare_slide(levels: list[tuple[str, Path]], settings: Settings, mpp: float | None) -> PreparedSlide:
    """Open the slide, choose its informative fields at the bundle's µm/px and gate each one."""
    if mpp is None:
        raise DecodeError("the model bundle states no micrometres per pixel (preprocessing.mpp): slides cannot be read")
    t0 = time.perf_counter()
    with SlideImage([p for _, p in levels], settings.worker_scratch) as slide:
        if slide.geometry.mpp > mpp * MAX_UPSAMPLING:
            raise SlideUnreadable(
                f"the slide's finest level is {slide.geometry.mpp:.2f} µm/px; the model reads fields at {mpp:g} µm/px "
                "(a finer level missing?)"
            )
        selection = select_fields(slide, mpp, settings.slides.max_fields, settings.slides.min_cellularity)
        if not selection.fields and not selection.proposals:
            g = slide.geometry
            raise NoInformativeField(f"no informative field: the slide ({g.width} x {g.height} px) is smaller than one")
        if not selection.fields:
            raise NoInformativeField(
                f"no informative field: no {settings.slides.min_cellularity:.0%} of any field's area is "
                f"nuclear stain ({selection.proposals} fields looked at)"
            )
        fields = [PreparedField(f, assess(f.rgb, was_colour=True, settings=settings.quality)) for f in selection.fields]
        return PreparedSlide(
            fields,
            slide.geometry,
            tuple(uid for uid, _ in levels),
            tuple(slide.repairs),
            selection.proposals,
            selection.mask_mpp,
            (time.perf_counter() - t0) * 1000,
        )


def without_pixels(prepared: PreparedSlide) -> PreparedSlide:
    """The slide with its fields' pixels dropped (after the model has seen them; the helper kept its own)."""
    empty = np.zeros((0, 0, 3), np.uint8)
    fields = [PreparedField(dataclasses.replace(f.field, rgb=empty), f.quality) for f in prepared.fields]
    return dataclasses.replace(prepared, fields=fields)


def infer_slide(
    prepared: PreparedSlide, engine: Engine, settings: Settings, policy: FinalisationPolicy
) -> SlideInferred:
    """Each field through :func:`~cds_daemon.analysis.pipeline.infer`, then the slide result. The fields it
    returns carry no pixels (:func:`without_pixels`): a slide's are many images' worth, held once, in the helper."""
    t0 = time.perf_counter()
    light = without_pixels(prepared)
    fields = [
        (f, infer(full.field.rgb, full.quality, engine, settings, policy))
        for full, f in zip(prepared.fields, light.fields, strict=True)
    ]
    result = aggregate([inferred.result for _, inferred in fields])
    return SlideInferred(
        fields,
        result,
        candidate=set(result.reasons) <= THRESHOLD_REASONS,
        priority=min(REASONS[ReferralReason(r)].priority for r in result.reasons),
        ms=(time.perf_counter() - t0) * 1000,
    )


def aggregate(results: list[AIResult]) -> AIResult:
    """The slide's result from its fields' (see the module); always referred."""
    worst, _ = worst_category(results)
    analysed = [r for r in results if r.analysed]
    if worst is None or not analysed:
        raise DecodeError("no field of the slide could be analysed")
    best = max((r for r in analysed if r.predicted == worst), key=lambda r: r.probability(worst))
    first = results[0]
    counts: dict[str, int] = {}
    texts: dict[str, str] = {}
    for r in results:
        for reason, text in zip(r.reasons, r.reason_texts, strict=True):
            counts[reason] = counts.get(reason, 0) + 1
            texts.setdefault(reason, text)
    order = [str(r) for r in ReferralReason if str(r) in counts and r != ReferralReason.SLIDE_VALIDATION]
    n = len(results)
    reasons = (*order, ReferralReason.SLIDE_VALIDATION)
    reason_texts = (
        *(f"{counts[r]} of {n} fields: {texts[r]}" for r in order),
        "whole slide: reviewed until a slide-level rule is certified on this site's reviewed slides",
    )
    conformal = tuple(c for c in first.classes if any(c in r.conformal_set for r in analysed))
    return AIResult(
        classes=first.classes,
        display_names=first.display_names,
        probabilities=best.probabilities,
        predicted=worst,
        conformal_set=conformal,
        referred=True,
        reasons=tuple(str(r) for r in reasons),
        reason_texts=reason_texts,
        model_name=first.model_name,
        model_version=first.model_version,
        model_sha256=first.model_sha256,
        cam=None,
        basic_probabilities=best.basic_probabilities,
        premium_probabilities=best.premium_probabilities,
        finalisation_rule=None,
    )


def field_detail(prepared: PreparedField, inferred: Inferred) -> dict[str, object]:
    f, r = prepared.field, inferred.result
    return {
        "box": [f.x, f.y, f.width, f.height],
        "z": f.z,
        "cellularity": round(f.cellularity, 4),
        "sharpness": round(f.sharpness, 1),
        "predicted": r.predicted,
        "probabilities": [round(p, 6) for p in r.probabilities],
        "referred": r.referred,
        "reasons": list(r.reasons),
    }


def field_rows(inferred: SlideInferred) -> list[SlideField]:
    """Each field's features and Grad-CAM (uint8) for the store, numbered as in the slide SR."""
    rows = []
    for number, (_, i) in enumerate(inferred.fields, start=1):
        cam = i.result.cam
        vector = i.prediction.embedding
        rows.append(
            SlideField(
                number,
                None if vector is None else np.asarray(vector, np.float32).tobytes(),
                None if cam is None else np.round(np.clip(cam, 0.0, 1.0) * 255).astype(np.uint8).tobytes(),
                0 if cam is None else int(cam.shape[0]),
                0 if cam is None else int(cam.shape[1]),
            )
        )
    return rows


def slide_embedding(inferred: SlideInferred) -> bytes | None:
    """The slide's features among similar cases: the mean of its TOP_FIELDS most suspicious fields'."""
    ranked = sorted(
        (i for _, i in inferred.fields if i.result.analysed and i.prediction.embedding is not None),
        key=lambda i: suspicion(i.result.predicted, i.result.probability(i.result.predicted)),
        reverse=True,
    )
    if not ranked:
        return None
    top = np.stack([np.asarray(i.prediction.embedding, np.float32) for i in ranked[:TOP_FIELDS]])
    return np.asarray(top.mean(axis=0), np.float32).tobytes()


def slide_record(
    prepared: PreparedSlide, inferred: SlideInferred, object_uids: dict[str, str], timings_ms: dict[str, float]
) -> PredictionRecord:
    """What the store keeps for a slide: the slide result, and each field's box and result for reviewers."""
    r = inferred.result
    g = prepared.geometry
    confidence = r.probability(r.predicted)
    return PredictionRecord(
        model_name=r.model_name,
        model_version=r.model_version,
        model_sha256=r.model_sha256,
        predicted=r.predicted,
        probabilities=list(r.probabilities),
        referred=True,
        reasons=list(r.reasons),
        priority=inferred.priority,
        triage_mode=TriageMode.SHADOW,  # no slide-level rule: every slide is reviewed, and its review pooled
        rule_id=None,
        finalisation_confidence=confidence,
        candidate=inferred.candidate,
        detail={
            "reason_texts": list(r.reason_texts),
            "priority": inferred.priority,
            "confidence": confidence,
            "conformal_set": list(r.conformal_set),
            "basic": {"probabilities": list(r.basic_probabilities or ())},
            "premium": {"probabilities": list(r.premium_probabilities or ())},
            "triage": {"mode": TriageMode.SHADOW, "rule_id": None, "rule": SLIDE_RULE_TEXT},
            "slide": {
                "width": g.width,
                "height": g.height,
                "mpp": g.mpp,
                "origin_mm": list(g.origin_mm),
                "orientation": list(g.orientation),
                "focal_planes": list(g.focal_planes),
                "frame_of_reference_uid": g.frame_of_reference_uid,
                "levels": list(prepared.parts),
                "repairs": list(prepared.repairs),
                "proposals": prepared.proposals,
                "mask_mpp": round(prepared.mask_mpp, 3),
                "fields": [field_detail(f, i) for f, i in inferred.fields],
            },
            "timings_ms": timings_ms,
            "objects": object_uids,
        },
    )


@dataclass(frozen=True)
class SlideReportJob:
    """What the helper needs to write a slide's objects: the results, without the pixels it kept."""

    result: AIResult
    findings: list[SlideFinding]
    geometry: SlideGeometry


def report_job(prepared: PreparedSlide, inferred: SlideInferred) -> SlideReportJob:
    findings = [SlideFinding(f.field.box, f.field.z, i.result) for f, i in inferred.fields]
    return SlideReportJob(inferred.result, findings, prepared.geometry)


def _pm_level(levels: list[Dataset]) -> Dataset:
    """The level the heatmap map is made on: the coarsest at least PM_MIN_WIDTH wide (else the finest)."""
    ordered = sorted(levels, key=lambda ds: int(ds.TotalPixelMatrixColumns))
    wide = [ds for ds in ordered if int(ds.TotalPixelMatrixColumns) >= PM_MIN_WIDTH]
    return wide[0] if wide else ordered[-1]


def build_slide_objects(
    representative: Dataset,
    levels: list[Dataset],
    job: SlideReportJob,
    pixels: list[np.ndarray],
    *,
    heatmap_jpeg: bool = True,
) -> list[tuple[str, Dataset]]:
    """The slide's 3D SR, annotations and heatmap map (when it has a Frame of Reference), mosaic and KOS."""
    g = job.geometry
    frame = SlideFrame(g.width, g.height, g.mpp, g.origin_mm, g.orientation, g.frame_of_reference_uid)
    base = max(levels, key=lambda ds: int(ds.TotalPixelMatrixColumns) * int(ds.TotalPixelMatrixRows))
    sr = build_slide_sr(representative, job.result, frame, job.findings)
    objects: list[tuple[str, Dataset]] = [(OutputKind.SR, sr)]
    uid = str(representative.SOPInstanceUID)
    if g.frame_of_reference_uid is not None:  # both IODs place their content in the slide's Frame of Reference
        ann = build_slide_annotations(base, job.result, frame, job.findings, uid_source=uid)
        objects.append((OutputKind.ANNOTATIONS, ann))
        heatmap = build_slide_heatmap(_pm_level(levels), job.result, frame, job.findings, uid_source=uid)
        objects.append((OutputKind.HEATMAP_MAP, heatmap))
    mosaic = build_slide_mosaic(representative, job.result, job.findings, pixels, jpeg=heatmap_jpeg)
    objects.append((OutputKind.SC, mosaic))
    objects.append((OutputKind.KOS, build_review_kos(representative, job.result, sr, mosaic)))
    return objects
