from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from highdicom.sr.utils import find_content_items
from pydicom import Dataset
from pydicom.sr.codedict import codes as std

from cds_daemon.reports import codes
from cds_daemon.reports.result import AIResult
from cds_daemon.reports.sr import build_ai_sr, build_review_sr
from cds_daemon.reports.uids import derived_uid
from tests.support.reports import (
    CLASSES,
    SOURCES,
    assert_valid,
    dsrdump,
    make_result,
    minimal_sc,
    save,
    vl_microscopic,
)

PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
)
DECIDED = datetime(2024, 5, 8, 14, 30, 5, tzinfo=UTC)


@pytest.fixture(scope="module")
def source() -> Dataset:
    return vl_microscopic()


@pytest.fixture(scope="module")
def ai_sr(source: Dataset) -> Dataset:
    return build_ai_sr(source, make_result())


def review(source: Dataset, ai_sr: Dataset, result: AIResult | None = None, **changes: object) -> Dataset:
    kwargs: dict[str, object] = {
        "reviewer_name": "Schmidt^Eva",
        "reviewer_role": "cytopathologist",
        "decision": "change",
        "final_class": "indeterminate",
        "comment": "Follicular lesion of undetermined significance; repeat FNA.",
        "decided_at": DECIDED,
        "sequence": 1,
        "result": result or make_result(),
    }
    kwargs.update(changes)
    return build_review_sr(source, ai_sr, **kwargs)  # type: ignore[arg-type]


def group_of(ds: Dataset, directory: Path) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """Read the saved SR back with highdicom and return its one TID 1501 group."""
    sr = hd.sr.srread(save(ds, directory))
    assert isinstance(sr, hd.sr.ComprehensiveSR)
    groups = sr.content.get_image_measurement_groups()
    assert len(groups) == 1
    return groups[0]


def evaluations(group: hd.sr.MeasurementsAndQualitativeEvaluations, name: pydicom.sr.Code) -> list[str]:
    return [e.value.value for e in group.get_qualitative_evaluations(name=name)]


def texts(group: hd.sr.MeasurementsAndQualitativeEvaluations, name: pydicom.sr.Code) -> list[str]:
    found = find_content_items(group[0], name=name, value_type=hd.sr.ValueTypeValues.TEXT)
    return [item.value for item in found]


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_ai_sr_passes_dciodvfy_and_dsrdump(kind: str, tmp_path: Path) -> None:
    sr = build_ai_sr(SOURCES[kind](), make_result())
    assert_valid(sr, tmp_path, kind)
    dump = dsrdump(sr, tmp_path)
    assert "Thyroid cytology category" in dump
    assert '(21594007,SCT,"Malignant")' in dump  # standard code (CID 6063) where one exists
    assert "(INDETERMINATE,99THYCDS" in dump  # the conformal set's other member: a private one


def test_ai_sr_reads_back_with_highdicom(source: Dataset, ai_sr: Dataset, tmp_path: Path) -> None:
    group = group_of(ai_sr, tmp_path)
    result = make_result()
    assert evaluations(group, codes.CATEGORY) == ["21594007"]
    assert evaluations(group, codes.REFERRED) == [codes.YES.value]
    assert evaluations(group, codes.REFERRAL_REASON) == ["CONFORMAL", "LOW-CONFIDENCE", "Q-BLUR"]
    assert texts(group, codes.REFERRAL_REASON) == list(result.reason_texts)
    assert evaluations(group, codes.CONFORMAL_MEMBER) == ["INDETERMINATE", "21594007"]

    probs = []
    for cls, display in zip(CLASSES, result.display_names, strict=True):
        (m,) = group.get_measurements(name=codes.probability_concept(cls, display))
        assert m.unit.value == "{probability}" and m.unit.scheme_designator == "UCUM"
        probs.append(m.value)
    assert probs == pytest.approx(result.probabilities, abs=1e-9)
    assert sum(probs) == pytest.approx(1.0, abs=1e-6)

    assert group.finding_type == codes.THYROID_NODULE
    assert [s.value for s in group.finding_sites] == [codes.THYROID]
    (image,) = group.source_images
    assert image.referenced_sop_instance_uid == source.SOPInstanceUID
    assert image.referenced_sop_class_uid == source.SOPClassUID
    assert texts(group, std.DCM.AlgorithmName) == ["ThyroidEffi"]
    assert texts(group, std.DCM.AlgorithmVersion) == ["0.1.0+demo"]
    params = texts(group, std.DCM.AlgorithmParameters)
    assert f"bundle_sha256={'9f' * 32}" in params
    assert "premium_probabilities=0.080000,0.200000,0.720000" in params
    assert group.tracking_uid == derived_uid(source.SOPInstanceUID, "0.1.0+demo", "finding")


def test_ai_sr_device_observer(ai_sr: Dataset, tmp_path: Path) -> None:
    sr = hd.sr.srread(save(ai_sr, tmp_path))
    (observer,) = sr.content.get_observer_contexts()
    assert observer.observer_type == std.DCM.Device
    attrs = observer.observer_identifying_attributes
    assert attrs.model_name == "ThyroidEffi"
    assert attrs.manufacturer_name == "Thyroid CDS"
    assert pydicom.uid.UID(attrs.uid).is_valid


def test_ai_sr_header(source: Dataset, ai_sr: Dataset) -> None:
    for keyword in PATIENT_STUDY:
        assert ai_sr[keyword].value == source[keyword].value, keyword
    assert ai_sr.StudyDescription == source.StudyDescription
    assert ai_sr.IssuerOfPatientID == "HOSP"
    assert ai_sr.SpecificCharacterSet == "ISO_IR 100"
    assert ai_sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert ai_sr.Modality == "SR"
    assert ai_sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
    assert ai_sr.SeriesDescription == "AI cytology result (ThyroidEffi 0.1.0+demo) - PRELIMINARY"
    assert (ai_sr.CompletionFlag, ai_sr.VerificationFlag, ai_sr.PreliminaryFlag) == (
        "COMPLETE",
        "UNVERIFIED",
        "PRELIMINARY",
    )
    assert ai_sr.ContentDate and ai_sr.ContentTime
    assert ai_sr.ManufacturerModelName == "ThyroidEffi"
    schemes = {item.CodingSchemeDesignator for item in ai_sr.CodingSchemeIdentificationSequence}
    assert codes.SCHEME in schemes
    (study,) = ai_sr.CurrentRequestedProcedureEvidenceSequence
    assert study.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        source.SOPInstanceUID
    )


def test_ai_sr_uids_are_deterministic(source: Dataset, ai_sr: Dataset) -> None:
    again = build_ai_sr(source, make_result())
    assert again.SOPInstanceUID == ai_sr.SOPInstanceUID
    assert again.SeriesInstanceUID == ai_sr.SeriesInstanceUID
    assert ai_sr.SOPInstanceUID == derived_uid(source.SOPInstanceUID, "0.1.0+demo", "sr")
    newer = build_ai_sr(source, make_result(version="0.2.0"))
    assert newer.SOPInstanceUID != ai_sr.SOPInstanceUID
    assert newer.SeriesInstanceUID != ai_sr.SeriesInstanceUID


def test_minimal_source_gets_empty_type2_attributes(tmp_path: Path) -> None:
    source = minimal_sc()
    sr = build_ai_sr(source, make_result())
    for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "ReferringPhysicianName"):
        assert keyword in sr and not sr[keyword].value, keyword
    assert sr.PatientID == "X1"
    assert sr.StudyInstanceUID == source.StudyInstanceUID


def test_not_referred_result(source: Dataset, tmp_path: Path) -> None:
    result = make_result(predicted="benign", probabilities=(0.97, 0.02, 0.01), referred=False)
    group = group_of(build_ai_sr(source, result), tmp_path)
    assert evaluations(group, codes.CATEGORY) == ["30807003"]
    assert evaluations(group, codes.REFERRED) == [codes.NO.value]
    assert evaluations(group, codes.REFERRAL_REASON) == []
    assert texts(group, codes.REFERRAL_REASON) == []


def test_a_finalised_result_names_the_rule_that_finalised_it(source: Dataset, tmp_path: Path) -> None:
    rule = "site rule 3 (bundle 9f9f9f9f9f9f9f9f): alpha 0.02, delta 0.1, n 175 of 542 reviewed, 0 errors"
    result = replace(
        make_result(predicted="benign", probabilities=(0.97, 0.02, 0.01), referred=False), finalisation_rule=rule
    )
    sr = build_ai_sr(source, result)
    assert_valid(sr, tmp_path)
    assert texts(group_of(sr, tmp_path), codes.FINALISATION_RULE) == [rule]
    # A referred result was not finalised by any rule: no such item, whatever the result carries.
    referred = replace(make_result(), finalisation_rule=rule)
    assert texts(group_of(build_ai_sr(source, referred), tmp_path), codes.FINALISATION_RULE) == []


def test_unknown_reason_still_gets_a_code(source: Dataset, tmp_path: Path) -> None:
    base = make_result()
    result = AIResult(**{**base.__dict__, "reasons": ("stain_unusual",), "reason_texts": ("odd stain",)})
    group = group_of(build_ai_sr(source, result), tmp_path)
    assert evaluations(group, codes.REFERRAL_REASON) == ["STAIN-UNUSUAL"]
    assert texts(group, codes.REFERRAL_REASON) == ["odd stain"]


@pytest.mark.parametrize(
    "change",
    [
        {"predicted": "suspicious"},
        {"probabilities": (0.5, 0.5, 0.5)},
        {"conformal_set": ("atypical",)},
        {"reason_texts": ()},
    ],
)
def test_malformed_result_is_refused(source: Dataset, change: dict[str, object]) -> None:
    result = AIResult(**{**make_result().__dict__, **change})
    with pytest.raises(ValueError):
        build_ai_sr(source, result)


def test_source_without_uids_is_refused() -> None:
    source = vl_microscopic()
    del source.StudyInstanceUID
    with pytest.raises(ValueError, match="StudyInstanceUID"):
        build_ai_sr(source, make_result())


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_review_sr_is_valid_and_verified(kind: str, tmp_path: Path) -> None:
    source = SOURCES[kind]()
    ai = build_ai_sr(source, make_result())
    sr = review(source, ai)
    assert_valid(sr, tmp_path, kind)
    dump = dsrdump(sr, tmp_path)
    assert "VERIFIED" in dump and "Expert review decision" in dump


def test_review_sr_content_and_header(source: Dataset, ai_sr: Dataset, tmp_path: Path) -> None:
    sr = review(source, ai_sr)
    assert (sr.VerificationFlag, sr.CompletionFlag, sr.PreliminaryFlag) == ("VERIFIED", "COMPLETE", "FINAL")
    (verifier,) = sr.VerifyingObserverSequence
    assert verifier.VerifyingObserverName == "Schmidt^Eva"
    assert verifier.VerifyingOrganization == source.InstitutionName
    assert pydicom.valuerep.DT(verifier.VerificationDateTime) == DECIDED
    (study,) = sr.PredecessorDocumentsSequence
    assert study.StudyInstanceUID == ai_sr.StudyInstanceUID
    (series,) = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == ai_sr.SeriesInstanceUID
    (instance,) = series.ReferencedSOPSequence
    assert instance.ReferencedSOPInstanceUID == ai_sr.SOPInstanceUID
    assert instance.ReferencedSOPClassUID == ai_sr.SOPClassUID
    for keyword in PATIENT_STUDY:
        assert sr[keyword].value == source[keyword].value, keyword
    assert sr.SeriesInstanceUID not in (source.SeriesInstanceUID, ai_sr.SeriesInstanceUID)
    assert sr.SOPInstanceUID == derived_uid(source.SOPInstanceUID, "0.1.0+demo", "review-sr:1")
    assert sr.InstanceNumber == 1

    group = group_of(sr, tmp_path)
    assert evaluations(group, codes.REVIEW_DECISION) == ["CHANGE"]
    assert evaluations(group, codes.CATEGORY) == ["INDETERMINATE"]
    assert evaluations(group, codes.AI_CATEGORY) == ["21594007"]
    assert texts(group, codes.COMMENT) == ["Follicular lesion of undetermined significance; repeat FNA."]
    assert group.tracking_uid == group_of(ai_sr, tmp_path).tracking_uid

    read = hd.sr.srread(save(sr, tmp_path))
    (observer,) = read.content.get_observer_contexts()
    assert observer.observer_type == std.DCM.Person
    assert str(observer.observer_identifying_attributes.name) == "Schmidt^Eva"


def test_review_sr_confirm_and_non_diagnostic(source: Dataset, ai_sr: Dataset, tmp_path: Path) -> None:
    confirm = group_of(review(source, ai_sr, decision="confirm", final_class=None, comment=None), tmp_path)
    assert evaluations(confirm, codes.CATEGORY) == ["21594007"]
    assert texts(confirm, codes.COMMENT) == []
    nondx = group_of(review(source, ai_sr, decision="non_diagnostic", final_class=None), tmp_path)
    assert evaluations(nondx, codes.REVIEW_DECISION) == ["NON-DIAGNOSTIC"]
    assert evaluations(nondx, codes.CATEGORY) == []


def test_review_sr_sequence_and_plain_name(source: Dataset, ai_sr: Dataset) -> None:
    first = review(source, ai_sr)
    second = review(source, ai_sr, sequence=2, reviewer_name="Eva Schmidt", reviewer_role="reviewer")
    assert second.SOPInstanceUID != first.SOPInstanceUID
    assert second.SeriesInstanceUID == first.SeriesInstanceUID
    assert second.InstanceNumber == 2
    assert second.VerifyingObserverSequence[0].VerifyingObserverName == "Eva Schmidt^"
    assert review(source, ai_sr).SOPInstanceUID == first.SOPInstanceUID


def test_review_sr_for_a_result_rebuilt_without_ai_class(source: Dataset, ai_sr: Dataset, tmp_path: Path) -> None:
    rebuilt = AIResult(**{**make_result().__dict__, "predicted": "", "probabilities": (0.0, 0.0, 0.0), "cam": None})
    group = group_of(review(source, ai_sr, rebuilt, decision="non_diagnostic", final_class=None), tmp_path)
    assert evaluations(group, codes.AI_CATEGORY) == []
    with pytest.raises(ValueError, match="no AI class"):
        review(source, ai_sr, rebuilt, decision="confirm", final_class=None)


@pytest.mark.parametrize(
    ("decision", "final_class"),
    [
        ("approve", "malignant"),
        ("confirm", "benign"),
        ("change", "malignant"),
        ("change", None),
        ("change", "atypical"),
        ("non_diagnostic", "benign"),
    ],
)
def test_review_sr_refuses_inconsistent_decisions(
    source: Dataset, ai_sr: Dataset, decision: str, final_class: str | None
) -> None:
    with pytest.raises(ValueError):
        review(source, ai_sr, decision=decision, final_class=final_class)


def test_review_sr_refuses_foreign_ai_sr(ai_sr: Dataset) -> None:
    other: Callable[[], Dataset] = vl_microscopic
    with pytest.raises(ValueError, match="another study"):
        review(other(), ai_sr)
    with pytest.raises(ValueError, match="sequence"):
        review(vl_microscopic(), build_ai_sr(minimal_sc(), make_result()), sequence=0)


@pytest.mark.parametrize("make_source", [minimal_sc, vl_microscopic])
def test_review_sr_keeps_non_ascii_text(make_source: Callable[[], Dataset], tmp_path: Path) -> None:
    source = make_source()
    ai = build_ai_sr(source, make_result())
    assert ai.get("SpecificCharacterSet") == source.get("SpecificCharacterSet")  # ASCII only: unchanged
    comment = "Follikuläre Läsion – Bethesda III ✓"
    sr = review(source, ai, reviewer_name="Wójcik^Łukasz", comment=comment)
    assert sr.SpecificCharacterSet == "ISO_IR 192"
    back = pydicom.dcmread(save(sr, tmp_path))
    assert back.VerifyingObserverSequence[0].VerifyingObserverName == "Wójcik^Łukasz"
    assert back.PatientName == source.PatientName
    assert texts(group_of(sr, tmp_path), codes.COMMENT) == [comment]
    assert_valid(sr, tmp_path, "minimal-sc")
