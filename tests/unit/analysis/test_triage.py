"""Referral policy: every reason that applies is recorded, the config switches work, and the triage mode
decides what may be finalised (shadow refers all, live and bundle use their rule's threshold)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from cds_daemon.analysis.engine import Prediction
from cds_daemon.analysis.policy import BundleRules, FinalisationPolicy, bundle_policy
from cds_daemon.analysis.quality import QualityResult
from cds_daemon.analysis.triage import decide
from cds_daemon.common.config import Settings, TriageSettings
from cds_daemon.common.vocabulary import TriageMode

GOOD = QualityResult(True, ())


def _pred(label: str = "benign", confidence: float = 0.95, **kw: object) -> Prediction:
    fields: dict[str, object] = {
        "label": label,
        "display_name": label,
        "confidence": confidence,
        "finalisation_confidence": confidence,
        "probs": {"benign": confidence, "indeterminate": 1 - confidence, "malignant": 0.0},
        "basic_label": label,
        "basic_probs": {},
        "premium_label": label,
        "premium_probs": {},
        "members_agree": True,
        "conformal_set": (label,),
        "mahalanobis": 1.0,
        "mahalanobis_ood": False,
        "energy": -5.0,
        "energy_ood": False,
        "cam_class": label,
        "cam": np.zeros((21, 28), np.float32),
        "cam_whole": np.zeros((7, 7), np.float32),
        "model_name": "m",
        "model_version": "1",
        "timings_ms": {},
    }
    fields.update(kw)
    return Prediction(**fields)  # type: ignore[arg-type]


def _policy(threshold: float, mode: TriageMode = TriageMode.BUNDLE) -> FinalisationPolicy:
    rule_id = 7 if mode == TriageMode.LIVE else None
    return FinalisationPolicy(mode, mode, threshold, rule_id, f"rule at {threshold}", "why")


SHADOW = FinalisationPolicy(TriageMode.LIVE, TriageMode.SHADOW, math.inf, None, None, "no site rule is active")


def test_confident_benign_is_not_referred() -> None:
    d = decide(_pred(), GOOD, TriageSettings(), _policy(0.6))
    assert not d.referred and d.reasons == () and d.priority == 9
    assert d.candidate and d.rule_text == "rule at 0.6" and d.mode == "bundle"


def test_the_threshold_applies_to_the_finalisation_confidence_not_the_ensemble_alone() -> None:
    # The rule is fitted on min(ensemble, Basic): a confident ensemble with an unsure Basic is not finalised.
    d = decide(_pred(confidence=0.99, finalisation_confidence=0.55), GOOD, TriageSettings(), _policy(0.6))
    assert d.reasons == ("low_confidence",) and d.candidate and d.rule_text is None


def test_all_reasons_are_recorded_in_order() -> None:
    pred = _pred(
        "indeterminate",
        0.4,
        conformal_set=("benign", "indeterminate"),
        members_agree=False,
        basic_label="benign",
        premium_label="indeterminate",
        mahalanobis_ood=True,
        energy_ood=True,
    )
    quality = QualityResult(False, (("quality_blur", "out of focus"),))
    d = decide(pred, quality, TriageSettings(), _policy(0.6))
    assert d.reasons == (
        "conformal_set_not_singleton",
        "indeterminate_class",
        "low_confidence",
        "basic_premium_disagree",
        "ood_mahalanobis",
        "ood_energy",
        "quality_blur",
    )
    assert len(d.texts) == len(d.reasons) and d.priority == 1 and not d.candidate


def test_switches() -> None:
    pred = _pred("indeterminate", 0.7, members_agree=False)
    off = TriageSettings(refer_indeterminate=False, refer_ensemble_disagreement=False)
    assert not decide(pred, GOOD, off, _policy(0.5)).referred
    assert decide(pred, GOOD, TriageSettings(), _policy(0.9)).reasons[:2] == ("indeterminate_class", "low_confidence")


def test_bundle_mode_fixed_threshold_overrides_the_fitted_rule() -> None:
    manifest = SimpleNamespace(finalisation=None, confidence_threshold=0.8, name="m", version="1")
    rules = BundleRules(manifest, "f" * 64)  # type: ignore[arg-type]
    settings = Settings(triage=TriageSettings(mode=TriageMode.BUNDLE, confidence_threshold=0.5))
    policy = bundle_policy(settings, rules)
    assert policy.threshold == 0.5 and "no guarantee" in (policy.rule_text or "")
    assert bundle_policy(Settings(triage=TriageSettings(mode=TriageMode.BUNDLE)), rules).threshold == 0.8


def test_suspected_malignant_is_most_urgent() -> None:
    d = decide(_pred("malignant", 0.5), GOOD, TriageSettings(), _policy(0.6))
    assert d.referred and d.priority == 1


def test_shadow_refers_every_field_with_its_own_reason_at_the_lowest_priority() -> None:
    d = decide(_pred(), GOOD, TriageSettings(), SHADOW)
    assert d.referred and d.reasons == ("site_validation",) and d.priority == 9
    assert d.texts == ("no site rule is active",) and d.candidate and d.mode == "shadow" and d.rule_text is None
    # Other reasons still rank the case; the field is then no candidate for the pool's rule.
    other = decide(_pred("malignant", 0.9, members_agree=False, basic_label="benign"), GOOD, TriageSettings(), SHADOW)
    assert other.reasons == ("basic_premium_disagree", "site_validation") and other.priority == 1
    assert not other.candidate


def test_live_mode_finalises_with_the_site_rule_and_names_it() -> None:
    live = _policy(0.9, TriageMode.LIVE)
    d = decide(_pred(confidence=0.95), GOOD, TriageSettings(), live)
    assert not d.referred and d.rule_id == 7 and d.rule_text == "rule at 0.9" and d.mode == "live"
    below = decide(_pred(confidence=0.85), GOOD, TriageSettings(), live)
    assert below.reasons == ("low_confidence",) and below.rule_id == 7 and below.rule_text is None
