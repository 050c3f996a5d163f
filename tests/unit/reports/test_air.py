"""What IHE AI Results (AIR) expects of the result objects, checked on read-back with highdicom and dciodvfy:
the specimen as subject (TID 1009), the model as Contributing Equipment (CID 7005) with a Device UID per
trained model,
and the KOS title from CID 7010 with a text that says why."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import highdicom as hd
import pydicom
from highdicom.sr.utils import find_content_items
from pydicom import Dataset
from pydicom.sr.codedict import codes as std

from cds_daemon.reports import codes
from cds_daemon.reports.heatmap import build_heatmap_sc
from cds_daemon.reports.kos import build_review_kos
from cds_daemon.reports.sr import build_ai_sr
from cds_daemon.reports.uids import device_uid
from tests.support.reports import (
    assert_valid,
    make_result,
    pixels_of,
    save,
    vl_microscopic,
    vl_microscopic_with_specimen,
)

CID_7010 = {"113000", "113001", "113002", "113003", "113004", "113005", "113006", "113007", "113008", "113009",
            "113010", "113013", "113018", "113020", "113021", "113030", "113031", "113032", "113033", "113034",
            "113035", "113036", "113037", "113038", "113039", "128201", "128202", "128203"}  # fmt: skip


def _objects(source: Dataset) -> tuple[Dataset, Dataset, Dataset]:
    result = make_result()
    sr = build_ai_sr(source, result)
    sc = build_heatmap_sc(source, pixels_of(source), result)
    return sr, sc, build_review_kos(source, result, sr, sc)


def test_the_specimen_is_the_subject_of_the_ai_sr(tmp_path: Path) -> None:
    source = vl_microscopic_with_specimen()
    sr, sc, kos = _objects(source)
    for ds in (sr, sc, kos):
        assert_valid(ds, tmp_path)
    read = hd.sr.srread(save(sr, tmp_path))
    (context,) = read.content.get_subject_contexts()
    assert context.subject_class == codes.SPECIMEN
    specimen = context.subject_class_specific_context
    assert specimen.container_identifier == "SLIDE-2024-0815-A"
    assert specimen.specimen_identifier == "FNA-2024-0815-1"
    assert specimen.specimen_uid == source.SpecimenDescriptionSequence[0].SpecimenUID


def test_without_a_specimen_module_the_subject_stays_the_patient(tmp_path: Path) -> None:
    read = hd.sr.srread(save(build_ai_sr(vl_microscopic(), make_result()), tmp_path))
    assert read.content.get_subject_contexts() == []


def test_every_result_object_names_the_model_as_contributing_equipment(tmp_path: Path) -> None:
    result = make_result()
    expected_uid = device_uid("Thyroid CDS", result.model_name, result.model_sha256)
    for ds in _objects(vl_microscopic_with_specimen()):
        (item,) = pydicom.dcmread(save(ds, tmp_path)).ContributingEquipmentSequence
        purpose = item.PurposeOfReferenceCodeSequence[0]
        assert (purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning) == (
            "109102",
            "DCM",
            "Processing Equipment",
        )
        assert item.Manufacturer == "Thyroid CDS" and item.ManufacturerModelName == result.model_name
        assert result.model_version in list(item.SoftwareVersions)
        assert any(str(v).startswith("cds-daemon ") for v in item.SoftwareVersions)
        assert item.DeviceSerialNumber == result.model_sha256  # the trained model, not just its name
    observer = hd.sr.srread(save(build_ai_sr(vl_microscopic(), result), tmp_path)).content.get_observer_contexts()
    assert observer[0].observer_identifying_attributes.uid == expected_uid  # TID 1004: the same device
    retrained = replace(result, model_sha256="0e" * 32)
    sr = build_ai_sr(vl_microscopic(), retrained)
    read = hd.sr.srread(save(sr, tmp_path)).content.get_observer_contexts()
    assert read[0].observer_identifying_attributes.uid != expected_uid  # a new model, a new Device UID


def test_kos_title_is_from_cid_7010_with_a_text_that_says_why(tmp_path: Path) -> None:
    *_, kos = _objects(vl_microscopic_with_specimen())
    title = kos.ConceptNameCodeSequence[0]
    assert title.CodingSchemeDesignator == "DCM" and title.CodeValue in CID_7010
    (description,) = find_content_items(kos, name=std.DCM.KeyObjectDescription)
    assert "referred" in description.TextValue.lower() or "review" in description.TextValue.lower()
