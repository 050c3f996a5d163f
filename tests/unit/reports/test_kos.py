from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from highdicom.sr.utils import find_content_items
from pydicom import Dataset
from pydicom.sr.codedict import codes as std

from cds_daemon.reports.heatmap import build_heatmap_sc
from cds_daemon.reports.kos import build_review_kos
from cds_daemon.reports.sr import build_ai_sr
from cds_daemon.reports.uids import derived_uid
from tests.support.reports import SOURCES, assert_valid, make_result, pixels_of, save, vl_microscopic


def outputs(source: Dataset) -> tuple[Dataset, Dataset]:
    result = make_result()
    return build_ai_sr(source, result), build_heatmap_sc(source, pixels_of(source), result)


def referenced_uids(kos: Dataset) -> list[str]:
    items = find_content_items(kos, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    return [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in items if "ReferencedSOPSequence" in i]


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_kos_passes_dciodvfy(kind: str, tmp_path: Path) -> None:
    source = SOURCES[kind]()
    sr, sc = outputs(source)
    assert_valid(build_review_kos(source, make_result(), sr, sc), tmp_path, kind)


def test_kos_title_references_and_reasons(tmp_path: Path) -> None:
    source = vl_microscopic()
    sr, sc = outputs(source)
    kos = build_review_kos(source, make_result(), sr, sc)
    title = kos.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == (
        "128201",
        "DCM",
        "For Physician Review",
    )
    assert kos.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.59"
    assert kos.Modality == "KO"
    assert referenced_uids(kos) == [source.SOPInstanceUID, sr.SOPInstanceUID, sc.SOPInstanceUID]
    (description,) = find_content_items(kos, name=std.DCM.KeyObjectDescription)
    for text in make_result().reason_texts:
        assert text in description.TextValue
    assert "Malignant (Bethesda VI), p = 0.65" in description.TextValue

    read = hd.ko.KeyObjectSelectionDocument.from_dataset(pydicom.dcmread(save(kos, tmp_path)))
    for ds in (source, sr, sc):
        assert read.resolve_reference(ds.SOPInstanceUID) == (
            ds.StudyInstanceUID,
            ds.SeriesInstanceUID,
            ds.SOPInstanceUID,
        )
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "AccessionNumber", "StudyID"):
        assert kos[keyword].value == source[keyword].value, keyword
    assert kos.SeriesInstanceUID == derived_uid(source.SOPInstanceUID, "0.1.0+demo", "kos-series")
    assert kos.SOPInstanceUID == derived_uid(source.SOPInstanceUID, "0.1.0+demo", "kos")
    assert build_review_kos(source, make_result(), sr, sc).SOPInstanceUID == kos.SOPInstanceUID


def test_kos_without_heatmap(tmp_path: Path) -> None:
    source = vl_microscopic()
    sr, _ = outputs(source)
    kos = build_review_kos(source, make_result(), sr, None)
    assert referenced_uids(kos) == [source.SOPInstanceUID, sr.SOPInstanceUID]
    assert_valid(kos, tmp_path)


def test_kos_refuses_objects_of_another_study() -> None:
    source = vl_microscopic()
    foreign_sr, _ = outputs(vl_microscopic())
    with pytest.raises(ValueError, match="another study"):
        build_review_kos(source, make_result(), foreign_sr, None)
