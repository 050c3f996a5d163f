"""What an HL7 result says, read from the SR it renders (the AI's, the case's or a reviewer's).

The LIS message is a rendering of a document already sent to the PACS, as IHE RAD-128 renders SRs: the same
codes, the same numbers, nothing recomputed. The SR's first TID 1501 measurement group is the result (an
image's, a slide's or a case's; a slide's field groups are not repeated in the LIS). The patient, study
and specimen come from the SR's own header, which copies the source image's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom import Dataset

IMAGING_MEASUREMENTS = "126010"
MEASUREMENT_GROUP = "125007"
ALGORITHM_NAME, ALGORITHM_VERSION, ALGORITHM_PARAMETERS = "111001", "111003", "111002"
SPECIMEN_IDENTIFIER, CONTAINER_IDENTIFIER = "121041", "111700"


class SRUnreadable(ValueError):
    """The file is not an SR this daemon wrote (the message cannot be made: the item is dead-lettered)."""


@dataclass(frozen=True)
class Coded:
    value: str
    scheme: str
    meaning: str


@dataclass
class SRContent:
    """One result document, as the HL7 builder needs it."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    verified: bool
    content_datetime: str  # YYYYMMDDHHMMSS (local, as the SR's Content Date/Time)
    patient_id: str = ""
    patient_id_issuer: str = ""
    patient_name: str = ""
    birth_date: str = ""
    sex: str = ""
    accession: str = ""
    specimen: str = ""
    container: str = ""
    category: Coded | None = None
    ai_category: Coded | None = None
    decision: Coded | None = None
    referred: Coded | None = None
    reasons: list[Coded] = field(default_factory=list)
    texts: list[tuple[Coded, str]] = field(default_factory=list)  # reasons' texts, rule, comment
    probabilities: list[tuple[Coded, float, Coded | None]] = field(default_factory=list)
    algorithm: dict[str, str] = field(default_factory=dict)
    verifier: str = ""
    verifier_organization: str = ""
    predecessor_uid: str | None = None


def _coded(seq: object) -> Coded | None:
    items = list(seq or [])  # type: ignore[call-overload]
    if not items:
        return None
    item = items[0]
    return Coded(
        str(item.get("CodeValue", "")), str(item.get("CodingSchemeDesignator", "")), str(item.get("CodeMeaning", ""))
    )


def _walk(items: object) -> list[Dataset]:
    """Every content item below ``items``, depth first."""
    out: list[Dataset] = []
    for item in list(items or []):  # type: ignore[call-overload]
        out.append(item)
        out.extend(_walk(item.get("ContentSequence")))
    return out


def read_sr(path: Path) -> SRContent:
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises several types for a file it cannot read
        raise SRUnreadable(f"{path.name}: not readable as DICOM ({type(exc).__name__})") from exc
    if "ContentSequence" not in ds:
        raise SRUnreadable(f"{path.name}: not a structured report")
    content = SRContent(
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        study_instance_uid=str(ds.StudyInstanceUID),
        verified=str(ds.get("VerificationFlag", "")) == "VERIFIED",
        content_datetime=f"{ds.get('ContentDate', '')}{str(ds.get('ContentTime', ''))[:6]}",
        patient_id=str(ds.get("PatientID", "") or ""),
        patient_id_issuer=str(ds.get("IssuerOfPatientID", "") or ""),
        patient_name=str(ds.get("PatientName", "") or ""),
        birth_date=str(ds.get("PatientBirthDate", "") or ""),
        sex=str(ds.get("PatientSex", "") or ""),
        accession=str(ds.get("AccessionNumber", "") or ""),
    )
    observers = ds.get("VerifyingObserverSequence") or []
    if observers:
        content.verifier = str(observers[0].get("VerifyingObserverName", "") or "")
        content.verifier_organization = str(observers[0].get("VerifyingOrganization", "") or "")
    for previous in ds.get("PredecessorDocumentsSequence") or []:
        for series in previous.get("ReferencedSeriesSequence") or []:
            for ref in series.get("ReferencedSOPSequence") or []:
                content.predecessor_uid = str(ref.ReferencedSOPInstanceUID)
    for item in _walk(ds.ContentSequence):  # the specimen: the observation context (TID 1009)
        name = _coded(item.get("ConceptNameCodeSequence"))
        if name is not None and item.get("ValueType") == "TEXT":
            if name.value == SPECIMEN_IDENTIFIER and not content.specimen:
                content.specimen = str(item.TextValue)
            elif name.value == CONTAINER_IDENTIFIER and not content.container:
                content.container = str(item.TextValue)
    group = _first_group(ds)
    if group is None:
        raise SRUnreadable(f"{path.name}: no measurement group")
    for item in _walk(group.get("ContentSequence")):
        _take(content, item)
    return content


def _first_group(ds: Dataset) -> Dataset | None:
    for item in _walk(ds.ContentSequence):
        name = _coded(item.get("ConceptNameCodeSequence"))
        if name is not None and name.value == IMAGING_MEASUREMENTS:
            for child in item.get("ContentSequence") or []:
                child_name = _coded(child.get("ConceptNameCodeSequence"))
                if child_name is not None and child_name.value == MEASUREMENT_GROUP:
                    return Dataset(child)
    return None


def _take(content: SRContent, item: Dataset) -> None:
    name = _coded(item.get("ConceptNameCodeSequence"))
    if name is None:
        return
    kind = item.get("ValueType")
    if kind == "CODE":
        value = _coded(item.get("ConceptCodeSequence"))
        if value is None:
            return
        slot = {
            "CATEGORY": "category",
            "AI-CATEGORY": "ai_category",
            "REVIEW-DECISION": "decision",
            "REFERRED": "referred",
        }
        if name.value in slot:
            setattr(content, slot[name.value], value)
        elif name.value == "REFERRAL-REASON":
            content.reasons.append(value)
    elif kind == "NUM":
        measured = (item.get("MeasuredValueSequence") or [None])[0]
        if measured is not None and name.value.startswith("P-"):
            unit = _coded(measured.get("MeasurementUnitsCodeSequence"))
            content.probabilities.append((name, float(measured.NumericValue), unit))
    elif kind == "TEXT":
        if name.value in (ALGORITHM_NAME, ALGORITHM_VERSION):
            content.algorithm[name.value] = str(item.TextValue)
        elif name.value == ALGORITHM_PARAMETERS:
            key, _, val = str(item.TextValue).partition("=")
            content.algorithm[key] = val
        else:
            content.texts.append((name, str(item.TextValue)))
