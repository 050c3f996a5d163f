"""Watching what the AI finalises in production: the blind audit sample, and drift from the bundle's test split.

- **Audit sample.** A share of finalised images (``worklist.audit_fraction``; ``audit.initial_rate`` for a
  young site rule's first ``audit.initial_images``; chosen from a hash of the SOP Instance UID, so a re-run
  picks the same ones) also goes to the worklist, unmarked. Reviewers' decisions on them measure the error
  among finalised images, per model version and per site rule, with its (1 - delta) Clopper-Pearson upper
  bound (shown) and an anytime-valid test (:func:`cds_daemon.common.binomial.sequential_evidence`).
- **Evidence, not its absence.** The alarm needs evidence that the error exceeds alpha: the test martingale
  against "error <= alpha" reaches 1/delta (equivalently, the anytime-valid lower confidence bound exceeds
  alpha), once at least ``audit.min_audited`` audited images are decided. With few audited images the
  upper bound is always above alpha; that alone triggers nothing.
  Repeated looks: the martingale's guarantee (Ville's inequality) holds uniformly over time, so checking
  after every decision, every hour, for years, keeps the false-alarm chance under delta per rule.
- **Fail-safe** (:func:`fail_safe`). In live mode, an audit alarm on the active site rule, or a drift
  alarm (``audit.fallback_on_drift``), withdraws the rule: the daemon is back in shadow mode on every node,
  says why (log, metric, banner, ``status``) and records it; an admin certifies again.
- **Drift.** Over the latest ``worklist.drift_window`` analysed images, the share flagged out of
  distribution and the predicted class mix are compared with what the bundle's test split showed
  (``manifest.reference``), or, while a site rule is in force, with what its calibration pool showed
  (the rule's ``reference``): three times the OOD share (and five points more), or a class mix more than
  0.2 away in total variation, is an alert.

Alerts are logged (``monitoring_alert``), exported (``cds_monitor_alert{kind}``) and shown as a banner
on the review page.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

from cds_daemon.common.binomial import anytime_lower_bound, binomial_upper_bound, sequential_evidence
from cds_daemon.common.config import Settings
from cds_daemon.common.manifest import Manifest
from cds_daemon.common.vocabulary import ReferralReason, TriageMode
from cds_daemon.ops.logs import get_logger
from cds_daemon.store import SiteRule, Store

log = get_logger("review")

OOD_REASONS = frozenset({ReferralReason.OOD_MAHALANOBIS, ReferralReason.OOD_ENERGY, ReferralReason.OOD_STAIN})
MIN_WINDOW = 50  # fewer recent images than this: too few to call drift
MIX_DISTANCE = 0.2


def sampled_for_audit(sop_instance_uid: str, fraction: float) -> bool:
    """Deterministic: the same image is always (or never) in the audit sample at a given fraction."""
    digest = hashlib.sha256(sop_instance_uid.encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


ALERT_KINDS = ("audit_bound", "site_rule_audit", "ood_drift", "class_mix_drift")


@dataclass(frozen=True)
class Alert:
    kind: str  # one of ALERT_KINDS
    text: str


@dataclass(frozen=True)
class Monitoring:
    audit: dict[str, dict[str, Any]]  # per model version
    drift: dict[str, Any]
    alerts: list[Alert] = field(default_factory=list)
    site_rule: dict[str, Any] | None = None  # the active site rule's audit (live mode)

    def to_json(self) -> dict[str, Any]:
        return {
            "audit": self.audit,
            "site_rule": self.site_rule,
            "drift": self.drift,
            "alerts": [asdict(a) for a in self.alerts],
        }


def audit_figures(counts: dict[str, int], *, alpha: float, delta: float, min_audited: int = 10) -> dict[str, Any]:
    """The audit counts with their error rate, bounds and whether they show the error above alpha (from
    ``min_audited`` decided images on)."""
    n, k = counts["decided"], counts["errors"]
    evidence = sequential_evidence(k, n, alpha)
    return {
        **counts,
        "error": k / n if n else None,
        "upper_bound": binomial_upper_bound(k, n, delta),
        "lower_bound": anytime_lower_bound(k, n, delta),
        "evidence": evidence,
        "alpha": alpha,
        "delta": delta,
        "exceeded": n >= min_audited and evidence >= 1.0 / delta,
    }


def check(
    store: Store,
    *,
    alpha: float,
    delta: float,
    reference: dict[str, Any] | None,
    window: int,
    rule: SiteRule | None = None,
    min_audited: int = 10,
) -> Monitoring:
    alerts: list[Alert] = []
    audit: dict[str, dict[str, Any]] = {}
    for version, counts in store.audit_results().items():
        audit[version] = figures = audit_figures(counts, alpha=alpha, delta=delta, min_audited=min_audited)
        if figures["exceeded"]:
            alerts.append(
                Alert(
                    "audit_bound",
                    f"model {version}: {figures['errors']} of {figures['decided']} audited finalised images wrong; "
                    f"the error among finalised images is above {alpha:.1%} (at least {figures['lower_bound']:.1%}, "
                    f"at {1 - delta:.0%} confidence, valid however often it is checked)",
                )
            )
    site: dict[str, Any] | None = None
    if rule is not None:
        counts = store.rule_audit(rule.id)
        site = {
            "rule_id": rule.id,
            **audit_figures(counts, alpha=rule.alpha, delta=rule.delta, min_audited=min_audited),
        }
        if site["exceeded"]:
            alerts.append(
                Alert(
                    "site_rule_audit",
                    f"site rule {rule.id}: {site['errors']} of {site['decided']} audited finalised images wrong; "
                    f"the error among what it finalises is above its alpha {rule.alpha:.1%} (at least "
                    f"{site['lower_bound']:.1%}, at {1 - rule.delta:.0%} confidence)",
                )
            )
    drift, drift_alerts = _drift(store, reference, window)
    return Monitoring(audit, drift, alerts + drift_alerts, site)


def _drift(store: Store, reference: dict[str, Any] | None, window: int) -> tuple[dict[str, Any], list[Alert]]:
    recent = store.recent_predictions(window)
    analysed = [(cls, reasons) for cls, reasons in recent if cls]
    ood = sum(1 for _, reasons in analysed if OOD_REASONS & set(reasons))
    mix: dict[str, float] = {}
    for cls, _ in analysed:
        mix[cls] = mix.get(cls, 0.0) + 1.0 / len(analysed)
    report: dict[str, Any] = {
        "window": len(analysed),
        "ood_rate": ood / len(analysed) if analysed else None,
        "predicted_mix": mix,
        "reference": reference,
    }
    if reference is None or len(analysed) < MIN_WINDOW:
        return report, []
    alerts = []
    ref_ood = float(reference.get("ood_rate", 0.0))
    rate = ood / len(analysed)
    if rate > max(3 * ref_ood, ref_ood + 0.05):
        alerts.append(
            Alert(
                "ood_drift",
                f"{rate:.0%} of the latest {len(analysed)} images look unlike the training data "
                f"({reference.get('source', 'the bundle test split')}: {ref_ood:.0%}): check the stain, the "
                "microscope and the camera",
            )
        )
    ref_mix = {str(k): float(v) for k, v in reference.get("predicted_mix", {}).items()}
    distance = 0.5 * sum(abs(mix.get(c, 0.0) - ref_mix.get(c, 0.0)) for c in set(mix) | set(ref_mix))
    report["mix_distance"] = distance
    if distance > MIX_DISTANCE:
        shares = ", ".join(f"{c} {mix.get(c, 0.0):.0%} (was {ref_mix.get(c, 0.0):.0%})" for c in sorted(ref_mix))
        alerts.append(Alert("class_mix_drift", f"predicted classes of the latest {len(analysed)} images: {shares}"))
    return report, alerts


def check_for(
    store: Store, manifest: Manifest | None, settings: Settings, model_sha256: str | None = None
) -> Monitoring:
    """``check`` with the alpha and delta the daemon finalises with, the bundle's reference figures and, in
    live mode, the active site rule of the bundle ``model_sha256``."""
    block = manifest.finalisation if manifest is not None else None
    alpha, delta = settings.triage.risk_levels()  # a bundle's own rule, where it has one and none is configured
    if block and settings.triage.risk_alpha is None:
        alpha = float(block["alpha"])
    if block and settings.triage.risk_delta is None:
        delta = float(block["delta"])
    reference = manifest.raw.get("reference") if manifest is not None else None
    live = settings.triage.mode == TriageMode.LIVE and model_sha256 is not None
    rule = store.active_rule(model_sha256) if live and model_sha256 is not None else None
    if rule is not None and rule.reference is not None:
        reference = rule.reference  # a site rule is watched against the cases it was certified on
    return check(
        store,
        alpha=alpha,
        delta=delta,
        reference=reference if isinstance(reference, dict) else None,
        window=settings.worklist.drift_window,
        rule=rule,
        min_audited=settings.audit.min_audited,
    )


DRIFT_KINDS = frozenset({"ood_drift", "class_mix_drift"})


def fail_safe(store: Store, settings: Settings, monitoring: Monitoring) -> str | None:
    """Withdraw the active site rule when the audit or (``audit.fallback_on_drift``) drift says so; the reason,
    or None when nothing was withdrawn. Every node then reviews everything (shadow) until an admin certifies
    and activates a rule again."""
    if settings.triage.mode != TriageMode.LIVE or monitoring.site_rule is None:
        return None
    reasons = [a.text for a in monitoring.alerts if a.kind == "site_rule_audit"]
    if settings.audit.fallback_on_drift:
        reasons += [f"drift: {a.text}" for a in monitoring.alerts if a.kind in DRIFT_KINDS]
    if not reasons:
        return None
    rule_id = int(monitoring.site_rule["rule_id"])
    reason = "; ".join(reasons)[:1000]
    if store.deactivate_rule(rule_id, actor="fail-safe", reason=reason, event="fallback"):
        log.error("triage_fallback", rule_id=rule_id, mode="shadow", reason=reason)
        return reason
    return None
