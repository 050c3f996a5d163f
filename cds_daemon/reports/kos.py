"""Key Object Selection "For Physician Review" (DCM 128201, CID 7010) for a referred case.

It flags the case in the PACS worklist of any viewer that understands KOS: it selects the
source image, the AI SR and the heatmap, and says in its description why the case was referred.
"""

from __future__ import annotations

from typing import Any

import highdicom as hd
from pydicom import Dataset

from cds_daemon.common.vocabulary import SERIES_NUMBER, OutputKind
from cds_daemon.reports import codes
from cds_daemon.reports.observer import device_observer
from cds_daemon.reports.result import AIResult
from cds_daemon.reports.source import (
    DEFAULT_MANUFACTURER,
    character_set,
    contributing_equipment,
    copy_patient_study,
    equipment,
    evidence_of,
    now,
    series_description,
)
from cds_daemon.reports.template import Case, Templates, dated
from cds_daemon.reports.uids import derived_uid


def review_description(result: AIResult) -> str:
    """The Key Object Description: the AI's call and every referral reason, one per line."""
    p = result.probability(result.predicted)
    lines = [
        f"AI result ({result.model_label}): {result.display_name(result.predicted)}, p = {p:.2f}. "
        "Preliminary, not verified.",
    ]
    if result.reason_texts:
        lines.append("Referred for physician review because:")
        lines.extend(f"- {text}" for text in result.reason_texts)
    else:
        lines.append("Selected for physician review.")
    return "\n".join(lines)


def build_review_kos(
    source: Dataset,
    result: AIResult,
    ai_sr: Dataset,
    heatmap: Dataset | None,
    *,
    manufacturer: str = DEFAULT_MANUFACTURER,
    templates: Templates | None = None,
) -> Dataset:
    """KOS in the source study selecting the source image, the AI SR and (if made) the heatmap.

    With ``templates``, the document around the content comes from a checked template (``reports.template``).
    """
    result.validate()
    header = evidence_of(source)
    selected = [header, ai_sr] + ([heatmap] if heatmap is not None else [])
    for ds in selected[1:]:
        if ds.StudyInstanceUID != header.StudyInstanceUID:
            raise ValueError(f"{ds.SOPInstanceUID} belongs to another study than the source image")
    content = hd.ko.KeyObjectSelection(
        document_title=codes.FOR_PHYSICIAN_REVIEW,
        referenced_objects=selected,
        observer_device_context=device_observer(result, manufacturer),
        description=review_description(result),
    )
    created = now()
    fields: dict[str, Any] = {
        "SOPInstanceUID": derived_uid(header.SOPInstanceUID, result.model_version, "kos"),
        "SeriesInstanceUID": derived_uid(header.SOPInstanceUID, result.model_version, "kos-series"),
        "SeriesDescription": series_description("AI referral", result, "For Physician Review"),
        "SpecificCharacterSet": character_set(header, result, manufacturer),
    }

    def build() -> Dataset:
        kos = hd.ko.KeyObjectSelectionDocument(
            evidence=selected,
            content=content,
            series_instance_uid=fields["SeriesInstanceUID"],
            series_number=SERIES_NUMBER[OutputKind.KOS],
            sop_instance_uid=fields["SOPInstanceUID"],
            instance_number=1,
            series_description=fields["SeriesDescription"],
            specific_character_set=fields["SpecificCharacterSet"],
            content_date=created.date(),
            content_time=created.time(),
            series_date=created.date(),
            series_time=created.time(),
            **equipment(result, manufacturer),
        )
        copy_patient_study(kos, header)
        kos.ContributingEquipmentSequence = [contributing_equipment(result, manufacturer)]
        return kos

    if templates is None:
        return build()
    key = ("kos", result.model_sha256, result.model_version, manufacturer, header.SOPClassUID)
    return templates.make(key, Case(header, content[0], selected, {**fields, **dated(created)}), build)
