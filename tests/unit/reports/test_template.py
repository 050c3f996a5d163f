"""SR and KOS from templates are the documents highdicom builds, on every kind of source and result."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from cds_daemon.reports import kos as kos_module
from cds_daemon.reports import sr as sr_module
from cds_daemon.reports.files import encode
from cds_daemon.reports.kos import build_review_kos
from cds_daemon.reports.result import AIResult
from cds_daemon.reports.sr import build_ai_sr
from cds_daemon.reports.template import CREATION, Case, Templates, differences
from tests.support.reports import SOURCES, assert_valid, make_result, vl_microscopic_with_specimen

FIXED = datetime.datetime(2026, 12, 2, 9, 30, 15)


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both paths date their documents by ``now()``: the same instant, so only the template path differs."""
    monkeypatch.setattr(sr_module, "now", lambda: FIXED)
    monkeypatch.setattr(kos_module, "now", lambda: FIXED)


def results() -> dict[str, AIResult]:
    referred = make_result()
    return {
        "referred": referred,
        "finalised": make_result(referred=False, predicted="benign", probabilities=(0.9, 0.06, 0.04)),
        "other-version": make_result(version="0.2.0+site"),
        "utf8-reason": replace(referred, reason_texts=(*referred.reason_texts[:2], "Fokus unscharf (Schärfe 41)")),
        "not-analysed": replace(
            referred,
            reasons=("not_analysed",),
            reason_texts=("the image could not be decoded",),
            conformal_set=(),
            cam=None,
        ),
    }


SOURCE_MAKERS: dict[str, Callable[[], Dataset]] = {**SOURCES, "with-specimen": vl_microscopic_with_specimen}


def fresh(kind: str, n: int) -> Dataset:
    """The n-th image of a kind of source: another instance, patient and accession each time."""
    ds = SOURCE_MAKERS[kind]()
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = f"PID-{n}"
    ds.PatientName = f"Case^Number{n}"
    if n % 2:
        ds.AccessionNumber = f"ACC{n:05d}"
    return ds


def encoded_equal(a: Dataset, b: Dataset) -> None:
    """The same bytes on the wire once the creation time (highdicom's clock, not ours) is the same."""
    for keyword in CREATION:
        setattr(a, keyword, getattr(b, keyword))
    assert encode(a) == encode(b)


@pytest.mark.parametrize("kind", sorted(SOURCE_MAKERS))
def test_ai_sr_and_kos_from_templates_equal_highdicoms(kind: str) -> None:
    templates = Templates()
    for n, (name, result) in enumerate(results().items()):
        for repeat in range(2):  # the first builds the template, the second comes from it
            source = fresh(kind, 10 * n + repeat)
            reference = build_ai_sr(source, result)
            made = build_ai_sr(source, result, templates=templates)
            assert differences(made, reference) == [], (name, repeat)
            encoded_equal(made, reference)
            if result.analysed:
                kos_reference = build_review_kos(source, result, reference, None)
                kos_made = build_review_kos(source, result, made, None, templates=templates)
                assert differences(kos_made, kos_reference) == [], (name, repeat)
                encoded_equal(kos_made, kos_reference)
    assert templates.kinds()["refused"] == 0
    assert templates.kinds()["templates"] >= 2


def test_documents_from_a_template_are_valid_and_read_back(tmp_path: Path) -> None:
    templates = Templates()
    result = make_result()
    for n in range(2):
        source = fresh("vl-microscopic", n)
        sr = build_ai_sr(source, result, templates=templates)
        kos = build_review_kos(source, result, sr, None, templates=templates)
    assert_valid(sr, tmp_path)
    assert_valid(kos, tmp_path)
    back = dcmread(tmp_path / f"{sr.SOPInstanceUID}.dcm")
    assert back.PatientID == "PID-1" and back.file_meta.MediaStorageSOPInstanceUID == sr.SOPInstanceUID
    evidence = back.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert [e.ReferencedSOPInstanceUID for e in evidence] == [source.SOPInstanceUID]


def test_the_template_is_not_changed_by_the_documents_made_from_it() -> None:
    templates = Templates()
    result = make_result()
    first = build_ai_sr(fresh("vl-microscopic", 0), result, templates=templates)
    before = encode(first)
    for n in range(1, 4):
        made = build_ai_sr(fresh("vl-microscopic", n), result, templates=templates)
        made.SeriesDescription = "edited after the fact"
        made.PatientName = "Other^Name"
    assert encode(first) == before


def test_a_template_that_does_not_reproduce_highdicom_is_refused() -> None:
    """When the document made from a new template differs from highdicom's for the same case (here: the case
    names another SOP Instance UID), that kind is built by highdicom from then on."""
    templates = Templates()
    calls = []

    def build(n: int) -> Callable[[], Dataset]:
        def run() -> Dataset:
            calls.append(n)
            ds = build_ai_sr(fresh("vl-microscopic", n), make_result())
            ds.ImageComments = f"case {n}"
            return ds

        return run

    source = fresh("vl-microscopic", 0)
    case = Case(source, Dataset(), [source], {"SOPInstanceUID": generate_uid()})
    templates.make(("test",), case, build(0))
    assert templates.kinds() == {"templates": 0, "refused": 1}
    made = templates.make(("test",), case, build(1))
    assert made.ImageComments == "case 1" and calls == [0, 1]
