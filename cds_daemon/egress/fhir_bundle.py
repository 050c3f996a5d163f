"""An SR's result as a FHIR transaction (R4B, ``fhir.resources``): DiagnosticReport, Observation, Device,
Patient and Provenance, AI-asserted results labelled as the AI Transparency on FHIR IG does.

The same document the HL7 message renders (``sr_content``), so the same codes: SNOMED CT and DICOM where
standard, the private scheme 99THYCDS as a 2.25 OID (``PRIVATE_SYSTEM``). The report and observation are
written with conditional updates on the SR's UID, the device and patient with conditional creates and the
provenance under an ID derived from the SR: a resend changes nothing.
"""

from __future__ import annotations

import datetime
import hashlib
import uuid
from typing import Any

from fhir.resources.R4B.bundle import Bundle

from cds_daemon.egress.hl7_message import OrderNumbers, result_status
from cds_daemon.egress.sr_content import Coded, SRContent

#: 99THYCDS as a FHIR code system: a 2.25 OID (UUID-derived, PS3.5 B.2), unique without registration.
PRIVATE_SYSTEM = "urn:oid:2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, "thyroid-cds:99THYCDS").int)
SYSTEMS = {
    "SCT": "http://snomed.info/sct",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "UCUM": "http://unitsofmeasure.org",
    "99THYCDS": PRIVATE_SYSTEM,
}
DICOM_UID = "urn:dicom:uid"
MODEL_SYSTEM = PRIVATE_SYSTEM + ".1"  # the model bundle's SHA-256, as the Device's identifier
AIAST = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "AIAST",
    "display": "Artificial Intelligence asserted",
}
STATUS = {"P": "preliminary", "F": "final", "C": "corrected"}
SERVICE = {"system": PRIVATE_SYSTEM, "code": "THYFNA-AI", "display": "Thyroid FNA cytology, AI classification"}
CATEGORY = {"system": PRIVATE_SYSTEM, "code": "CATEGORY", "display": "Thyroid cytology category"}
PATHOLOGY = {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "SP", "display": "Surgical Pathology"}


def _coding(c: Coded) -> dict[str, str]:
    return {
        "system": SYSTEMS.get(c.scheme, f"urn:dicom:coding-scheme:{c.scheme}"),
        "code": c.value,
        "display": c.meaning,
    }


def _concept(c: Coded) -> dict[str, Any]:
    return {"coding": [_coding(c)], "text": c.meaning}


def _urn(sr_uid: str, what: str) -> str:
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_OID, f'{sr_uid}:{what}')}"


def _when(dicom_datetime: str, fallback: datetime.datetime) -> str:
    try:
        local = datetime.datetime.strptime(dicom_datetime[:14], "%Y%m%d%H%M%S").astimezone()
    except ValueError:
        local = fallback
    return local.isoformat(timespec="seconds")


def _person(dicom_name: str) -> dict[str, Any]:
    """DICOM PN (family^given^middle...) as a FHIR HumanName."""
    parts = [*dicom_name.split("=")[0].split("^"), "", "", ""]
    name: dict[str, Any] = {}
    if parts[0]:
        name["family"] = parts[0]
    given = [g for g in f"{parts[1]} {parts[2]}".split(" ") if g]
    if given:
        name["given"] = given
    return name


def _identifier(uid: str) -> dict[str, str]:
    return {"system": DICOM_UID, "value": f"urn:oid:{uid}"}


def transaction(content: SRContent, *, scope: str, order: OrderNumbers | None, now: datetime.datetime) -> Bundle:
    """The transaction Bundle for one result document (validated by ``fhir.resources`` as it is made)."""
    uid = content.sop_instance_uid
    status = STATUS[result_status(content)]
    issued = now.astimezone().isoformat(timespec="seconds")
    effective = _when(content.content_datetime, now.astimezone())
    ai = not content.verified
    meta = {"security": [AIAST]} if ai else None
    patient_url, device_url = _urn(uid, "patient"), _urn(uid, "device")
    report_url, observation_url = _urn(uid, "report"), _urn(uid, "observation")
    entries: list[dict[str, Any]] = []

    patient: dict[str, Any] = {"resourceType": "Patient", "identifier": [{"value": content.patient_id or "unknown"}]}
    if content.patient_id_issuer:
        patient["identifier"][0]["assigner"] = {"display": content.patient_id_issuer}
    if content.patient_name:
        patient["name"] = [_person(content.patient_name)]
    gender = {"F": "female", "M": "male", "O": "other"}.get(content.sex)
    if gender:
        patient["gender"] = gender
    if len(content.birth_date) == 8 and content.birth_date.isdigit():
        b = content.birth_date
        patient["birthDate"] = f"{b[:4]}-{b[4:6]}-{b[6:]}"
    entries.append(
        {
            "fullUrl": patient_url,
            "resource": patient,
            "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={content.patient_id}"},
        }
    )

    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "identifier": [_identifier(uid)],
        "status": status,
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}
        ],
        "code": {"coding": [CATEGORY], "text": CATEGORY["display"]},
        "subject": {"reference": patient_url},
        "effectiveDateTime": effective,
        "issued": issued,
    }
    if meta:
        observation["meta"] = meta
    if content.category is not None:
        observation["valueCodeableConcept"] = _concept(content.category)
    else:
        observation["dataAbsentReason"] = {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                    "code": "error",
                    "display": "Error",
                }
            ],
            "text": "not analysed by the AI",
        }
    components: list[dict[str, Any]] = []
    for concept, p, _unit in content.probabilities:
        quantity = {"value": round(p, 6), "unit": "probability", "system": SYSTEMS["UCUM"], "code": "{probability}"}
        components.append({"code": _concept(concept), "valueQuantity": quantity})
    for name, value in (
        ("REFERRED", content.referred),
        ("AI-CATEGORY", content.ai_category),
        ("REVIEW-DECISION", content.decision),
    ):
        if value is not None:
            components.append(
                {
                    "code": _concept(Coded(name, "99THYCDS", name.replace("-", " ").capitalize())),
                    "valueCodeableConcept": _concept(value),
                }
            )
    components += [
        {
            "code": _concept(Coded("REFERRAL-REASON", "99THYCDS", "Reason for expert review")),
            "valueCodeableConcept": _concept(r),
        }
        for r in content.reasons
    ]
    if components:
        observation["component"] = components
    notes = [text for _, text in content.texts]
    if notes:
        observation["note"] = [{"text": t} for t in notes]
    if ai:
        observation["device"] = {"reference": device_url}
    elif content.verifier:
        observation["performer"] = [{"display": content.verifier.replace("^", " ").strip()}]
    entries.append(
        {
            "fullUrl": observation_url,
            "resource": observation,
            "request": {"method": "PUT", "url": f"Observation?identifier={DICOM_UID}|urn:oid:{uid}"},
        }
    )

    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "identifier": [_identifier(uid)],
        "status": status,
        "category": [{"coding": [PATHOLOGY]}],
        "code": {"coding": [SERVICE], "text": SERVICE["display"]},
        "subject": {"reference": patient_url},
        "effectiveDateTime": effective,
        "issued": issued,
        "result": [{"reference": observation_url}],
    }
    if meta:
        report["meta"] = meta
    if content.category is not None:
        report["conclusionCode"] = [_concept(content.category)]
    comment = [text for name, text in content.texts if name.value == "121106"]
    if comment:
        report["conclusion"] = comment[0]
    if order is not None and (order.placer or order.filler):
        report["basedOn"] = [{"type": "ServiceRequest", "identifier": {"value": order.placer or order.filler}}]
    if content.verified and content.verifier:
        report["resultsInterpreter"] = [{"display": content.verifier.replace("^", " ").strip()}]
    entries.append(
        {
            "fullUrl": report_url,
            "resource": report,
            "request": {"method": "PUT", "url": f"DiagnosticReport?identifier={DICOM_UID}|urn:oid:{uid}"},
        }
    )

    sha = content.algorithm.get("bundle_sha256", "")
    if ai:
        device = {
            "resourceType": "Device",
            "identifier": [{"system": MODEL_SYSTEM, "value": sha or "unknown"}],
            "deviceName": [{"name": content.algorithm.get("111001", "AI model"), "type": "model-name"}],
            "version": [{"value": content.algorithm.get("111003", "")}] if content.algorithm.get("111003") else None,
            "type": {"text": "AI model (thyroid FNA cytology classification)"},
        }
        entries.append(
            {
                "fullUrl": device_url,
                "resource": {k: v for k, v in device.items() if v is not None},
                "request": {"method": "POST", "url": "Device", "ifNoneExist": f"identifier={MODEL_SYSTEM}|{sha}"},
            }
        )
    agent_type = "author" if ai else "verifier"
    who = {"reference": device_url} if ai else {"display": content.verifier.replace("^", " ").strip() or "reviewer"}
    provenance: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": "cds-" + hashlib.sha256(f"provenance:{uid}".encode()).hexdigest()[:40],
        "target": [{"reference": report_url}, {"reference": observation_url}],
        "recorded": issued,
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                            "code": agent_type,
                        }
                    ]
                },
                "who": who,
            }
        ],
        "entity": [{"role": "source", "what": {"identifier": _identifier(content.predecessor_uid or uid)}}],
    }
    if meta:
        provenance["meta"] = meta
    entries.append(
        {
            "fullUrl": _urn(uid, "provenance"),
            "resource": provenance,
            "request": {"method": "PUT", "url": f"Provenance/{provenance['id']}"},
        }
    )
    return Bundle.model_validate({"resourceType": "Bundle", "type": "transaction", "entry": entries})
