"""TID 1500 Comprehensive SR documents: the AI result, and an expert's decision on it.

The AI SR is COMPLETE (the document holds the whole AI output and is never amended: an
expert's decision is a new document that names it as predecessor), PRELIMINARY and
UNVERIFIED (no person has vouched for it). The review SR is COMPLETE, FINAL and VERIFIED.
Both hold one TID 1501 group about the same finding (same tracking UID), so a viewer can
line up the AI's and the expert's category.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes as std
from pydicom.sr.coding import Code
from pydicom.valuerep import DT

from cds_daemon.common.vocabulary import SERIES_NUMBER, OutputKind, ReviewDecision
from cds_daemon.reports import codes
from cds_daemon.reports.observer import device_observer
from cds_daemon.reports.result import AIResult
from cds_daemon.reports.source import (
    DEFAULT_MANUFACTURER,
    character_set,
    contributing_equipment,
    equipment,
    evidence_of,
    now,
    series_description,
)
from cds_daemon.reports.template import Case, Templates, dated
from cds_daemon.reports.uids import derived_uid

_PN_COMPONENT_MAX = 64


def tracking(header: Dataset, result: AIResult) -> hd.sr.TrackingIdentifier:
    uid = derived_uid(header.SOPInstanceUID, result.model_version, "finding")
    return hd.sr.TrackingIdentifier(uid=uid, identifier="Thyroid FNAB cytology classification")


def _source_image(header: Dataset) -> hd.sr.SourceImageForMeasurementGroup:
    frames = [1] if int(header.get("NumberOfFrames", 1) or 1) > 1 else None
    return hd.sr.SourceImageForMeasurementGroup(
        referenced_sop_class_uid=header.SOPClassUID,
        referenced_sop_instance_uid=header.SOPInstanceUID,
        referenced_frame_numbers=frames,
    )


def algorithm(result: AIResult, manufacturer: str) -> hd.sr.AlgorithmIdentification:
    """TID 4019; the bundle hash and the ensemble members' outputs go in as parameters."""
    params = [f"bundle_sha256={result.model_sha256}", f"classes={','.join(result.classes)}"]
    for member, probs in (("basic", result.basic_probabilities), ("premium", result.premium_probabilities)):
        if probs is not None:
            params.append(f"{member}_probabilities={','.join(f'{p:.6f}' for p in probs)}")
    return hd.sr.AlgorithmIdentification(
        name=result.model_name, version=result.model_version, parameters=params, manufacturer=manufacturer
    )


def evaluation(name: Code, value: Code) -> hd.sr.QualitativeEvaluation:
    return hd.sr.QualitativeEvaluation(name=name, value=value)


def text_item(name: Code, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def ai_group(header: Dataset, result: AIResult, manufacturer: str) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    if not result.analysed:  # no class, no probabilities: only that it was referred, and why
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking(header, result),
            finding_type=codes.THYROID_NODULE,
            finding_sites=[hd.sr.FindingSite(anatomic_location=codes.THYROID)],
            algorithm_id=algorithm(result, manufacturer),
            qualitative_evaluations=[
                evaluation(codes.REFERRED, codes.YES),
                *(evaluation(codes.REFERRAL_REASON, codes.reason_code(r)) for r in result.reasons),
            ],
            source_images=[_source_image(header)],
        )
        group[0].ContentSequence.extend(text_item(codes.REFERRAL_REASON, t) for t in result.reason_texts)
        return group
    measurements = [
        hd.sr.Measurement(
            name=codes.probability_concept(cls, display),
            value=float(p),
            unit=codes.PROBABILITY_UNIT,
        )
        for cls, display, p in zip(result.classes, result.display_names, result.probabilities, strict=True)
    ]
    evaluations = [
        evaluation(codes.CATEGORY, codes.class_code(result.predicted, result.display_name(result.predicted))),
        evaluation(codes.REFERRED, codes.YES if result.referred else codes.NO),
        *(evaluation(codes.REFERRAL_REASON, codes.reason_code(r)) for r in result.reasons),
        *(
            evaluation(codes.CONFORMAL_MEMBER, codes.class_code(c, result.display_name(c)))
            for c in result.conformal_set
        ),
    ]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking(header, result),
        finding_type=codes.THYROID_NODULE,
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.THYROID)],
        algorithm_id=algorithm(result, manufacturer),
        measurements=measurements,
        qualitative_evaluations=evaluations,
        source_images=[_source_image(header)],
    )
    group[0].ContentSequence.extend(text_item(codes.REFERRAL_REASON, t) for t in result.reason_texts)
    if result.finalisation_rule is not None and not result.referred:
        group[0].ContentSequence.append(text_item(codes.FINALISATION_RULE, result.finalisation_rule))
    return group


def build_ai_sr(
    source: Dataset,
    result: AIResult,
    *,
    manufacturer: str = DEFAULT_MANUFACTURER,
    device_uid: str | None = None,
    templates: Templates | None = None,
) -> Dataset:
    """The AI result as a TID 1500 Comprehensive SR in the source study (new series, deterministic UIDs).

    For an image the AI could not analyse (``result.analysed`` false) the same document says so and why,
    with no class or probability, so the PACS shows "not analysed" rather than nothing. A later
    successful analysis replaces it (same SOP Instance UID). With ``templates`` (the worker's helper), the
    document around the content tree comes from a checked template (:mod:`cds_daemon.reports.template`).
    """
    if result.analysed:
        result.validate()
    header = evidence_of(source)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=device_observer(result, manufacturer, device_uid),
            subject_context=specimen_context(header),
        ),
        procedure_reported=codes.MICROSCOPY,
        imaging_measurements=[ai_group(header, result, manufacturer)],
    )
    created = now()
    fields: dict[str, Any] = {
        "SOPInstanceUID": derived_uid(header.SOPInstanceUID, result.model_version, "sr"),
        "SeriesInstanceUID": derived_uid(header.SOPInstanceUID, result.model_version, "sr-series"),
        "SeriesDescription": series_description(
            "AI cytology result" if result.analysed else "AI not analysed", result, "PRELIMINARY"
        ),
        "SpecificCharacterSet": character_set(header, result, manufacturer),
    }

    def build() -> Dataset:
        return preliminary_sr(
            header,
            result,
            manufacturer,
            created=created,
            evidence=[header],
            content=report[0],
            series_instance_uid=fields["SeriesInstanceUID"],
            series_number=SERIES_NUMBER[OutputKind.SR],
            sop_instance_uid=fields["SOPInstanceUID"],
            instance_number=1,
            series_description=fields["SeriesDescription"],
        )

    if templates is None:
        return build()
    key = ("ai-sr", result.model_sha256, result.model_version, manufacturer, device_uid or "", header.SOPClassUID)
    case = Case(header, report[0], [header], {**fields, **dated(created)})
    return templates.make(key, case, build)


def preliminary_sr(
    source: Dataset,
    model: AIResult,
    manufacturer: str,
    *,
    created: datetime.datetime | None = None,
    document: type[hd.sr.ComprehensiveSR] | type[hd.sr.Comprehensive3DSR] = hd.sr.ComprehensiveSR,
    **fields: Any,
) -> Dataset:
    """A Comprehensive (or, for a whole slide's regions, Comprehensive 3D) SR the AI authors (image, slide or
    case result): complete, PRELIMINARY and UNVERIFIED, dated ``created`` (now), declaring our coding scheme,
    with the equipment and Contributing Equipment of this model."""
    created = created or now()
    sr = document(
        is_complete=True,
        is_final=False,
        is_verified=False,
        coding_schemes=[codes.coding_scheme(manufacturer)],
        specific_character_set=character_set(source, model, manufacturer),
        content_date=created.date(),
        content_time=created.time(),
        series_date=created.date(),
        series_time=created.time(),
        **equipment(model, manufacturer),
        **fields,
    )
    sr.ContributingEquipmentSequence = [contributing_equipment(model, manufacturer)]
    return sr


def specimen_context(header: Dataset) -> hd.sr.SubjectContext | None:
    """TID 1009 specimen subject context from the source image's Specimen module: the slide (Container
    Identifier), the Specimen Identifier and UID. None when the image carries no specimen description
    (many camera images do not): the subject is then the patient, as before."""
    items = header.get("SpecimenDescriptionSequence") or []
    if not items or not header.get("ContainerIdentifier") or not items[0].get("SpecimenUID"):
        return None
    specimen = items[0]
    return hd.sr.SubjectContext(
        subject_class=hd.sr.CodedConcept.from_code(codes.SPECIMEN),
        subject_class_specific_context=hd.sr.SubjectContextSpecimen(
            uid=str(specimen.SpecimenUID),
            identifier=str(specimen.get("SpecimenIdentifier", "") or "") or None,
            container_identifier=str(header.ContainerIdentifier),
        ),
    )


def person_name(name: str) -> str:
    """A reviewer's display name as a DICOM PN.

    "Smith, Ana" becomes "Smith^Ana"; a name with carets is kept; any other name becomes one family-name
    component ("Jane Doe^") rather than a guessed split. Components are cut to 64 characters.
    """
    name = name.strip()
    if not name:
        raise ValueError("reviewer_name is required")
    if "^" not in name and "," in name:
        family, given = (part.strip() for part in name.split(",", 1))
        name = f"{family}^{given}"
    if "^" in name:
        return "^".join(part[:_PN_COMPONENT_MAX] for part in name.split("^"))
    return name[:_PN_COMPONENT_MAX] + "^"


def _role_code(role: str) -> hd.sr.CodedConcept | None:
    """Role in the organisation (CID 7452) where the free-text role maps onto one."""
    lowered = role.lower()
    if "resident" in lowered:
        return hd.sr.CodedConcept.from_code(codes.RESIDENT)
    if any(word in lowered for word in ("patholog", "physician", "doctor")):
        return hd.sr.CodedConcept.from_code(codes.PHYSICIAN)
    return None


def build_review_sr(
    source: Dataset,
    ai_sr: Dataset,
    *,
    reviewer_name: str,
    reviewer_role: str,
    decision: str,
    final_class: str | None,
    comment: str | None,
    decided_at: datetime.datetime,
    sequence: int,
    result: AIResult,
    organization: str | None = None,
    manufacturer: str = DEFAULT_MANUFACTURER,
    regions: Sequence[Any] = (),
    document: type[hd.sr.ComprehensiveSR] | type[hd.sr.Comprehensive3DSR] = hd.sr.ComprehensiveSR,
) -> Dataset:
    """An expert's decision as a verified TID 1500 SR with the AI SR as predecessor.

    ``organization`` (Verifying Organization, type 1) defaults to the source's InstitutionName. ``regions``:
    further measurement groups after the decision's (a slide's examined fields, see ``slide_sr``), in a
    ``document`` that can hold them.
    """
    if sequence < 1:
        raise ValueError("sequence numbers start at 1")
    header = evidence_of(source)
    if ai_sr.StudyInstanceUID != header.StudyInstanceUID:
        raise ValueError("the AI SR belongs to another study than the source image")
    final = result.final_class(decision, final_class)
    name = person_name(reviewer_name)
    org = (organization or str(header.get("InstitutionName", "") or "") or "Unspecified")[:64]

    evaluations = [evaluation(codes.REVIEW_DECISION, codes.decision_code(ReviewDecision(decision)))]
    if final is not None:
        evaluations.append(evaluation(codes.CATEGORY, codes.class_code(final, result.display_name(final))))
    if result.predicted in result.classes:
        ai_class = codes.class_code(result.predicted, result.display_name(result.predicted))
        evaluations.append(evaluation(codes.AI_CATEGORY, ai_class))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking(header, result),
        finding_type=codes.THYROID_NODULE,
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.THYROID)],
        qualitative_evaluations=evaluations,
        source_images=[_source_image(header)],
    )
    if comment:
        group[0].ContentSequence.append(text_item(codes.COMMENT, comment))
    person = hd.sr.ObserverContext(
        observer_type=std.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name=name,
            organization_name=org,
            role_in_organization=_role_code(reviewer_role),
            role_in_procedure=codes.REVIEWER,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=person),
        procedure_reported=codes.MICROSCOPY,
        imaging_measurements=[group, *regions],
    )
    local = decided_at.astimezone() if decided_at.tzinfo else decided_at  # Content Date/Time are local
    sr = document(
        evidence=[header],
        content=report[0],
        series_instance_uid=derived_uid(header.SOPInstanceUID, result.model_version, "review-sr-series"),
        series_number=SERIES_NUMBER[OutputKind.REVIEW_SR],
        sop_instance_uid=derived_uid(header.SOPInstanceUID, result.model_version, f"review-sr:{sequence}"),
        instance_number=sequence,
        is_complete=True,
        is_final=True,
        is_verified=True,
        verifying_observer_name=name,
        verifying_organization=org,
        previous_versions=[ai_sr],
        series_description=series_description("Expert review of AI cytology", result, "VERIFIED"),
        coding_schemes=[codes.coding_scheme(manufacturer)],
        specific_character_set=character_set(header, result, manufacturer, name, org, comment),
        content_date=local.date(),
        content_time=local.time(),
        manufacturer=manufacturer,  # made by the review worklist, not by the model
    )
    sr.VerifyingObserverSequence[0].VerificationDateTime = DT(decided_at)
    return sr
