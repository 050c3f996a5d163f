"""Grouping by specimen and the case timer in the store, on both backends."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from cds_daemon.common.clock import timestamp_in
from cds_daemon.review.cases import case_key
from cds_daemon.store import OutputObject, PredictionRecord, Store
from tests.unit.store.test_store import _new

RECORD = PredictionRecord("m", "1", "0" * 64, "benign", [0.9, 0.05, 0.05], False, [], {}, 9)


def test_a_case_is_the_specimen_then_the_slide_then_the_accession_then_the_study() -> None:
    base = {"accession_number": "A1", "study_instance_uid": "1.2", "sop_instance_uid": "1.2.3"}
    assert case_key(**base, specimen_identifier="S1", container_identifier="C1") == "specimen:S1"
    assert case_key(**base, container_identifier="C1") == "container:C1"
    assert case_key(**base) == "accession:A1"
    assert case_key(accession_number=None, study_instance_uid="1.2", sop_instance_uid="1.2.3") == "study:1.2"


def _image(store: Store, uid: str, key: str, due: str) -> None:
    store.record_received(replace(_new(uid, path=f"/{uid}"), case_key=key), actor="T")
    store.claim_next(actor="w", node="n")
    store.record_result(uid, RECORD, [], [], actor="w", holder="n", case_due_at=due)


def test_a_case_is_due_after_its_quiet_period_and_once_per_change(store_target: str | Path) -> None:
    store = Store(store_target)
    _image(store, "1.5.1", "specimen:S1", timestamp_in(0.05))
    store.record_received(replace(_new("1.5.2", path="/1.5.2"), case_key="specimen:S1"), actor="T")
    time.sleep(0.1)
    assert store.due_cases() == []  # an image of the case still waits for analysis
    store.claim_next(actor="w", node="n")
    store.record_result("1.5.2", RECORD, [], [], actor="w", holder="n", case_due_at=timestamp_in(0.05))
    time.sleep(0.1)
    (case,) = store.due_cases()
    assert (case.case_key, case.version) == ("specimen:S1", 0)
    assert [i.sop_instance_uid for i in store.case_members("specimen:S1")] == ["1.5.1", "1.5.2"]
    sr = OutputObject("case-sr", "2.25.1", "1.2.840.10008.5.1.4.1.1.88.33", "/r/case.dcm")
    assert store.record_case_report(case, sr, 2, "1.5.1", ["pacs"], actor="t")
    assert not store.record_case_report(case, sr, 2, "1.5.1", ["pacs"], actor="t")  # that version is written
    assert store.due_cases() == []
    _image(store, "1.5.3", "specimen:S1", timestamp_in(0.05))  # a late image
    time.sleep(0.1)
    (again,) = store.due_cases()
    assert again.version == 1 and again.sr_uid == "2.25.1"
    store.close()
