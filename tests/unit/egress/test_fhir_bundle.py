"""The FHIR transaction of a result: valid R4B (fhir.resources), AI-asserted results labelled, statuses from
the SR, conditional writes that make a resend change nothing, a not-analysed image saying so."""

from __future__ import annotations

import datetime

from fhir.resources.R4B.bundle import Bundle

from cds_daemon.egress.fhir_bundle import DICOM_UID, PRIVATE_SYSTEM, transaction
from cds_daemon.egress.hl7_message import OrderNumbers
from cds_daemon.egress.sr_content import Coded, SRContent
from tests.support.results import sr_content

NOW = datetime.datetime(2026, 12, 2, 10, 30, 0).astimezone()
MALIGNANT = Coded("21594007", "SCT", "Malignant")


def _content(**kw: object) -> SRContent:
    return sr_content(sop_instance_uid="2.25.7", **kw)


def _of(bundle: Bundle, kind: str) -> list[object]:
    return [e for e in bundle.entry or [] if e.resource.get_resource_type() == kind]


def test_an_ai_result_is_labelled_ai_asserted_and_written_idempotently() -> None:
    content = _content(
        category=MALIGNANT,
        probabilities=[(Coded("P-MALIGNANT", "99THYCDS", "Probability of Malignant"), 0.9, None)],
        algorithm={"111001": "thyroideffi", "111003": "1.0", "bundle_sha256": "ab" * 32},
    )
    bundle = transaction(content, scope="image", order=OrderNumbers("PL-1", "FI-1"), now=NOW)
    again = Bundle.model_validate_json(bundle.model_dump_json(exclude_none=True))  # what the server parses
    (report,) = _of(again, "DiagnosticReport")
    assert report.resource.status == "preliminary" and report.resource.meta.security[0].code == "AIAST"  # type: ignore[attr-defined]
    assert report.request.url == f"DiagnosticReport?identifier={DICOM_UID}|urn:oid:2.25.7"  # type: ignore[attr-defined]
    assert report.resource.basedOn[0].identifier.value == "PL-1"  # type: ignore[attr-defined]
    (observation,) = _of(again, "Observation")
    value = observation.resource.valueCodeableConcept.coding[0]  # type: ignore[attr-defined]
    assert (value.system, value.code) == ("http://snomed.info/sct", "21594007")
    assert observation.resource.component[0].valueQuantity.code == "{probability}"  # type: ignore[attr-defined]
    assert observation.resource.component[0].code.coding[0].system == PRIVATE_SYSTEM  # type: ignore[attr-defined]
    (device,) = _of(again, "Device")
    assert device.resource.identifier[0].value == "ab" * 32  # type: ignore[attr-defined]
    (provenance,) = _of(again, "Provenance")
    assert provenance.request.method == "PUT"  # type: ignore[attr-defined]
    assert transaction(content, scope="image", order=None, now=NOW).entry[0].fullUrl == bundle.entry[0].fullUrl


def test_a_review_is_final_or_corrected_and_names_its_reviewer() -> None:
    change = Coded("CHANGE", "99THYCDS", "AI category changed")
    content = _content(
        verified=True,
        verifier="Smith^Ana",
        decision=change,
        category=Coded("30807003", "SCT", "Benign"),
        ai_category=MALIGNANT,
        predecessor_uid="2.25.6",
    )
    bundle = transaction(content, scope="review", order=None, now=NOW)
    (report,) = _of(bundle, "DiagnosticReport")
    assert report.resource.status == "corrected" and report.resource.meta is None  # type: ignore[attr-defined]
    assert not _of(bundle, "Device")
    (provenance,) = _of(bundle, "Provenance")
    agent = provenance.resource.agent[0]  # type: ignore[attr-defined]
    assert agent.type.coding[0].code == "verifier" and agent.who.display == "Smith Ana"
    assert provenance.resource.entity[0].what.identifier.value == "urn:oid:2.25.6"  # type: ignore[attr-defined]


def test_a_not_analysed_image_has_no_value_and_says_why() -> None:
    reason = Coded("REFERRAL-REASON", "99THYCDS", "Reason for expert review")
    bundle = transaction(_content(texts=[(reason, "the image cannot be decoded")]), scope="image", order=None, now=NOW)
    (observation,) = _of(bundle, "Observation")
    assert observation.resource.valueCodeableConcept is None  # type: ignore[attr-defined]
    assert observation.resource.dataAbsentReason.coding[0].code == "error"  # type: ignore[attr-defined]
    assert observation.resource.note[0].text == "the image cannot be decoded"  # type: ignore[attr-defined]
