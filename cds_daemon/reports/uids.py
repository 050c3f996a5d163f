"""Deterministic UIDs for the result objects.

A UID is derived from the source SOPInstanceUID, the model version and the object kind, so
re-processing an image with the same model replaces its results in the PACS instead of
adding duplicates, and a new model version gets new objects next to the old ones.
UIDs are "2.25." + a name-based (SHA-1, version 5) UUID (PS3.5 B.2): no organisation root has to
be registered. ``pydicom.uid.generate_uid(prefix=None, entropy_srcs=...)`` is not used because with
``prefix=None`` it ignores ``entropy_srcs`` and returns a random UUID.
"""

from __future__ import annotations

import re
import uuid

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:cds_daemon:reports:v1")
_KINDS = frozenset(
    {
        "sr",
        "sc",
        "kos",
        "ann",
        "pm",
        "sr-series",
        "sc-series",
        "kos-series",
        "ann-series",
        "pm-series",
        "review-sr-series",
        "finding",
    }
)
_NUMBERED = re.compile(r"(review-sr|field):[1-9][0-9]*")


def derived_uid(source_sop_instance_uid: str, model_version: str, kind: str) -> str:
    """The UID of one result object (or series) made from one source image by one model version.

    ``kind`` is one of "sr", "sc", "kos", "ann" (a slide's annotations), "pm" (a slide's heatmap map), their
    "-series" variants, "review-sr-series", "finding" (the TID 1501 tracking UID), "field:<n>" (the tracking UID
    of a slide's n-th field) or "review-sr:<n>" (n >= 1).
    """
    if kind not in _KINDS and not _NUMBERED.fullmatch(kind):
        raise ValueError(f"unknown derived UID kind {kind!r}")
    if not source_sop_instance_uid or not model_version:
        raise ValueError("source SOPInstanceUID and model version are required")
    return _uid("result", source_sop_instance_uid, model_version, kind)


_CASE = re.compile(r"case-(finding|sr-series|sr:[1-9][0-9]*)")


def case_uid(case_key: str, model_version: str, kind: str) -> str:
    """The UID of a case-level object: "case-sr:<version>", "case-sr-series" or "case-finding"."""
    if not _CASE.fullmatch(kind):
        raise ValueError(f"unknown case UID kind {kind!r}")
    if not case_key or not model_version:
        raise ValueError("case key and model version are required")
    return _uid("case", case_key, model_version, kind)


def device_uid(manufacturer: str, model_name: str, bundle_sha256: str) -> str:
    """Device UID of one trained model (TID 1004 observer, Contributing Equipment): stable for a bundle, new
    whenever the model is retrained (its bundle hash changes), as IHE AI Results recommends."""
    return _uid("device", manufacturer, model_name, bundle_sha256)


def _uid(*parts: str) -> str:
    # NUL cannot occur in a UID or LO value, so the joined name is unambiguous.
    return f"2.25.{uuid.uuid5(_NAMESPACE, chr(0).join(parts)).int}"
