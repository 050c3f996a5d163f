"""Coded concepts used in the result objects.

Standard codes come from the DICOM (DCM), SNOMED CT (SCT), NCI Thesaurus (NCIt) and UCUM
schemes. DCM 111147 "Cytologic analysis" is not used as the finding: in PS3.16 it belongs to
CID 6028/6029 (Recommended Follow-up), i.e. it *recommends* a cytology, it does not name what
was examined. The finding is the thyroid nodule whose aspirate the image shows (SCT 237495005)
at the thyroid (SCT 69748006); the procedure reported is microscopy (SCT 117259009, CID 8131).
Benign (Bethesda II) and Malignant (Bethesda VI) are coded with the SNOMED CT values of CID 6063
"Interventional Procedure Result" (taken from pydicom's copy of PS3.16, not typed by hand). The
Indeterminate/Suspicious group pools Bethesda I, III, IV and V; CID 6063 codes Bethesda I as
"Insufficient sample" and has no value for the pool ("Indeterminate result" would misname its
nondiagnostic and suspicious-for-malignancy members), so it keeps a private code, as do the triage
reasons, the review decision and our concept names: the private scheme ``99THYCDS`` (PS3.16 8.2:
designators starting "99" are local), declared in each object's CodingSchemeIdentificationSequence.
"""

from __future__ import annotations

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.codedict import codes as dicom_codes
from pydicom.sr.coding import Code

from cds_daemon.common.vocabulary import DECISIONS, REASONS, ReviewDecision

SCHEME = "99THYCDS"
SCHEME_NAME = "Thyroid cytology decision support private codes"

# Standard codes.
THYROID_NODULE = Code("237495005", "SCT", "Thyroid nodule")
THYROID = Code("69748006", "SCT", "Thyroid")
MICROSCOPY = Code("117259009", "SCT", "Microscopy")
YES = Code("373066001", "SCT", "Yes")
NO = Code("373067005", "SCT", "No")
COMMENT = Code("121106", "DCM", "Comment")
FOR_PHYSICIAN_REVIEW = Code("128201", "DCM", "For Physician Review")
SOURCE_IMAGE_FOR_PROCESSING = Code("121322", "DCM", "Source image for image processing operation")
PHYSICIAN = Code("309343006", "SCT", "Physician")
RESIDENT = Code("405277009", "SCT", "Resident")
REVIEWER = Code("C54634", "NCIt", "Reviewer")
PROBABILITY_UNIT = Code("{probability}", "UCUM", "probability")

#: Model classes with an exact standard code (CID 6063); any other class has a private one.
STANDARD_CLASS_CODES: dict[str, Code] = {
    "benign": dicom_codes.SCT.Benign,
    "malignant": dicom_codes.SCT.Malignant,
}

# Private concept names.
CATEGORY = Code("CATEGORY", SCHEME, "Thyroid cytology category")
AI_CATEGORY = Code("AI-CATEGORY", SCHEME, "AI-suggested thyroid cytology category")
CONFORMAL_MEMBER = Code("CONFORMAL-SET", SCHEME, "Member of conformal prediction set")
REFERRED = Code("REFERRED", SCHEME, "Referred for expert review")
REFERRAL_REASON = Code("REFERRAL-REASON", SCHEME, "Reason for expert review")
REVIEW_DECISION = Code("REVIEW-DECISION", SCHEME, "Expert review decision")
IMAGE_RESULT = Code("IMAGE-RESULT", SCHEME, "AI result of one image of the case")
AGGREGATION_RULE = Code("CASE-RULE", SCHEME, "How the case result is made from the images")
FINALISATION_RULE = Code("FINAL-RULE", SCHEME, "Rule that finalised the result without review")
FIELD_EXAMINED = Code("FIELD-EXAMINED", SCHEME, "Field examined by the reviewer")
DIAGNOSTIC_FIELD = Code("DIAGNOSTIC-FIELD", SCHEME, "Diagnostic field of the slide")

_SH_MAX = 16
_LO_MAX = 64


def _lo(text: str) -> str:
    return text if len(text) <= _LO_MAX else text[: _LO_MAX - 3] + "..."


def _short_value(name: str) -> str:
    value = name.upper().replace("_", "-")
    if len(value) > _SH_MAX or not value or "\\" in value:
        raise ValueError(f"{name!r} does not fit a 16-character code value")
    return value


def class_code(cls: str, display_name: str) -> Code:
    """Code of one model class: the standard one where it exists, e.g. (21594007, SCT, "Malignant"),
    else private, e.g. (INDETERMINATE, 99THYCDS, "Indeterminate/Suspicious (Bethesda I, III, IV, V)")."""
    standard = STANDARD_CLASS_CODES.get(cls)
    return standard if standard is not None else Code(_short_value(cls), SCHEME, _lo(display_name))


def probability_concept(cls: str, display_name: str) -> Code:
    """Concept name of the measurement holding one class's calibrated probability."""
    return Code(_short_value(f"P-{cls}"), SCHEME, _lo(f"Probability of {display_name}"))


def decision_code(decision: ReviewDecision) -> Code:
    """Private code of a reviewer's decision."""
    info = DECISIONS[decision]
    return Code(info.sr_value, SCHEME, info.sr_meaning)


_REASON_INFO = {str(reason): info for reason, info in REASONS.items()}


def reason_code(reason: str) -> Code:
    """Private code of a triage reason; a reason unknown here is coded by its own name."""
    if reason in _REASON_INFO:
        info = _REASON_INFO[reason]
        return Code(info.sr_value, SCHEME, info.sr_meaning)
    value = reason.upper().replace("_", "-")
    return Code(value if len(value) <= _SH_MAX else value[:_SH_MAX], SCHEME, _lo(reason.replace("_", " ")))


def coding_scheme(manufacturer: str) -> CodingSchemeIdentificationItem:
    """The CodingSchemeIdentificationSequence item that declares the private scheme."""
    return CodingSchemeIdentificationItem(designator=SCHEME, name=SCHEME_NAME, responsible_organization=manufacturer)


#: IHE's own private designator (AI Results profile: Contributing Equipment purpose "Processing Algorithm").
IHE_SCHEME = CodingSchemeIdentificationItem(
    designator="99IHE", name="IHE private codes", responsible_organization="IHE"
)
SPECIMEN = Code("121027", "DCM", "Specimen")  # TID 1006 Subject Class of a specimen subject context
