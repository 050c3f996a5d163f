"""A result document as the HL7 and FHIR builders read it (``egress.sr_content.SRContent``), for unit tests."""

from __future__ import annotations

from cds_daemon.egress.sr_content import SRContent


def sr_content(**fields: object) -> SRContent:
    """An AI result's SR content with a patient, an accession and a specimen; ``fields`` override."""
    content = SRContent(
        sop_instance_uid="2.25.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33",
        study_instance_uid="1.2.3",
        verified=False,
        content_datetime="20261202102900",
        patient_id="P1",
        patient_name="O'Brien^Mary Ann^^Dr^PhD",
        birth_date="19700101",
        sex="F",
        accession="ACC|1",
        specimen="FNA-A",
    )
    for key, value in fields.items():
        setattr(content, key, value)
    return content
