"""Whole slides in the store: the quiet period, the representative level, and the levels reported with it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from cds_daemon.common.clock import timestamp_in
from cds_daemon.common.vocabulary import WHOLE_SLIDE_SOP_CLASS
from cds_daemon.store import NewInstance, OutputObject, PredictionRecord, Store

RECORD = PredictionRecord("m", "1", "0" * 64, "malignant", [0.1, 0.1, 0.8], True, ["slide_validation"], {}, 8)
SLIDE = "1.2.9.1/1.2.9.2"


def _level(uid: str, slide: str = SLIDE) -> NewInstance:
    return NewInstance(
        sop_instance_uid=uid,
        sop_class_uid=WHOLE_SLIDE_SOP_CLASS,
        study_instance_uid="1.2.9",
        series_instance_uid=slide.split("/")[0],
        accession_number="A9",
        transfer_syntax_uid="1.2.840.10008.1.2.4.50",
        calling_ae="STORESCU",
        peer_address="127.0.0.1",
        spool_path=f"/x/{uid}",
        size_bytes=10,
        sha256="0" * 64,
        case_key="accession:A9",
        slide_key=slide,
    )


def _camera(uid: str) -> NewInstance:
    return replace(_level(uid), sop_class_uid="1.2.840.10008.5.1.4.1.1.77.1.2", slide_key=None)


def test_a_slide_waits_for_its_quiet_period_then_one_level_carries_it(store_target: str | Path) -> None:
    store = Store(store_target)
    for uid in ("1.9.1", "1.9.2", "1.9.3"):
        store.record_received(_level(uid), actor="T", slide_due_at=timestamp_in(3600))
    store.record_received(_camera("1.9.9"), actor="T")
    assert store.claim_next(actor="w").sop_instance_uid == "1.9.9"  # type: ignore[union-attr]  # images go on
    assert store.claim_next(actor="w") is None, "the slide is still arriving"
    assert store.slides_waiting() == 1
    store.record_received(_level("1.9.4"), actor="T", slide_due_at=timestamp_in(-1))  # the last level; then quiet
    claimed = store.claim_next(actor="w")
    assert claimed is not None and claimed.sop_instance_uid == "1.9.1" and claimed.slide_key == SLIDE
    assert store.claim_next(actor="w") is None, "one level analyses the slide, the others wait with it"
    assert store.slides_waiting() == 0
    assert [p.sop_instance_uid for p in store.slide_parts(SLIDE)] == ["1.9.1", "1.9.2", "1.9.3", "1.9.4"]

    out = OutputObject("sr", "2.25.1", "1.2.840.10008.5.1.4.1.1.88.34", "/r/sr.dcm")
    store.record_result("1.9.1", RECORD, [out], ["pacs"], actor="w", parts=("1.9.2", "1.9.3", "1.9.4"))
    assert {p.state for p in store.slide_parts(SLIDE)} == {"reported"}
    (item,) = store.outbox_items("1.9.1")
    assert store.mark_delivered(item.id, actor="egress")
    assert {p.state for p in store.slide_parts(SLIDE)} == {"delivered"}, "the levels are delivered with the slide"


def test_a_level_after_the_analysis_makes_the_slide_due_again(store_target: str | Path) -> None:
    store = Store(store_target)
    store.record_received(_level("1.8.1", "1.8/1.8.0"), actor="T", slide_due_at=timestamp_in(-1))
    first = store.claim_next(actor="w")
    assert first is not None
    store.record_result("1.8.1", RECORD, [], [], actor="w")
    store.record_received(_level("1.8.2", "1.8/1.8.0"), actor="T", slide_due_at=timestamp_in(-1))
    again = store.claim_next(actor="w")
    assert again is not None and again.sop_instance_uid == "1.8.2", "the late level carries the new analysis"


def test_a_slide_that_fails_fails_with_its_levels(store_target: str | Path) -> None:
    store = Store(store_target)
    for uid in ("1.7.1", "1.7.2"):
        store.record_received(_level(uid, "1.7/1.7.0"), actor="T", slide_due_at=timestamp_in(-1))
    assert store.claim_next(actor="w") is not None
    failed = replace(RECORD, predicted=None, probabilities=None, reasons=["not_analysed"], priority=2)
    store.record_failure("1.7.1", "no informative field", failed, [], [], actor="w", parts=("1.7.2",))
    assert {p.state for p in store.slide_parts("1.7/1.7.0")} == {"failed"}
    assert [tuple(i.images) for i in store.worklist()] == [("1.7.1",)]


def test_a_reviewed_slide_joins_the_slide_pool_not_the_fields_pool(store_target: str | Path) -> None:
    store = Store(store_target)
    store.record_received(_level("1.6.1", "1.6/1.6.0"), actor="T", slide_due_at=timestamp_in(-1))
    assert store.claim_next(actor="w") is not None
    shadow = replace(RECORD, triage_mode="shadow", finalisation_confidence=0.8, candidate=True)
    store.record_result("1.6.1", shadow, [], [], actor="w")
    (item,) = store.worklist()
    store.record_decision(
        worklist_id=item.id,
        sop_instance_uid="1.6.1",
        reviewer="rev",
        decision="confirm",
        ai_class="malignant",
        final_class="malignant",
        comment=None,
        review_sr=None,
        destinations=[],
    )
    assert store.pool("0" * 64) == []
    assert [r.sop_instance_uid for r in store.pool("slide:" + "0" * 64)] == ["1.6.1"]


def test_a_slides_fields_are_kept_and_its_diagnostic_field_becomes_its_example(store_target: str | Path) -> None:
    """Each field's features and Grad-CAM are stored with the slide; a decision records the examined fields, and
    the field marked diagnostic replaces the slide's features among similar cases (its top fields' mean)."""
    import numpy as np

    from cds_daemon.store import SlideField

    store = Store(store_target)
    store.record_received(_level("1.5.1", "1.5/1.5.0"), actor="T", slide_due_at=timestamp_in(-1))
    assert store.claim_next(actor="w") is not None
    vectors = [np.full(4, float(n), np.float32) for n in (1, 2, 3)]
    fields = [SlideField(n, v.tobytes(), bytes([n] * 6), 2, 3) for n, v in enumerate(vectors, start=1)]
    mean = np.mean(vectors[:2], axis=0).astype(np.float32).tobytes()
    store.record_result("1.5.1", RECORD, [], [], actor="w", embedding=mean, slide_fields=fields)
    assert store.slide_fields("1.5.1") == fields
    assert store.embedding("1.5.1") == ("0" * 64, mean)
    representative, parts = store.slide_of_series("1.5")  # type: ignore[misc]
    assert representative == "1.5.1" and [p.sop_instance_uid for p in parts] == ["1.5.1"]
    assert store.slide_of_series("9.9") is None
    (item,) = store.worklist()
    assert store.worklist_item_of("1.5.1") == item
    made = store.record_decision(
        worklist_id=item.id,
        sop_instance_uid="1.5.1",
        reviewer="rev",
        decision="confirm",
        ai_class="malignant",
        final_class="malignant",
        comment=None,
        review_sr=None,
        destinations=[],
        fields_viewed=[3, 1, 3],
        diagnostic_field=3,
    )
    assert made.fields_viewed == "[1, 3]" and made.diagnostic_field == 3
    assert store.embedding("1.5.1") == ("0" * 64, vectors[2].tobytes())
    (confirmed,) = store.confirmed("0" * 64)
    assert confirmed.diagnostic_field == 3
