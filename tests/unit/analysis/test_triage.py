"""Referral policy: every reason that applies is recorded, and the config switches work."""

from __future__ import annotations

import numpy as np

from cds_daemon.analysis.engine import Prediction
from cds_daemon.analysis.quality import QualityResult
from cds_daemon.analysis.triage import decide
from cds_daemon.common.config import TriageSettings

GOOD = QualityResult(True, ())


def _pred(label: str = "benign", confidence: float = 0.95, **kw: object) -> Prediction:
    fields: dict[str, object] = {
        "label": label,
        "display_name": label,
        "confidence": confidence,
        "probs": {"benign": confidence, "indeterminate": 1 - confidence, "malignant": 0.0},
        "basic_label": label,
        "basic_probs": {},
        "premium_label": label,
        "premium_probs": {},
        "members_agree": True,
        "conformal_set": (label,),
        "low_confidence": False,
        "mahalanobis": 1.0,
        "mahalanobis_ood": False,
        "energy": -5.0,
        "energy_ood": False,
        "reasons": (),
        "cam_class": label,
        "cam": np.zeros((21, 28), np.float32),
        "cam_whole": np.zeros((7, 7), np.float32),
        "model_name": "m",
        "model_version": "1",
        "timings_ms": {},
    }
    fields.update(kw)
    return Prediction(**fields)  # type: ignore[arg-type]


def test_confident_benign_is_not_referred() -> None:
    d = decide(_pred(), GOOD, TriageSettings(), bundle_confidence=0.6)
    assert not d.referred and d.reasons == () and d.priority == 9


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
    d = decide(pred, quality, TriageSettings(), bundle_confidence=0.6)
    assert d.reasons == (
        "conformal_set_not_singleton",
        "indeterminate_class",
        "low_confidence",
        "basic_premium_disagree",
        "ood_mahalanobis",
        "ood_energy",
        "quality_blur",
    )
    assert len(d.texts) == len(d.reasons) and d.priority == 1


def test_switches_and_threshold_override() -> None:
    pred = _pred("indeterminate", 0.7, members_agree=False)
    off = TriageSettings(refer_indeterminate=False, refer_ensemble_disagreement=False, confidence_threshold=0.5)
    assert not decide(pred, GOOD, off, bundle_confidence=0.9).referred
    assert decide(pred, GOOD, TriageSettings(), bundle_confidence=0.9).reasons[:2] == (
        "indeterminate_class",
        "low_confidence",
    )


def test_suspected_malignant_is_most_urgent() -> None:
    d = decide(_pred("malignant", 0.5), GOOD, TriageSettings(), bundle_confidence=0.6)
    assert d.referred and d.priority == 1
