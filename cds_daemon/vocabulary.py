"""The daemon's words: every state, decision, reason and refusal code, defined once.

The store's CHECK constraints, triage, the SR codes, the web labels and the metrics all take their
values from here, so a new value is added in one place.
"""

from __future__ import annotations

from enum import StrEnum


class RefusalCode(StrEnum):
    """Why an association or a C-STORE was refused: a bounded set (metric labels, status counts)."""

    CALLER_UNKNOWN = "caller_unknown"
    CALLER_ADDRESS = "caller_address"
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
    CODESTREAM_UNREADABLE = "codestream_unreadable"
    CODESTREAM_MISMATCH = "codestream_mismatch"
    OUT_OF_RESOURCES = "out_of_resources"


#: Type 1 attributes every result object copies from its source: without them no SR, heatmap or KOS
#: can be written into the source study, so a dataset lacking one is refused at C-STORE time.
REQUIRED_SOURCE_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
