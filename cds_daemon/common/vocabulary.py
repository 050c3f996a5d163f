"""The daemon's words: every state, decision, referral reason, output kind and refusal code, defined once.

The store's CHECK constraints, triage, the SR codes, the web labels and the metrics all take their
values from here, so a new value is added in one place (and, for a value the store keeps, in a
migration that widens its CHECK constraint: see docs/architecture.md).

Members are ``StrEnum``: they compare equal to, and serialise as, their plain string values, which
is what the database, the JSON detail and the DICOM code values hold.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import NamedTuple


class InstanceState(StrEnum):
    """A received image's life: received -> processing -> reported -> delivered (or rejected / failed)."""

    RECEIVED = "received"
    PROCESSING = "processing"
    REPORTED = "reported"
    DELIVERED = "delivered"
    REJECTED = "rejected"
    FAILED = "failed"


class OutboxState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


class WorklistStatus(StrEnum):
    OPEN = "open"
    IN_REVIEW = "in_review"
    DONE = "done"
    ESCALATED = "escalated"


class UserRole(StrEnum):
    REVIEWER = "reviewer"
    ADMIN = "admin"


class OutputKind(StrEnum):
    """The result objects written back to the PACS."""

    SR = "sr"  # AI result, TID 1500 Comprehensive SR
    SC = "sc"  # Grad-CAM heatmap, Secondary Capture
    KOS = "kos"  # "For Physician Review" Key Object Selection
    REVIEW_SR = "review-sr"  # a reviewer's verified decision
    CASE_SR = "case-sr"  # the case-level AI result (a specimen's images), TID 1500 Comprehensive SR
    ANNOTATIONS = "ann"  # a whole slide's analysed fields, Microscopy Bulk Simple Annotations
    HEATMAP_MAP = "heatmap-map"  # a whole slide's Grad-CAM heatmap, Parametric Map in the slide's frame


#: DICOM Series Number of each output kind's series in the source study.
SERIES_NUMBER: dict[OutputKind, int] = {
    OutputKind.SR: 901,
    OutputKind.SC: 902,
    OutputKind.KOS: 903,
    OutputKind.REVIEW_SR: 904,
    OutputKind.CASE_SR: 905,
    OutputKind.ANNOTATIONS: 906,
    OutputKind.HEATMAP_MAP: 907,
}


class ReviewDecision(StrEnum):
    """What a cytopathologist decides about an AI result."""

    CONFIRM = "confirm"
    CHANGE = "change"
    NON_DIAGNOSTIC = "non_diagnostic"


class DecisionInfo(NamedTuple):
    label: str  # shown on the review page
    sr_value: str  # code value in the private scheme (99THYCDS)
    sr_meaning: str


DECISIONS: dict[ReviewDecision, DecisionInfo] = {
    ReviewDecision.CONFIRM: DecisionInfo("Confirmed", "CONFIRM", "AI category confirmed"),
    ReviewDecision.CHANGE: DecisionInfo("Changed", "CHANGE", "AI category changed"),
    ReviewDecision.NON_DIAGNOSTIC: DecisionInfo(
        "Non-diagnostic / unsatisfactory", "NON-DIAGNOSTIC", "Non-diagnostic specimen"
    ),
}


class ReferralReason(StrEnum):
    """Why an image goes to expert review. Model-side reasons first, then the input-quality gate's."""

    CONFORMAL_SET = "conformal_set_not_singleton"
    INDETERMINATE = "indeterminate_class"
    LOW_CONFIDENCE = "low_confidence"
    MEMBERS_DISAGREE = "basic_premium_disagree"
    OOD_MAHALANOBIS = "ood_mahalanobis"
    OOD_ENERGY = "ood_energy"
    OOD_STAIN = "ood_stain"
    QUALITY_TOO_SMALL = "quality_too_small"
    QUALITY_NOT_COLOUR = "quality_not_colour"
    QUALITY_OVEREXPOSED = "quality_overexposed"
    QUALITY_UNDEREXPOSED = "quality_underexposed"
    QUALITY_EMPTY_FIELD = "quality_empty_field"
    QUALITY_BLUR = "quality_blur"
    NOT_ANALYSED = "not_analysed"  # decoding or report building failed: a person must look at the image
    SITE_VALIDATION = "site_validation"  # shadow mode: every case is reviewed until a site rule is certified
    SLIDE_VALIDATION = "slide_validation"  # a whole slide: reviewed until a slide-level rule is certified


class ReasonInfo(NamedTuple):
    priority: int  # worklist priority it gives: 1 most urgent .. 9
    label: str  # short label on the review page
    sr_value: str  # code value in the private scheme (99THYCDS), at most 16 characters
    sr_meaning: str


_QUALITY_PRIORITY = 2
REASONS: dict[ReferralReason, ReasonInfo] = {
    ReferralReason.CONFORMAL_SET: ReasonInfo(
        4, "Conformal set > 1 class", "CONFORMAL", "Conformal prediction set is not one class"
    ),
    ReferralReason.INDETERMINATE: ReasonInfo(3, "Indeterminate", "INDETERMINATE", "Indeterminate/Suspicious category"),
    ReferralReason.LOW_CONFIDENCE: ReasonInfo(
        5, "Low confidence", "LOW-CONFIDENCE", "Calibrated confidence below threshold"
    ),
    ReferralReason.MEMBERS_DISAGREE: ReasonInfo(
        4, "Ensemble disagreement", "DISAGREEMENT", "Ensemble members disagree"
    ),
    ReferralReason.OOD_MAHALANOBIS: ReasonInfo(
        1, "Out of distribution", "OOD-MAHALANOBIS", "Image features out of distribution (Mahalanobis)"
    ),
    ReferralReason.OOD_ENERGY: ReasonInfo(
        1, "Out of distribution", "OOD-ENERGY", "Model output out of distribution (energy)"
    ),
    ReferralReason.OOD_STAIN: ReasonInfo(
        1, "Out of distribution", "OOD-STAIN", "Colours unlike a stained cytology smear"
    ),
    ReferralReason.QUALITY_TOO_SMALL: ReasonInfo(_QUALITY_PRIORITY, "Image quality", "Q-TOO-SMALL", "Image too small"),
    ReferralReason.QUALITY_NOT_COLOUR: ReasonInfo(
        _QUALITY_PRIORITY, "Image quality", "Q-NOT-COLOUR", "Not a colour image"
    ),
    ReferralReason.QUALITY_OVEREXPOSED: ReasonInfo(
        _QUALITY_PRIORITY, "Image quality", "Q-OVEREXPOSED", "Image overexposed"
    ),
    ReferralReason.QUALITY_UNDEREXPOSED: ReasonInfo(
        _QUALITY_PRIORITY, "Image quality", "Q-UNDEREXPOSED", "Image underexposed"
    ),
    ReferralReason.QUALITY_EMPTY_FIELD: ReasonInfo(
        _QUALITY_PRIORITY, "Image quality", "Q-EMPTY-FIELD", "Almost no cells in the field"
    ),
    ReferralReason.QUALITY_BLUR: ReasonInfo(_QUALITY_PRIORITY, "Image quality", "Q-BLUR", "Image out of focus"),
    ReferralReason.NOT_ANALYSED: ReasonInfo(2, "Not analysed", "NOT-ANALYSED", "Image not analysed by the AI"),
    ReferralReason.SITE_VALIDATION: ReasonInfo(
        9, "Site validation", "SITE-VALIDATION", "Site validation: every case is reviewed"
    ),
    ReferralReason.SLIDE_VALIDATION: ReasonInfo(
        8, "Whole slide", "SLIDE-REVIEW", "Whole slide: reviewed until a slide-level rule is certified"
    ),
}

#: Reasons that only say the case was not finalised (below the threshold, or no rule in force): a field
#: referred for these alone is a *candidate* for finalisation, the population a finalisation rule is fitted on.
THRESHOLD_REASONS = frozenset(
    {ReferralReason.LOW_CONFIDENCE, ReferralReason.SITE_VALIDATION, ReferralReason.SLIDE_VALIDATION}
)


class TriageMode(StrEnum):
    """What may be finalised without review (``triage.mode``)."""

    SHADOW = "shadow"  # nothing: every image is reviewed, and the reviews build the site calibration pool
    LIVE = "live"  # the active site rule certified on this site's pool for the loaded bundle
    BUNDLE = "bundle"  # the rule fitted on the bundle's own calibration split (demos, validated elsewhere)


#: Priority of a case that is referred for no listed reason (and the lowest "routine" value).
ROUTINE_PRIORITY = 9


class RefusalCode(StrEnum):
    """Why an association or a C-STORE was refused: a bounded set (metric labels, status counts)."""

    PEER_UNKNOWN = "peer_unknown"  # connection closed on open: no allowed caller uses that address
    TOO_MANY_CONNECTIONS = "too_many_connections"
    PDU_TOO_LARGE = "pdu_too_large"
    DATASET_TOO_LARGE = "dataset_too_large"
    CALLER_UNKNOWN = "caller_unknown"
    CALLER_ADDRESS = "caller_address"
    CALLER_CERTIFICATE = "caller_certificate"
    UNREADABLE_DATASET = "unreadable_dataset"
    SOP_CLASS_NOT_ACCEPTED = "sop_class_not_accepted"
    SOP_CLASS_MISMATCH = "sop_class_mismatch"
    INVALID_UID = "invalid_uid"
    MISSING_ATTRIBUTE = "missing_attribute"
    NO_PIXEL_DATA = "no_pixel_data"
    BAD_IMAGE_ATTRIBUTES = "bad_image_attributes"
    UNSUPPORTED_PHOTOMETRIC = "unsupported_photometric"
    UNSUPPORTED_BITS = "unsupported_bits"
    IMAGE_TOO_LARGE = "image_too_large"
    PIXEL_DATA_SHORT = "pixel_data_short"
    PIXEL_DATA_LONG = "pixel_data_long"
    CODESTREAM_UNREADABLE = "codestream_unreadable"
    CODESTREAM_MISMATCH = "codestream_mismatch"
    OUT_OF_RESOURCES = "out_of_resources"
    DATABASE_UNAVAILABLE = "database_unavailable"  # 0xA700: nothing is acknowledged that is not committed


#: Type 1 attributes every result object copies from its source: without them no SR, heatmap or KOS
#: can be written into the source study, so a dataset lacking one is refused at C-STORE time.
REQUIRED_SOURCE_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")

#: VL Whole Slide Microscopy Image Storage: the one input kind that is a slide (a series of levels), not an image.
WHOLE_SLIDE_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"


def sql_values(values: Iterable[StrEnum]) -> str:
    """``'a','b'``: the members as an SQL list for a CHECK (... IN (...)) constraint."""
    return ",".join(f"'{v.value}'" for v in values)
