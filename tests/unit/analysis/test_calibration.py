"""Site calibration end to end in one process: shadow reviews -> certify -> activate -> live -> fail-safe."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from cds_daemon.analysis import calibration
from cds_daemon.analysis.policy import BundleRules, resolve
from cds_daemon.common.config import Settings, TriageSettings
from cds_daemon.common.vocabulary import TriageMode
from cds_daemon.review.audit import check_for, fail_safe
from cds_daemon.store import OutputObject, PredictionRecord, Store
from tests.unit.store.test_calibration import SHA, SR_CLASS, _decide, _referred
from tests.unit.store.test_store import _new

LIVE = Settings(triage=TriageSettings(mode=TriageMode.LIVE, risk_alpha=0.2, risk_delta=0.2))


def _rules(identity: str = SHA) -> BundleRules:
    manifest = SimpleNamespace(finalisation=None, confidence_threshold=0.5, name="m", version="1", raw={})
    return BundleRules(manifest, identity)  # type: ignore[arg-type]


def _pool(store: Store, n: int, wrong_below: float = 0.0) -> None:
    """n shadow reviews, confidences spread over (0.5, 1); the reviewer disagrees below ``wrong_below``."""
    for i in range(n):
        uid = f"1.4.{i}"
        confidence = 0.5 + 0.5 * (i + 0.5) / n
        item = _referred(store, uid, confidence=confidence, candidate=i % 5 != 0)
        _decide(store, item, uid, "malignant" if confidence < wrong_below else "benign", sr=f"2.4.{i}")


def _finalised_by(store: Store, uid: str, rule_id: int) -> None:
    store.record_received(_new(uid, path=f"/{uid}"), actor="T")
    store.claim_next(actor="worker")
    record = PredictionRecord(
        "m", "1", SHA, "benign", [0.9, 0.05, 0.05], False, [], {}, 9,
        triage_mode="live", rule_id=rule_id, finalisation_confidence=0.99, candidate=True,
    )  # fmt: skip
    store.record_result(uid, record, [], [], actor="worker", audit=True)


def test_certify_activate_and_fall_back(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    store.create_user("ana", "x", "reviewer", actor="test")
    rules = _rules()
    assert resolve(LIVE, rules, store).mode == TriageMode.SHADOW  # nothing certified yet
    assert "until one is certified" in resolve(LIVE, rules, store).why
    with pytest.raises(calibration.CalibrationError, match="empty"):
        calibration.certify(store, rules, alpha=0.2, delta=0.2, actor="root")
    _pool(store, 40, wrong_below=0.6)
    report = calibration.status(LIVE, store, rules, power=True)
    assert report["pool"] == {
        "size": 40, "candidates": 32, "errors": 8, "by_reviewer_class": report["pool"]["by_reviewer_class"],
    }  # fmt: skip
    would = report["would_certify"]
    assert would["threshold"] is not None and would["errors"] < 0.2 * would["n_finalised"]
    assert report["projection"]["points"][0]["size"] == 40 and report["risk_coverage"][0][1] == 1 / 40
    rule = calibration.certify(store, rules, alpha=0.2, delta=0.2, actor="root")
    assert not rule.active and rule.threshold == would["threshold"] and rule.n_pool == 40
    with pytest.raises(calibration.CalibrationError, match="not for the loaded bundle"):
        calibration.activate(store, _rules("c" * 64), rule.id, actor="root")
    calibration.activate(store, rules, rule.id, actor="root")
    policy = resolve(LIVE, rules, store)
    assert policy.mode == TriageMode.LIVE and policy.rule_id == rule.id and policy.threshold == rule.threshold
    assert f"site rule {rule.id}" in (policy.rule_text or "") and "alpha 0.2" in (policy.rule_text or "")
    assert resolve(LIVE, _rules("d" * 64), store).mode == TriageMode.SHADOW  # a new bundle: back to shadow

    # The blind audit: what the rule finalised, reviewed; a few wrong ones are no evidence yet.
    for i in range(12):
        _finalised_by(store, f"1.3.{i}", rule.id)
    audited = {uid for item in store.worklist() for uid in item.images if uid.startswith("1.3.")}
    assert len(audited) == 12 and store.finalised_count(rule.id) == 12
    for n, uid in enumerate(sorted(audited)):
        (item,) = [i for i in store.worklist() if uid in i.images]
        store.record_decision(
            worklist_id=item.id, sop_instance_uid=uid, reviewer="ana", decision="change" if n < 6 else "confirm",
            ai_class="benign", final_class="malignant" if n < 6 else "benign", comment=None,
            review_sr=OutputObject("review-sr", f"2.3.{n}", SR_CLASS, "/x"), destinations=[],
        )  # fmt: skip
    monitoring = check_for(store, None, LIVE, SHA)
    assert monitoring.site_rule is not None and monitoring.site_rule["errors"] == 6
    # While the rule is in force, drift is measured from the cases it was certified on, not the bundle's test split.
    reference = monitoring.drift["reference"]
    assert reference["source"] == "site calibration pool" and reference["n"] == 40
    assert reference["predicted_mix"] == {"benign": pytest.approx(1.0)} and reference["ood_rate"] == 0.0
    assert {a.kind for a in monitoring.alerts} == {"audit_bound", "site_rule_audit"}  # per model and per rule
    reason = fail_safe(store, LIVE, monitoring)
    assert reason is not None and "6 of 12 audited" in reason
    assert fail_safe(store, LIVE, monitoring) is None  # once
    after = resolve(LIVE, rules, store)
    assert after.mode == TriageMode.SHADOW and "withdrawn by the fail-safe" in after.why
    assert store.site_rule(rule.id).deactivated_by == "fail-safe"  # type: ignore[union-attr]
    # Bundle mode ignores site rules and never falls back.
    assert fail_safe(store, Settings(triage=TriageSettings(mode=TriageMode.BUNDLE)), monitoring) is None
    store.close()


def test_a_pool_that_cannot_show_the_bound_is_not_certified(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    store.create_user("ana", "x", "reviewer", actor="test")
    _pool(store, 30, wrong_below=1.01)  # the reviewer disagrees with everything
    with pytest.raises(calibration.CalibrationError, match="no rule can be certified"):
        calibration.certify(store, _rules(), alpha=0.2, delta=0.2, actor="root")
    assert store.site_rules(SHA) == []
    store.close()
