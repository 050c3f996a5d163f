"""The blind audit of finalised images and the drift checks, on a store on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from cds_daemon.review.audit import MIN_WINDOW, audit_figures, check, sampled_for_audit
from cds_daemon.review.cases import case_key
from cds_daemon.store import NewInstance, OutputObject, PredictionRecord, Store


def _image(store: Store, uid: str) -> None:
    store.record_received(
        NewInstance(
            sop_instance_uid=uid,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.77.1.2",
            study_instance_uid=f"{uid}.1",
            series_instance_uid=f"{uid}.2",
            accession_number=None,
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            calling_ae="STORESCU",
            peer_address="127.0.0.1",
            spool_path=f"/nonexistent/{uid}",
            size_bytes=1,
            sha256="0" * 64,
            case_key=case_key(accession_number=None, study_instance_uid=f"{uid}.1", sop_instance_uid=uid),
        ),
        actor="test",
    )
    store.claim_next(actor="test")


def _finalised(store: Store, uid: str, predicted: str, *, audit: bool, reasons: list[str] | None = None) -> None:
    _image(store, uid)
    record = PredictionRecord("m", "1.0", "0" * 64, predicted, [0.98, 0.01, 0.01], bool(reasons), reasons or [], {})
    store.record_result(uid, record, [], [], actor="worker", audit=audit)


def test_audit_sample_is_deterministic_and_near_its_fraction() -> None:
    uids = [f"1.2.3.{i}" for i in range(20_000)]
    picked = [u for u in uids if sampled_for_audit(u, 0.02)]
    assert picked == [u for u in uids if sampled_for_audit(u, 0.02)]
    assert 0.017 < len(picked) / len(uids) < 0.023
    assert not any(sampled_for_audit(u, 0.0) for u in uids[:100])


def test_audited_errors_and_their_bound(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    store.create_user("ana", "x", "reviewer", actor="test")
    for i in range(10):
        _finalised(store, f"1.9.{i}", "benign", audit=True)
    _finalised(store, "1.9.99", "benign", audit=False)  # finalised, not sampled: not in the worklist
    items = store.worklist()
    assert sorted(u for item in items for u in item.images) == [f"1.9.{i}" for i in range(10)]
    assert all(item.reasons == () for item in items)  # looks like any case: no audit marker for reviewers
    for n, item in enumerate(items):
        final = "malignant" if n < 3 else "benign"
        decision = "change" if n < 3 else "confirm"
        review_sr = OutputObject("review-sr", f"2.9.{n}", "1.2.840.10008.5.1.4.1.1.88.33", "/x")
        store.record_decision(
            worklist_id=item.id,
            sop_instance_uid=item.images[0],
            reviewer="ana",
            decision=decision,
            ai_class="benign",
            final_class=final,
            comment=None,
            review_sr=review_sr,
            destinations=[],
        )
    assert store.audit_results() == {"1.0": {"sampled": 10, "decided": 10, "errors": 3}}
    result = check(store, alpha=0.02, delta=0.1, reference=None, window=200)
    audit = result.audit["1.0"]
    assert audit["error"] == pytest.approx(0.3) and 0.3 < audit["upper_bound"] < 0.7
    assert audit["exceeded"] and 0.02 < audit["lower_bound"] < 0.3
    assert [a.kind for a in result.alerts] == ["audit_bound"]
    assert "3 of 10 audited finalised images wrong" in result.alerts[0].text
    # Two errors in ten at alpha 2%: the upper bound is far above alpha, but that is no evidence yet, and the
    # anytime-valid test (it may be looked at after every decision) does not reject at delta 0.1.
    two = audit_figures({"sampled": 10, "decided": 10, "errors": 2}, alpha=0.02, delta=0.1)
    assert two["upper_bound"] > 0.02 and not two["exceeded"]


def test_drift_from_the_bundles_reference(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    reference = {"ood_rate": 0.01, "predicted_mix": {"benign": 0.34, "indeterminate": 0.33, "malignant": 0.33}}
    for i in range(MIN_WINDOW):
        reasons = ["ood_mahalanobis"] if i % 3 == 0 else []
        _finalised(store, f"1.8.{i}", "benign", audit=False, reasons=reasons)
    result = check(store, alpha=0.02, delta=0.1, reference=reference, window=200)
    assert {a.kind for a in result.alerts} == {"ood_drift", "class_mix_drift"}
    assert result.drift["window"] == MIN_WINDOW and result.drift["ood_rate"] == pytest.approx(17 / 50)
    calm = check(store, alpha=0.02, delta=0.1, reference=None, window=200)
    assert calm.alerts == []  # no reference (an older bundle): nothing to compare with
