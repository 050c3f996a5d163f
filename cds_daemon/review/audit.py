"""Watching what the AI finalises in production: the blind audit sample, and drift from the bundle's test split.

- **Audit sample.** A fixed share of finalised images (``worklist.audit_fraction``, chosen from a hash of
  the SOP Instance UID, so a re-run picks the same ones) also goes to the worklist, unmarked. Reviewers'
  decisions on them measure the error among finalised images per model version, with its (1 - delta)
  Clopper-Pearson upper bound. When that bound exceeds the alpha the rule was fitted for, the
  guarantee no longer holds for this site's images: an alert.
- **Drift.** Over the latest ``worklist.drift_window`` analysed images, the share flagged out of
  distribution and the predicted class mix are compared with what the bundle's test split showed
  (``manifest.reference``): three times the OOD share (and five points more), or a class mix more than
  0.2 away in total variation, is an alert.

Alerts are logged (``monitoring_alert``), exported (``cds_monitor_alert{kind}``) and shown as a banner
on the review page.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

from cds_daemon.common.binomial import binomial_upper_bound
from cds_daemon.common.config import Settings
from cds_daemon.common.manifest import Manifest
from cds_daemon.common.vocabulary import ReferralReason
from cds_daemon.store import Store

OOD_REASONS = frozenset({ReferralReason.OOD_MAHALANOBIS, ReferralReason.OOD_ENERGY, ReferralReason.OOD_STAIN})
MIN_WINDOW = 50  # fewer recent images than this: too few to call drift
MIX_DISTANCE = 0.2
DEFAULT_ALPHA, DEFAULT_DELTA = 0.02, 0.1  # for a bundle without a finalisation rule


def sampled_for_audit(sop_instance_uid: str, fraction: float) -> bool:
    """Deterministic: the same image is always (or never) in the audit sample at a given fraction."""
    digest = hashlib.sha256(sop_instance_uid.encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


@dataclass(frozen=True)
class Alert:
    kind: str  # audit_bound | ood_drift | class_mix_drift
    text: str


@dataclass(frozen=True)
class Monitoring:
    audit: dict[str, dict[str, Any]]  # per model version
    drift: dict[str, Any]
    alerts: list[Alert] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"audit": self.audit, "drift": self.drift, "alerts": [asdict(a) for a in self.alerts]}


def check(store: Store, *, alpha: float, delta: float, reference: dict[str, Any] | None, window: int) -> Monitoring:
    alerts: list[Alert] = []
    audit: dict[str, dict[str, Any]] = {}
    for version, counts in store.audit_results().items():
        n, k = counts["decided"], counts["errors"]
        bound = binomial_upper_bound(k, n, delta)
        audit[version] = {**counts, "error": k / n if n else None, "upper_bound": bound, "alpha": alpha}
        if n and bound > alpha:
            alerts.append(
                Alert(
                    "audit_bound",
                    f"model {version}: {k} of {n} audited finalised images wrong; the error among finalised "
                    f"images may be up to {bound:.1%} (at {1 - delta:.0%} confidence), above the {alpha:.1%} "
                    "the finalisation rule is fitted for",
                )
            )
    drift, drift_alerts = _drift(store, reference, window)
    return Monitoring(audit, drift, alerts + drift_alerts)


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
                f"(the bundle's test split: {ref_ood:.0%}): check the stain, the microscope and the camera",
            )
        )
    ref_mix = {str(k): float(v) for k, v in reference.get("predicted_mix", {}).items()}
    distance = 0.5 * sum(abs(mix.get(c, 0.0) - ref_mix.get(c, 0.0)) for c in set(mix) | set(ref_mix))
    report["mix_distance"] = distance
    if distance > MIX_DISTANCE:
        shares = ", ".join(f"{c} {mix.get(c, 0.0):.0%} (was {ref_mix.get(c, 0.0):.0%})" for c in sorted(ref_mix))
        alerts.append(Alert("class_mix_drift", f"predicted classes of the latest {len(analysed)} images: {shares}"))
    return report, alerts


def check_for(store: Store, manifest: Manifest | None, settings: Settings) -> Monitoring:
    """``check`` with the alpha and delta the daemon finalises with and the bundle's reference figures."""
    block = manifest.finalisation if manifest is not None else None
    alpha = settings.triage.risk_alpha or (float(block["alpha"]) if block else DEFAULT_ALPHA)
    delta = settings.triage.risk_delta or (float(block["delta"]) if block else DEFAULT_DELTA)
    reference = manifest.raw.get("reference") if manifest is not None else None
    return check(
        store,
        alpha=alpha,
        delta=delta,
        reference=reference if isinstance(reference, dict) else None,
        window=settings.worklist.drift_window,
    )
