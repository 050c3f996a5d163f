"""What makes a case: which images a cytopathologist reviews, and signs out, together.

The key is decided once, at ingest, from the image's header, and kept with the image: the accession
number when there is one (the order the images were taken for), else the study.
"""

from __future__ import annotations


def case_key(*, accession_number: str | None, study_instance_uid: str | None, sop_instance_uid: str) -> str:
    if accession_number:
        return f"accession:{accession_number}"
    return f"study:{study_instance_uid or sop_instance_uid}"
