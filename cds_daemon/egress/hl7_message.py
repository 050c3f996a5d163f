"""An SR's result as an HL7 v2.5.1 ORU^R01 message for the laboratory information system.

One message per result document: an image's or slide's AI result and the case's (preliminary: OBR-25 and
OBX-11 ``P``), a reviewer's decision (final ``F``, or corrected ``C`` when the reviewer changed the AI's
category). The codes are the SR's (SNOMED CT where standard, 99THYCDS otherwise); docs/conformance.md lists
every field. Values are escaped by python-hl7 (``hl7.util.escape``); text outside ASCII is sent as UTF-8
(MSH-18 ``UNICODE UTF-8``). The message control ID derives from the SR's SOP Instance UID: a resend of the
same result has the same ID, so the LIS can recognise it.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import hl7

from cds_daemon.common.config import Destination
from cds_daemon.egress.sr_content import Coded, SRContent

VERSION = "2.5.1"
SERVICE = ("THYFNA-AI", "Thyroid FNA cytology, AI classification", "99THYCDS")
STUDY_UID = ("110180", "Study Instance UID", "DCM")
SR_DOCUMENT = ("SR-UID", "Result document (DICOM SR SOP Instance UID)", "99THYCDS")
SR_PREDECESSOR = ("SR-PREDECESSOR", "Result document it follows (DICOM SR SOP Instance UID)", "99THYCDS")
RESULT_SCOPE = ("RESULT-SCOPE", "What the result is about", "99THYCDS")
SPECIMEN_TYPE = ("ASP", "Aspirate", "HL70487")
MAX_TEXT = 65536
NULL = '""'  # HL7's explicit null: a required field whose value is not known

_CONTAINER = hl7.parse("MSH|^~\\&|\r")  # the separators python-hl7's escape works with


@dataclass(frozen=True)
class OrderNumbers:
    """The LIS's numbers for the result's order, when an order was received (else the accession)."""

    placer: str = ""
    filler: str = ""
    ordering_provider: str | None = None  # family^given, from the order's ORC-12


def control_id(sr_uid: str) -> str:
    """MSH-10 (at most 20 characters in 2.5.1): the same for every send of one result document."""
    return "CDS" + hashlib.sha256(f"hl7:{sr_uid}".encode()).hexdigest()[:17].upper()


def escape(text: str) -> str:
    """``text`` as one HL7 value: separators escaped by python-hl7, line breaks as ``\\.br\\``, other control
    characters dropped, anything outside ASCII kept (the message is UTF-8)."""
    text = text.replace("\r\n", "\n").replace("\n", "\r")[:MAX_TEXT]
    out: list[str] = []
    run: list[str] = []
    for c in text:
        if " " <= c <= "~" or c == "\r":
            run.append(c)
            continue
        if run:
            out.append(hl7.util.escape(_CONTAINER, "".join(run)))
            run = []
        if ord(c) > 0x7F:
            out.append(c)
    if run:
        out.append(hl7.util.escape(_CONTAINER, "".join(run)))
    return "".join(out)


def _components(*values: str) -> str:
    return "^".join(escape(v) for v in values).rstrip("^")


def _coded(c: Coded | tuple[str, str, str]) -> str:
    value, meaning, scheme = (c.value, c.meaning, c.scheme) if isinstance(c, Coded) else c
    return _components(value, meaning, scheme)


def _segment(name: str, fields: Sequence[str]) -> str:
    return "|".join([name, *fields]).rstrip("|")


def _fields(n: int, **at: str) -> list[str]:
    """Fields 1..n of a segment, empty but for ``at`` ({"f3": ...})."""
    out = [""] * n
    for key, value in at.items():
        out[int(key[1:]) - 1] = value
    return out


def _person(dicom_name: str) -> str:
    """DICOM PN (family^given^middle^prefix^suffix) as HL7 XPN (family^given^middle^suffix^prefix)."""
    parts = (dicom_name.split("=")[0].split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = parts
    return _components(family, given, middle, suffix, prefix)


def _observer(dicom_name: str) -> str:
    """A person as XCN (no ID): ^family^given^middle^suffix^prefix."""
    return "^" + _person(dicom_name) if dicom_name else ""


def result_status(content: SRContent) -> str:
    """P for the AI's results; F for a reviewer's; C when the reviewer changed the AI's category."""
    if not content.verified:
        return "P"
    if content.decision is not None and content.decision.value == "CHANGE":
        return "C"
    if content.category and content.ai_category and content.category.value != content.ai_category.value:
        return "C"
    return "F"


#: What a result is about (OBX RESULT-SCOPE), by the kind of SR it renders.
SCOPES = {
    "image": ("IMAGE", "One image"),
    "slide": ("SLIDE", "A whole slide"),
    "case": ("CASE", "The case (the specimen's images)"),
    "review": ("REVIEW", "A reviewer's decision"),
}
YES, NO = ("373066001", "Yes", "SCT"), ("373067005", "No", "SCT")


def oru_r01(
    content: SRContent,
    destination: Destination,
    *,
    scope: str,
    order: OrderNumbers | None = None,
    now: datetime.datetime,
) -> str:
    """The ORU^R01 message (segments separated by CR) for one result document."""
    status = result_status(content)
    stamp = now.strftime("%Y%m%d%H%M%S")
    observed = content.content_datetime or stamp
    filler = (order.filler if order and order.filler else "") or content.accession
    placer = order.placer if order else ""
    provider = _observer(order.ordering_provider) if order and order.ordering_provider else ""
    msh = [
        "^~\\&",
        escape(destination.sending_application),
        escape(destination.sending_facility),
        escape(destination.receiving_application),
        escape(destination.receiving_facility),
        stamp,
        "",
        "ORU^R01^ORU_R01",
        control_id(content.sop_instance_uid),
        "P",
        VERSION,
        "",
        "",
        "",
        "",
        "",
        "UNICODE UTF-8",
    ]
    # PID-3 and PID-5 are required: a header without them sends HL7's explicit null ("")
    pid_id = _components(content.patient_id, "", "", content.patient_id_issuer) or NULL
    pid_name = _person(content.patient_name) or NULL
    segments = [
        "MSH|" + "|".join(msh),
        _segment(
            "PID",
            _fields(
                8,
                f1="1",
                f3=pid_id,
                f5=pid_name,
                f7=escape(content.birth_date),
                f8=escape(content.sex),
            ),
        ),
        _segment("ORC", _fields(3, f1="RE", f2=escape(placer), f3=escape(filler))),
        _segment(
            "OBR",
            _fields(
                25,
                f1="1",
                f2=escape(placer),
                f3=escape(filler),
                f4=_coded(SERVICE),
                f7=observed,
                f16=provider,
                f22=stamp,
                f25=status,
            ),
        ),
    ]
    comment = [text for name, text in content.texts if name.value == "121106"]
    segments += [_segment("NTE", ["1", "L", escape(text)]) for text in comment[:1]]
    equipment = ""
    if content.algorithm:
        name = f"{content.algorithm.get('111001', '')} {content.algorithm.get('111003', '')}".strip()
        equipment = _components(name, "", content.algorithm.get("bundle_sha256", ""), "L" if name else "")
    reviewer = _observer(content.verifier) if content.verified else ""
    observations: list[tuple[str, str, str, str]] = []  # (type, identifier, value, units)
    code, meaning = SCOPES[scope]
    observations.append(("CWE", _coded(RESULT_SCOPE), _coded((code, meaning, "99THYCDS")), ""))
    if not content.verified:
        analysed = YES if content.category is not None else NO
        observations.append(("CWE", _coded(_name("ANALYSED", "Analysed by the AI")), _coded(analysed), ""))
    if content.category is not None:
        observations.append(
            ("CWE", _coded(_name("CATEGORY", "Thyroid cytology category")), _coded(content.category), "")
        )
    if content.ai_category is not None and content.verified:
        ai_name = _name("AI-CATEGORY", "AI-suggested thyroid cytology category")
        observations.append(("CWE", _coded(ai_name), _coded(content.ai_category), ""))
    if content.decision is not None:
        observations.append(
            ("CWE", _coded(_name("REVIEW-DECISION", "Expert review decision")), _coded(content.decision), "")
        )
    for concept, p, unit in content.probabilities:
        observations.append(("NM", _coded(concept), f"{p:.6g}", _coded(unit) if unit else ""))
    if content.referred is not None:
        observations.append(
            ("CWE", _coded(_name("REFERRED", "Referred for expert review")), _coded(content.referred), "")
        )
    for reason in content.reasons:
        observations.append(("CWE", _coded(_name("REFERRAL-REASON", "Reason for expert review")), _coded(reason), ""))
    for concept, text in content.texts:  # the reasons' words, the rule that finalised or aggregated
        if concept.scheme == "99THYCDS":
            observations.append(("TX", _coded(concept), escape(text), ""))
    observations.append(("ST", _coded(STUDY_UID), escape(content.study_instance_uid), ""))
    observations.append(("ST", _coded(SR_DOCUMENT), escape(content.sop_instance_uid), ""))
    if content.predecessor_uid:
        observations.append(("ST", _coded(SR_PREDECESSOR), escape(content.predecessor_uid), ""))
    for n, (kind, identifier, value, units) in enumerate(observations, start=1):
        segments.append(
            _segment(
                "OBX",
                _fields(
                    18,
                    f1=str(n),
                    f2=kind,
                    f3=identifier,
                    f5=value,
                    f6=units,
                    f11=status,
                    f14=observed,
                    f16=reviewer,
                    f18=equipment,
                ),
            )
        )
    specimen = content.specimen or content.container
    if specimen:
        segments.append(_segment("SPM", _fields(4, f1="1", f2="^" + escape(specimen), f4=_coded(SPECIMEN_TYPE))))
    return "\r".join(segments) + "\r"


def _name(value: str, meaning: str) -> tuple[str, str, str]:
    return (value, meaning, "99THYCDS")
