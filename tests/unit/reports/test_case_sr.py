"""The case-level SR: worst category with its highest image probability, every image and AI SR referenced,
a later version naming the earlier one as predecessor; valid for dciodvfy and read back with highdicom."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import highdicom as hd
import pydicom
from highdicom.sr.utils import find_content_items

from cds_daemon.common.vocabulary import ReferralReason
from cds_daemon.reports import codes
from cds_daemon.reports.case_sr import RULE, CaseMember, build_case_sr, case_category
from cds_daemon.reports.uids import case_uid, derived_uid
from tests.support.reports import assert_valid, dsrdump, make_result, save, vl_microscopic_with_specimen

KEY = "specimen:FNA-2024-0815-1"


def _members() -> list[CaseMember]:
    slide = vl_microscopic_with_specimen()
    members = []
    for predicted, probs, referred in (
        ("benign", (0.93, 0.05, 0.02), False),
        ("malignant", (0.05, 0.25, 0.70), True),
        ("malignant", (0.02, 0.10, 0.88), False),
    ):
        header = slide.copy()
        header.SOPInstanceUID = pydicom.uid.generate_uid()
        members.append(CaseMember(header, make_result(predicted=predicted, probabilities=probs, referred=referred)))
    return members


def test_worst_category_with_its_highest_probability() -> None:
    members = _members()
    assert case_category(members) == ("malignant", 0.88)
    assert case_category(members[:1]) == ("benign", 0.93)


def test_case_sr_references_every_image_and_ai_sr(tmp_path: Path) -> None:
    members = _members()
    sr = build_case_sr(KEY, members, 1)
    assert_valid(sr, tmp_path)
    dump = dsrdump(sr, tmp_path)
    assert "AI result of one image of the case" in dump and "How the case result is made" in dump
    read = hd.sr.srread(save(sr, tmp_path))
    (rule,) = find_content_items(read, name=codes.AGGREGATION_RULE, recursive=True)
    assert rule.TextValue == RULE
    referenced = {item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in find_content_items(
        read, name=codes.IMAGE_RESULT, recursive=True
    )}  # fmt: skip
    version = members[0].result.model_version
    assert referenced == {derived_uid(m.header.SOPInstanceUID, version, "sr") for m in members}
    categories = [i.value for i in find_content_items(read, name=codes.CATEGORY, recursive=True)]
    assert [c.value for c in categories] == ["21594007"]
    referred = [i.value for i in find_content_items(read, name=codes.REFERRED, recursive=True)]
    assert [r.value for r in referred] == [codes.YES.value]
    (context,) = read.content.get_subject_contexts()
    assert context.subject_class_specific_context.specimen_identifier == "FNA-2024-0815-1"
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in read.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert {m.header.SOPInstanceUID for m in members} <= evidence
    assert read.SeriesNumber == 905 and read.CompletionFlag == "COMPLETE" and read.VerificationFlag == "UNVERIFIED"


def test_a_late_image_makes_the_next_version_with_the_first_as_predecessor(tmp_path: Path) -> None:
    members = _members()
    first = build_case_sr(KEY, members[:2], 1)
    second = build_case_sr(KEY, members, 2)
    assert_valid(second, tmp_path)
    version = members[0].result.model_version
    assert first.SOPInstanceUID == case_uid(KEY, version, "case-sr:1")
    assert second.SOPInstanceUID == case_uid(KEY, version, "case-sr:2")
    assert first.SeriesInstanceUID == second.SeriesInstanceUID and second.InstanceNumber == 2
    (predecessor,) = second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert predecessor.ReferencedSOPInstanceUID == first.SOPInstanceUID


def test_a_case_with_no_analysed_image_is_referred_without_a_category(tmp_path: Path) -> None:
    member = _members()[0]
    failed = replace(member.result, predicted="", reasons=(ReferralReason.NOT_ANALYSED,), reason_texts=("x",))
    sr = build_case_sr(KEY, [CaseMember(member.header, failed)], 1)
    assert_valid(sr, tmp_path)
    read = hd.sr.srread(save(sr, tmp_path))
    assert find_content_items(read, name=codes.CATEGORY, recursive=True) == []
    referred = [i.value for i in find_content_items(read, name=codes.REFERRED, recursive=True)]
    assert [r.value for r in referred] == [codes.YES.value]
