"""Triage: does a case go to the expert-review worklist, and why. The one referral rule.

Policy (DESIGN.md): refer if the conformal set is not exactly one class, if the class is
Indeterminate/Suspicious, if calibrated confidence is below the threshold, if Basic and
Premium disagree, if an OOD score is out of range, or if the quality gate failed. Every
reason that applies is recorded, in this order, with a text a cytopathologist can read.

``model_reasons`` is the rule; the daemon applies it through :func:`decide` (with the site's
switches, the quality gate and the finalisation policy in force), ``model_build`` directly (every switch
on), so the referral rates a model builder measures are the daemon's. The engine only computes numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cds_daemon.common.config import TriageSettings
from cds_daemon.common.vocabulary import REASONS, ROUTINE_PRIORITY, THRESHOLD_REASONS, ReferralReason, TriageMode

if TYPE_CHECKING:
    from cds_daemon.analysis.engine import Prediction
    from cds_daemon.analysis.policy import FinalisationPolicy
    from cds_daemon.analysis.quality import QualityResult

INDETERMINATE = "indeterminate"
MALIGNANT = "malignant"
_ALL_ON = TriageSettings()
_PRIORITY = {str(reason): info.priority for reason, info in REASONS.items()}
_UNLISTED_PRIORITY = REASONS[ReferralReason.LOW_CONFIDENCE].priority


@dataclass(frozen=True)
class TriageDecision:
    referred: bool
    reasons: tuple[str, ...]
    texts: tuple[str, ...]
    priority: int  # 1 (most urgent) .. 9
    candidate: bool = False  # nothing but the threshold (or shadow mode) refers it: what a rule is fitted on
    mode: str = TriageMode.BUNDLE  # the triage mode that decided (shadow reviews enter the site pool)
    rule_id: int | None = None  # the site rule in force (live mode)
    rule_text: str | None = None  # finalised: the rule that finalised it, as the SR names it


def model_reasons(
    *,
    predicted: str,
    confidence: float,
    conformal_set: tuple[str, ...],
    basic_label: str,
    premium_label: str,
    mahalanobis_ood: bool,
    energy_ood: bool,
    confidence_threshold: float,
    stain_ood: bool = False,
    policy: TriageSettings = _ALL_ON,
) -> list[tuple[ReferralReason, str]]:
    """The model-side reasons to refer, with their texts; empty = the model is confident.

    Image-quality reasons come from the quality gate, not from here.
    """
    found: list[tuple[ReferralReason, str]] = []
    if policy.refer_conformal_not_singleton and len(conformal_set) != 1:
        members = ", ".join(conformal_set) or "no class"
        found.append((ReferralReason.CONFORMAL_SET, f"conformal prediction set is not one class ({members})"))
    if policy.refer_indeterminate and predicted == INDETERMINATE:
        found.append((ReferralReason.INDETERMINATE, "predicted Indeterminate/Suspicious: needs a cytopathologist"))
    if confidence < confidence_threshold:
        text = (
            f"calibrated confidence {confidence:.2f} (the lower of the ensemble's and Basic's) is below "
            f"{confidence_threshold:.2f}, the finalisation threshold"
            if confidence_threshold <= 1.0
            else "this model finalises nothing without review (its calibration split could not bound the error)"
        )
        found.append((ReferralReason.LOW_CONFIDENCE, text))
    if policy.refer_ensemble_disagreement and basic_label != premium_label:
        found.append(
            (
                ReferralReason.MEMBERS_DISAGREE,
                f"ensemble members disagree (Basic {basic_label}, Premium {premium_label})",
            )
        )
    if policy.refer_ood and mahalanobis_ood:
        found.append((ReferralReason.OOD_MAHALANOBIS, "image features unlike the training data (Mahalanobis)"))
    if policy.refer_ood and energy_ood:
        found.append((ReferralReason.OOD_ENERGY, "model output unlike the training data (energy score)"))
    if policy.refer_ood and stain_ood:
        found.append((ReferralReason.OOD_STAIN, "colours unlike a stained cytology smear (optical density)"))
    return found


def reason_codes(found: list[tuple[ReferralReason, str]]) -> tuple[str, ...]:
    """Just the codes of :func:`model_reasons`' answer."""
    return tuple(str(code) for code, _ in found)


def priority_of(codes: list[str], predicted: str | None) -> int:
    """Worklist priority: the most urgent reason's, and 1 for a suspected malignancy that is referred."""
    priority = min((_PRIORITY.get(code, _UNLISTED_PRIORITY) for code in codes), default=ROUTINE_PRIORITY)
    if predicted == MALIGNANT and codes:
        priority = 1
    return priority


def decide(
    pred: Prediction, quality: QualityResult, settings: TriageSettings, policy: FinalisationPolicy
) -> TriageDecision:
    """The referral decision for one field under the policy in force (:mod:`cds_daemon.analysis.policy`).

    In shadow mode nothing is finalised: every field is referred, with the site-validation reason after any
    other that applies (so the worklist still ranks them), and no low-confidence reason (no threshold is
    in force).
    """
    shadow = policy.mode == TriageMode.SHADOW
    found: list[tuple[str, str]] = [
        (str(code), text)
        for code, text in model_reasons(
            predicted=pred.label,
            confidence=pred.finalisation_confidence,
            conformal_set=pred.conformal_set,
            basic_label=pred.basic_label,
            premium_label=pred.premium_label,
            mahalanobis_ood=pred.mahalanobis_ood,
            energy_ood=pred.energy_ood,
            stain_ood=pred.stain_ood,
            confidence_threshold=0.0 if shadow else policy.threshold,
            policy=settings,
        )
    ]
    if settings.refer_quality:
        found.extend(quality.reasons)
    candidate = all(code in THRESHOLD_REASONS for code, _ in found)
    if shadow:
        found.append((str(ReferralReason.SITE_VALIDATION), policy.why))
    codes = [c for c, _ in found]
    return TriageDecision(
        referred=bool(found),
        reasons=tuple(codes),
        texts=tuple(t for _, t in found),
        priority=priority_of(codes, pred.label),
        candidate=candidate,
        mode=str(policy.mode),
        rule_id=policy.rule_id,
        rule_text=None if found else policy.rule_text,
    )
