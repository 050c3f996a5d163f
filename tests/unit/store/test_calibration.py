"""The site calibration pool, certified site rules, and decisions serialised across nodes, on both backends."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from cds_daemon.store import OutputObject, PredictionRecord, StateError, Store
from tests.unit.store.test_store import _new

SHA = "a" * 64
OTHER = "b" * 64
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"


def _referred(store: Store, uid: str, *, mode: str = "shadow", confidence: float = 0.9, candidate: bool = True) -> int:
    """An analysed, referred image in its worklist case; returns the case's worklist id."""
    store.record_received(_new(uid, path=f"/{uid}"), actor="T")
    store.claim_next(actor="worker")
    record = PredictionRecord(
        "m", "1", SHA, "benign", [0.9, 0.05, 0.05], True, ["site_validation"], {}, 9,
        triage_mode=mode, finalisation_confidence=confidence, candidate=candidate,
    )  # fmt: skip
    store.record_result(uid, record, [], [], actor="worker")
    (item,) = [i for i in store.worklist() if uid in i.images]
    return item.id


def _decide(store: Store, item: int, uid: str, final: str | None, sr: str = "2.9") -> None:
    store.record_decision(
        worklist_id=item,
        sop_instance_uid=uid,
        reviewer="ana",
        decision="confirm" if final == "benign" else ("change" if final else "non_diagnostic"),
        ai_class="benign",
        final_class=final,
        comment=None,
        review_sr=OutputObject("review-sr", sr, SR_CLASS, "/x"),
        destinations=[],
    )


def test_shadow_reviews_fill_the_pool_once_and_live_reviews_never(store_target: str | Path) -> None:
    store = Store(store_target)
    store.create_user("ana", "x", "reviewer", actor="test")
    shadow = _referred(store, "1.5.1", confidence=0.97)
    _decide(store, shadow, "1.5.1", "benign", sr="2.9.1")
    _decide(store, shadow, "1.5.1", "malignant", sr="2.9.2")  # a corrected decision updates the row
    live = _referred(store, "1.5.2", mode="live")
    _decide(store, live, "1.5.2", "benign", sr="2.9.3")
    (row,) = store.pool(SHA)
    assert (row.sop_instance_uid, row.confidence, row.candidate, row.ai_class) == ("1.5.1", 0.97, True, "benign")
    assert row.final_class == "malignant" and row.error
    assert [d.sequence for d in store.decisions(shadow) if d.sop_instance_uid == "1.5.1"] == [1, 2]
    assert store.pool(OTHER) == []
    store.close()


def test_site_rules_one_active_per_bundle_with_their_history(store_target: str | Path) -> None:
    store = Store(store_target)
    fields = {
        "alpha": 0.05, "delta": 0.1, "threshold": 0.8, "n_calibration": 90, "n_candidates": 60,
        "n_finalised": 50, "errors": 0, "upper_bound": 0.045, "method": "LTT",
    }  # fmt: skip
    first = store.add_site_rule(SHA, fields, pool_max_id=90, actor="admin")
    second = store.add_site_rule(SHA, fields, pool_max_id=95, actor="admin")
    nothing = store.add_site_rule(SHA, {**fields, "threshold": None}, pool_max_id=95, actor="admin")
    assert store.active_rule(SHA) is None and not first.active
    store.activate_rule(first.id, actor="admin")
    assert store.active_rule(SHA).id == first.id  # type: ignore[union-attr]
    store.activate_rule(second.id, actor="admin")  # replaces the first
    active = store.active_rule(SHA)
    assert active is not None and active.id == second.id and active.activated_by == "admin"
    assert store.site_rule(first.id).deactivation_reason == f"replaced by site rule {second.id}"  # type: ignore[union-attr]
    with pytest.raises(StateError, match="finalises nothing"):
        store.activate_rule(nothing.id, actor="admin")
    assert store.active_rule(OTHER) is None
    assert store.deactivate_rule(second.id, actor="fail-safe", reason="audit", event="fallback")
    assert not store.deactivate_rule(second.id, actor="node-b", reason="audit", event="fallback")  # done once
    assert store.active_rule(SHA) is None
    events = [(e.event, e.rule_id) for e in store.triage_events(SHA)]
    assert events[:3] == [("fallback", second.id), ("activated", second.id), ("activated", first.id)]
    assert "calibration:fallback" in store.audit_actions()
    store.close()


def test_two_nodes_deciding_one_image_at_once_get_consecutive_sequences(store_target: str | Path) -> None:
    """Each node holds its decision slot while it builds the review SR; the other waits, then takes n + 1.
    Exactly one pool row and one outbox row per decision."""
    nodes = [Store(store_target) for _ in range(2)]
    nodes[0].create_user("ana", "x", "reviewer", actor="test")
    item = _referred(nodes[0], "1.6.1")
    inside = threading.Barrier(2, timeout=30)
    got: list[int] = []
    errors: list[BaseException] = []

    def decide(store: Store, n: int) -> None:
        try:
            inside.wait()  # both start together
            with store.deciding("1.6.1") as slot:
                got.append(slot.sequence)
                time.sleep(0.3)  # building the review SR: without the slot's lock the other node reads n too
                slot.record(
                    worklist_id=item,
                    reviewer="ana",
                    decision="confirm",
                    ai_class="benign",
                    final_class="benign",
                    comment=None,
                    review_sr=OutputObject("review-sr", f"2.8.{slot.sequence}", SR_CLASS, "/x"),
                    destinations=["pacs"],
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=decide, args=(s, n)) for n, s in enumerate(nodes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(got) == [1, 2]
    assert sorted(d.sequence for d in nodes[0].decisions(item)) == [1, 2]  # type: ignore[type-var]
    assert len(nodes[0].pool(SHA)) == 1
    outbox = [o.object_uid for o in nodes[0].outbox_items("1.6.1") if o.kind == "review-sr"]
    assert sorted(outbox) == ["2.8.1", "2.8.2"]
    for s in nodes:
        s.close()


def test_a_decision_with_a_taken_sequence_is_refused(store_target: str | Path) -> None:
    store = Store(store_target)
    store.create_user("ana", "x", "reviewer", actor="test")
    item = _referred(store, "1.7.1")
    _decide(store, item, "1.7.1", "benign")
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"), store._tx() as db:
        store._record_decision(
            db, worklist_id=item, sop_instance_uid="1.7.1", sequence=1, reviewer="ana", decision="confirm",
            ai_class="benign", final_class="benign", comment=None, review_sr=None, destinations=[],
        )  # fmt: skip
    assert len(store.decisions(item)) == 1 and len(store.pool(SHA)) == 1
    store.close()
