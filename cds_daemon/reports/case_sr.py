"""The case-level AI result: one TID 1500 Comprehensive SR per case (a specimen's images), after the quiet period.

Aggregation rule (stated in the document too):
- category: the worst category among the images the AI analysed, Malignant > Indeterminate/Suspicious >
  Benign. A specimen is signed out by its most severe finding: one malignant field makes the aspirate
  malignant, however many benign fields it also has;
- its probability: the highest calibrated probability of that category among the images. Fields of one
  aspirate are not independent (same nodule, same smear), so a noisy-OR over them would be over-confident;
  the maximum needs no independence and stays a calibrated image-level figure;
- referred when any image is referred (or could not be analysed), with the union of the reasons.

It references every image and every image's AI SR. A late image makes the next version, with the
previous one as predecessor: PRELIMINARY and UNVERIFIED like the image SRs, never a second "final".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom import Dataset
from pydicom.uid import Comprehensive3DSRStorage, ComprehensiveSRStorage

from cds_daemon.common.vocabulary import SERIES_NUMBER, WHOLE_SLIDE_SOP_CLASS, OutputKind
from cds_daemon.reports import codes
from cds_daemon.reports.observer import device_observer
from cds_daemon.reports.result import AIResult
from cds_daemon.reports.source import (
    DEFAULT_MANUFACTURER,
    evidence_of,
    series_description,
)
from cds_daemon.reports.sr import preliminary_sr, specimen_context
from cds_daemon.reports.uids import case_uid, derived_uid

#: Severity order of the management groups (the case category is the worst present).
SEVERITY = ("benign", "indeterminate", "malignant")
RULE = (
    "Case category: the worst of the analysed images' categories (Malignant > Indeterminate/Suspicious > "
    "Benign); its probability: the highest calibrated probability of that category among the images; "
    "referred when any image is referred."
)


@dataclass(frozen=True)
class CaseMember:
    """One image of the case: its header (no pixels), the AI result, and its AI SR's UIDs."""

    header: Dataset
    result: AIResult


def worst_category(results: Sequence[AIResult]) -> tuple[str | None, float | None]:
    """The aggregation rule (the module's): (worst category, its probability) over the analysed results;
    (None, None) if none was analysed. Cases aggregate their images by it, slides their fields."""
    analysed = [r for r in results if r.analysed]
    if not analysed:
        return None, None
    worst = max((r.predicted for r in analysed), key=lambda c: SEVERITY.index(c) if c in SEVERITY else -1)
    return worst, max(r.probability(worst) for r in analysed if worst in r.classes)


def suspicion(predicted: str | None, probability: float) -> tuple[int, float]:
    """Sort key, most suspicious last: the category's rank in the aggregation rule's order, then its
    probability (a slide's fields are listed, and its top fields chosen, by it)."""
    return (SEVERITY.index(predicted) if predicted in SEVERITY else -1, probability)


def case_category(members: list[CaseMember]) -> tuple[str | None, float | None]:
    """(worst category, its case probability) over the analysed members; (None, None) if none was analysed."""
    return worst_category([m.result for m in members])


def _ai_sr_stub(member: CaseMember) -> Dataset:
    """Enough of an image's AI SR to reference it (its UIDs are derived, the file need not be read)."""
    ds = Dataset()
    version, uid = member.result.model_version, str(member.header.SOPInstanceUID)
    slide = str(member.header.get("SOPClassUID", "")) == WHOLE_SLIDE_SOP_CLASS  # a slide's is a 3D SR
    ds.SOPClassUID = Comprehensive3DSRStorage if slide and member.result.analysed else ComprehensiveSRStorage
    ds.SOPInstanceUID = derived_uid(uid, version, "sr")
    ds.SeriesInstanceUID = derived_uid(uid, version, "sr-series")
    ds.StudyInstanceUID = member.header.StudyInstanceUID
    return ds


def _previous_stub(first: Dataset, case_key: str, model_version: str, version: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = ComprehensiveSRStorage
    ds.SOPInstanceUID = case_uid(case_key, model_version, f"case-sr:{version}")
    ds.SeriesInstanceUID = case_uid(case_key, model_version, "case-sr-series")
    ds.StudyInstanceUID = first.StudyInstanceUID
    return ds


def build_case_sr(
    case_key: str, members: list[CaseMember], version: int, *, manufacturer: str = DEFAULT_MANUFACTURER
) -> Dataset:
    """Version ``version`` (1, 2, ...) of the case SR, in the study of the case's first image."""
    if not members or version < 1:
        raise ValueError("a case SR needs at least one image and a version >= 1")
    first = evidence_of(members[0].header)
    model = members[0].result
    category, probability = case_category(members)
    referred = any(m.result.referred or not m.result.analysed for m in members)
    reasons = sorted({r for m in members for r in m.result.reasons})
    evaluations = [hd.sr.QualitativeEvaluation(codes.REFERRED, codes.YES if referred else codes.NO)]
    evaluations += [hd.sr.QualitativeEvaluation(codes.REFERRAL_REASON, codes.reason_code(r)) for r in reasons]
    measurements = []
    if category is not None and probability is not None:
        display = model.display_name(category)
        evaluations.insert(0, hd.sr.QualitativeEvaluation(codes.CATEGORY, codes.class_code(category, display)))
        measurements.append(
            hd.sr.Measurement(
                name=codes.probability_concept(category, display),
                value=float(probability),
                unit=codes.PROBABILITY_UNIT,
            )
        )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=case_uid(case_key, model.model_version, "case-finding"), identifier=f"Thyroid FNAB case {case_key}"[:64]
        ),
        finding_type=codes.THYROID_NODULE,
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.THYROID)],
        measurements=measurements or None,
        qualitative_evaluations=evaluations,
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(
                referenced_sop_class_uid=m.header.SOPClassUID, referenced_sop_instance_uid=m.header.SOPInstanceUID
            )
            for m in members
        ],
    )
    stubs = [_ai_sr_stub(m) for m in members]
    content = group[0].ContentSequence
    for stub in stubs:
        content.append(
            hd.sr.CompositeContentItem(
                name=codes.IMAGE_RESULT,
                referenced_sop_class_uid=stub.SOPClassUID,
                referenced_sop_instance_uid=stub.SOPInstanceUID,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    content.append(
        hd.sr.TextContentItem(
            name=codes.AGGREGATION_RULE, value=RULE, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=device_observer(model, manufacturer),
            subject_context=specimen_context(first),
        ),
        procedure_reported=codes.MICROSCOPY,
        imaging_measurements=[group],
    )
    previous = [_previous_stub(first, case_key, model.model_version, version - 1)] if version > 1 else None
    return preliminary_sr(
        first,
        model,
        manufacturer,
        evidence=[evidence_of(m.header) for m in members] + stubs,
        content=report[0],
        series_instance_uid=case_uid(case_key, model.model_version, "case-sr-series"),
        series_number=SERIES_NUMBER[OutputKind.CASE_SR],
        sop_instance_uid=case_uid(case_key, model.model_version, f"case-sr:{version}"),
        instance_number=version,
        previous_versions=previous,
        series_description=series_description("AI case result", model, "PRELIMINARY"),
    )
