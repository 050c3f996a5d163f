"""What makes a case: which images a cytopathologist reviews, and signs out, together.

A cytopathologist signs out a specimen, not one photograph. The key is decided once, at ingest, from the
image's header, and kept with the image: the specimen (Specimen Identifier of the Specimen module, else the
slide's Container Identifier) when the camera software filled it, else the accession number (the order the
images were taken for), else the study.
"""

from __future__ import annotations


def case_key(
    *,
    accession_number: str | None,
    study_instance_uid: str | None,
    sop_instance_uid: str,
    specimen_identifier: str | None = None,
    container_identifier: str | None = None,
) -> str:
    if specimen_identifier:
        return f"specimen:{specimen_identifier}"
    if container_identifier:
        return f"container:{container_identifier}"
    if accession_number:
        return f"accession:{accession_number}"
    return f"study:{study_instance_uid or sop_instance_uid}"
