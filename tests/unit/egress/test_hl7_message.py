"""The HL7 result message: escaping, control IDs, result status, and 2.5.1 validity (hl7apy, strict)."""

from __future__ import annotations

import datetime

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from cds_daemon.common.config import Destination
from cds_daemon.egress.hl7_message import OrderNumbers, control_id, escape, oru_r01, result_status
from cds_daemon.egress.sr_content import Coded, SRContent
from tests.support.results import sr_content

LIS = Destination(name="lis", kind="hl7", host="127.0.0.1", port=2575)
NOW = datetime.datetime(2026, 12, 2, 10, 30, 0)
MALIGNANT = Coded("21594007", "SCT", "Malignant")
BENIGN = Coded("30807003", "SCT", "Benign")


def _content(**kw: object) -> SRContent:
    return sr_content(**kw)


def _valid(text: str) -> object:
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    message.validate()
    return message


def test_values_are_escaped_and_text_outside_ascii_is_kept() -> None:
    assert escape("a|b^c~d&e\\f") == "a\\F\\b\\S\\c\\R\\d\\T\\e\\E\\f"
    assert escape("line 1\nline 2\x07") == "line 1\\.br\\line 2"
    assert escape("Müller, Łukasz") == "Müller, Łukasz"


def test_the_control_id_is_short_and_the_same_for_every_send() -> None:
    assert control_id("2.25.1") == control_id("2.25.1") != control_id("2.25.2")
    assert len(control_id("2.25." + "9" * 60)) <= 20


@pytest.mark.parametrize(
    ("verified", "decision", "category", "expected"),
    [
        (False, None, MALIGNANT, "P"),
        (True, Coded("CONFIRM", "99THYCDS", "AI category confirmed"), MALIGNANT, "F"),
        (True, Coded("CHANGE", "99THYCDS", "AI category changed"), BENIGN, "C"),
    ],
)
def test_the_result_status(verified: bool, decision: Coded | None, category: Coded, expected: str) -> None:
    content = _content(verified=verified, decision=decision, category=category, ai_category=MALIGNANT)
    assert result_status(content) == expected


@pytest.mark.parametrize("scope", ["image", "slide", "case"])
def test_an_ai_result_is_a_valid_251_oru(scope: str) -> None:
    content = _content(
        category=MALIGNANT,
        referred=Coded("373066001", "SCT", "Yes"),
        reasons=[Coded("LOW-CONFIDENCE", "99THYCDS", "Calibrated confidence below threshold")],
        probabilities=[(Coded("P-MALIGNANT", "99THYCDS", "Probability of Malignant"), 0.91, None)],
        algorithm={"111001": "thyroideffi", "111003": "1.0", "bundle_sha256": "ab" * 32},
    )
    text = oru_r01(content, LIS, scope=scope, order=OrderNumbers("PL-1", "FI-1"), now=NOW)
    message = _valid(text)
    assert "ACC\\F\\1" not in text and "|PL-1|FI-1|" in text  # the LIS's own numbers win over the accession
    assert "O'Brien^Mary Ann^^PhD^Dr" in text  # DICOM PN prefix/suffix in XPN order
    assert message.msh.msh_12.value == "2.5.1"  # type: ignore[attr-defined]


def test_a_not_analysed_image_says_so() -> None:
    content = _content(
        referred=Coded("373066001", "SCT", "Yes"),
        reasons=[Coded("NOT-ANALYSED", "99THYCDS", "Not analysed")],
        texts=[(Coded("REFERRAL-REASON", "99THYCDS", "Reason for expert review"), "the image cannot be decoded")],
    )
    text = oru_r01(content, LIS, scope="image", now=NOW)
    _valid(text)
    assert "ANALYSED^Analysed by the AI^99THYCDS||373067005^No^SCT" in text
    assert "the image cannot be decoded" in text and "|ACC\\F\\1|" in text


def test_a_header_without_patient_name_or_id_still_makes_a_valid_message() -> None:
    text = oru_r01(_content(patient_name="", patient_id="", category=MALIGNANT), LIS, scope="image", now=NOW)
    _valid(text)
    assert '\rPID|1||""||""' in text
