"""A whole slide's AI result as a TID 1500 Comprehensive 3D SR, in the slide's Frame of Reference.

One measurement group holds the slide result (the same TID 1501 group as an image's AI SR, about the
slide's level it was recorded on), then one TID 1410 group per analysed field: its category, class
probabilities and referral, about a SCOORD3D rectangle in slide coordinates (mm, the slide's Frame of
Reference), so WSI viewers (Slim) draw the fields where they lie. A slide without a Frame of Reference
(some dicomizers write none) gets its field regions as 2D image coordinates on the base level instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from pydicom import Dataset

from cds_daemon.common.vocabulary import SERIES_NUMBER, OutputKind
from cds_daemon.reports import codes
from cds_daemon.reports.observer import device_observer
from cds_daemon.reports.result import AIResult
from cds_daemon.reports.source import DEFAULT_MANUFACTURER, evidence_of, now, series_description
from cds_daemon.reports.sr import ai_group, algorithm, evaluation, preliminary_sr, specimen_context, text_item
from cds_daemon.reports.uids import derived_uid


@dataclass(frozen=True)
class SlideFrame:
    """Where a slide's pixels lie: level-0 size, µm/px, the Total Pixel Matrix origin and orientation."""

    width: int
    height: int
    mpp: float
    origin_mm: tuple[float, float]
    orientation: tuple[float, ...]
    frame_of_reference_uid: str | None

    def to_slide(self, points: np.ndarray, z_um: float | None) -> np.ndarray:
        """(column, row) level-0 pixel coordinates (N, 2) -> slide coordinates (N, 3) in mm."""
        spacing = self.mpp / 1000.0
        transform = hd.spatial.ImageToReferenceTransformer(
            image_position=(self.origin_mm[0], self.origin_mm[1], (z_um or 0.0) / 1000.0),
            image_orientation=self.orientation,
            pixel_spacing=(spacing, spacing),
        )
        return np.asarray(transform(np.asarray(points, dtype=np.float64)), dtype=np.float64)


@dataclass(frozen=True)
class SlideFinding:
    """One analysed field: its box (x, y, width, height) in level-0 pixels, focal plane and AI result."""

    box: tuple[int, int, int, int]
    z_um: float | None
    result: AIResult

    def corners(self) -> np.ndarray:
        """The box's corners (column, row), clockwise from the top left."""
        x, y, w, h = self.box
        return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], dtype=np.float64)


def field_tracking(header: Dataset, slide: AIResult, number: int) -> hd.sr.TrackingIdentifier:
    """Field ``number``'s identity: the same in the AI's slide SR and in a reviewer's."""
    uid = derived_uid(header.SOPInstanceUID, slide.model_version, f"field:{number}")
    return hd.sr.TrackingIdentifier(uid=uid, identifier=f"Field {number}")


def field_region(header: Dataset, frame: SlideFrame, finding: SlideFinding) -> dict[str, Any]:
    """The field's rectangle: SCOORD3D in the slide's Frame of Reference, else 2D on ``header``'s level."""
    if frame.frame_of_reference_uid is not None:
        ring = frame.to_slide(finding.corners(), finding.z_um)
        return {
            "referenced_region": hd.sr.ImageRegion3D(
                graphic_type=hd.sr.GraphicTypeValues3D.POLYGON,
                graphic_data=np.vstack([ring, ring[:1]]),
                frame_of_reference_uid=frame.frame_of_reference_uid,
            )
        }
    corners = finding.corners()
    return {
        "referenced_region": hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=np.vstack([corners, corners[:1]]),
            source_image=hd.sr.SourceImageForRegion(
                referenced_sop_class_uid=header.SOPClassUID,
                referenced_sop_instance_uid=header.SOPInstanceUID,
            ),
        )
    }


def _field_group(
    number: int, header: Dataset, frame: SlideFrame, finding: SlideFinding, slide: AIResult, manufacturer: str
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    r = finding.result
    region = field_region(header, frame, finding)
    measurements = [
        hd.sr.Measurement(name=codes.probability_concept(c, d), value=float(p), unit=codes.PROBABILITY_UNIT)
        for c, d, p in zip(r.classes, r.display_names, r.probabilities, strict=True)
    ]
    evaluations = [
        evaluation(codes.CATEGORY, codes.class_code(r.predicted, r.display_name(r.predicted))),
        evaluation(codes.REFERRED, codes.YES if r.referred else codes.NO),
        *(evaluation(codes.REFERRAL_REASON, codes.reason_code(reason)) for reason in r.reasons),
    ]
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=field_tracking(header, slide, number),
        finding_type=codes.THYROID_NODULE,
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.THYROID)],
        algorithm_id=algorithm(slide, manufacturer),
        measurements=measurements,
        qualitative_evaluations=evaluations,
        **region,
    )
    group[0].ContentSequence.extend(text_item(codes.REFERRAL_REASON, t) for t in r.reason_texts)
    return group


def build_slide_sr(
    source: Dataset,
    result: AIResult,
    frame: SlideFrame,
    findings: list[SlideFinding],
    *,
    manufacturer: str = DEFAULT_MANUFACTURER,
) -> Dataset:
    """The slide result and its fields as a Comprehensive 3D SR in the slide's study (see the module).

    ``source`` is the slide's level that carries the result (its representative); UIDs derive from it, so
    analysing the same slide again replaces the document.
    """
    result.validate()
    header = evidence_of(source)
    groups: list[Any] = [ai_group(header, result, manufacturer)]
    groups.extend(_field_group(n, header, frame, f, result, manufacturer) for n, f in enumerate(findings, start=1))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=device_observer(result, manufacturer, None),
            subject_context=specimen_context(header),
        ),
        procedure_reported=codes.MICROSCOPY,
        imaging_measurements=groups,
    )
    report[0].ContentSequence.append(text_item(codes.AGGREGATION_RULE, SLIDE_RULE_TEXT))
    return preliminary_sr(
        header,
        result,
        manufacturer,
        created=now(),
        document=hd.sr.Comprehensive3DSR,
        evidence=[header],
        content=report[0],
        series_instance_uid=derived_uid(header.SOPInstanceUID, result.model_version, "sr-series"),
        series_number=SERIES_NUMBER[OutputKind.SR],
        sop_instance_uid=derived_uid(header.SOPInstanceUID, result.model_version, "sr"),
        instance_number=1,
        series_description=series_description("AI slide result", result, "PRELIMINARY"),
    )


SLIDE_RULE_TEXT = (
    "Slide category: the worst of the analysed fields' categories (Malignant > Indeterminate/Suspicious > Benign); "
    "its probability: the highest calibrated probability of that category among the fields; a slide is referred "
    "until a slide-level rule is certified."
)


def examined_field_groups(
    header: Dataset, frame: SlideFrame, slide: AIResult, fields: dict[int, SlideFinding], diagnostic: int | None
) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    """A reviewer's slide SR: one TID 1410 group per field they examined (number -> field), with the field's
    tracking identifier from the AI's slide SR, its AI category, and which one they marked as diagnostic."""
    groups = []
    for number in sorted(fields):
        finding = fields[number]
        r = finding.result
        evaluations = [evaluation(codes.FIELD_EXAMINED, codes.YES)]
        if r.predicted in r.classes:
            evaluations.append(
                evaluation(codes.AI_CATEGORY, codes.class_code(r.predicted, r.display_name(r.predicted)))
            )
        if number == diagnostic:
            evaluations.append(evaluation(codes.DIAGNOSTIC_FIELD, codes.YES))
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=field_tracking(header, slide, number),
                finding_type=codes.THYROID_NODULE,
                finding_sites=[hd.sr.FindingSite(anatomic_location=codes.THYROID)],
                qualitative_evaluations=evaluations,
                **field_region(header, frame, finding),
            )
        )
    return groups
