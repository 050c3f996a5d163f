"""Source-image handling shared by the SR, heatmap and KOS builders.

Results go into the source study as new series. highdicom reads the type-2 patient and study
attributes of the source by attribute access, and sources (e.g. a minimal Secondary Capture)
may lack them, so every builder works from :func:`evidence_of`: a header-only copy with the
empty values that type 2 allows filled in.
"""

from __future__ import annotations

import copy
import datetime
from typing import TypedDict

import highdicom as hd
from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.coding import Code
from pydicom.valuerep import DA, DT, TM

from cds_daemon.common.version import software_version
from cds_daemon.common.vocabulary import REQUIRED_SOURCE_UIDS
from cds_daemon.reports.result import AIResult

#: Type 2 attributes of the Patient and General Study modules: present, possibly empty.
TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
_PIXEL_KEYWORDS = {"PixelData", "FloatPixelData", "DoubleFloatPixelData"}
_LO_MAX = 64

DEFAULT_MANUFACTURER = "Thyroid CDS"


def evidence_of(source: Dataset) -> Dataset:
    """Header-only copy of ``source`` (no pixel data), type-2 patient/study attributes present."""
    missing = [k for k in REQUIRED_SOURCE_UIDS if not source.get(k)]
    if missing:
        raise ValueError(f"source dataset lacks {', '.join(missing)}")
    header = Dataset()
    for elem in source:
        if elem.keyword not in _PIXEL_KEYWORDS:
            header.add(copy.deepcopy(elem))
    for keyword in TYPE2_PATIENT_STUDY:
        if keyword not in header:
            setattr(header, keyword, "")
    if str(header.PatientSex or "") not in {"", "M", "F", "O"}:
        header.PatientSex = ""
    _blank_unreadable_dates(header)
    return header


_DATE_TYPES = {"DA": DA, "TM": TM, "DT": DT}


def _blank_unreadable_dates(header: Dataset) -> None:
    """A date or time other software wrote in a local format ("31.01.1970") cannot be copied into a
    conformant object: it becomes empty (what type 2 allows) rather than stopping the report. The
    source image keeps it."""
    for elem in header:
        parse = _DATE_TYPES.get(str(elem.VR))
        if parse is None or elem.value in (None, ""):
            continue
        values = elem.value if isinstance(elem.value, list | MultiValue) else [elem.value]
        try:
            for value in values:
                parse(str(value))
        except ValueError:
            elem.value = ""


def copy_patient_study(target: hd.SOPClass, header: Dataset) -> None:
    """Copy all patient- and study-level attributes of the source, as PS3.3 requires for the same study."""
    target.copy_patient_and_study_information(header)


class Equipment(TypedDict):
    manufacturer: str
    manufacturer_model_name: str
    software_versions: str


def equipment(result: AIResult, manufacturer: str) -> Equipment:
    """General Equipment keyword arguments for highdicom constructors."""
    return Equipment(
        manufacturer=manufacturer,
        manufacturer_model_name=result.model_name[:_LO_MAX],
        software_versions=result.model_version[:_LO_MAX],
    )


#: The Purpose of Reference of the equipment that made an AI result: CID 7005 "Processing Equipment".
#: IHE AI Results (trial implementation) names a placeholder (Newcode1, 99IHE, "Processing Algorithm") that is
#: not a CID 7005 value: validators and highdicom refuse it, so the standard code is used (docs/conformance.md).
PROCESSING_EQUIPMENT = Code("109102", "DCM", "Processing Equipment")


def contributing_equipment(result: AIResult, manufacturer: str) -> hd.ContributingEquipment:
    """One Contributing Equipment item (SOP Common) naming the model as the processing equipment: model name,
    this software's and the model's versions, and the bundle's SHA-256 as its serial number (new when
    retrained). The Device UID derived from that hash is the TID 1004 device observer's in the SR;
    Contributing Equipment has no Device UID attribute (dciodvfy)."""
    item = hd.ContributingEquipment(
        manufacturer=manufacturer[:_LO_MAX],
        purpose_of_reference=PROCESSING_EQUIPMENT,
        manufacturer_model_name=result.model_name[:_LO_MAX],
        software_versions=[f"cds-daemon {software_version()}"[:_LO_MAX], result.model_version[:_LO_MAX]],
        device_serial_number=result.model_sha256[:_LO_MAX],
    )
    return item


def series_description(prefix: str, result: AIResult, suffix: str) -> str:
    """``"<prefix> (<model> <version>) - <suffix>"``, shortening the model label to fit LO (64)."""
    room = _LO_MAX - len(prefix) - len(suffix) - len(" () - ")
    label = result.model_label
    if len(label) > room:
        label = label[: max(room - 3, 0)] + "..."
    return f"{prefix} ({label}) - {suffix}"


def character_set(header: Dataset, result: AIResult, *texts: str | None) -> str | list[str] | None:
    """The source's SpecificCharacterSet, or UTF-8 ("ISO_IR 192") when text of ours is not ASCII.

    Reviewer names, comments, class names and reasons come from people and configuration; a
    source in the default repertoire or Latin-1 could not carry them, and pydicom would write "?".
    """
    ours = (*result.display_names, *result.reason_texts, result.model_name, result.model_version, *texts)
    if all(t is None or t.isascii() for t in ours):
        charset: str | list[str] | None = header.get("SpecificCharacterSet")
        return charset
    return "ISO_IR 192"


def now() -> datetime.datetime:
    return datetime.datetime.now().replace(microsecond=0)
