"""What may be finalised without review right now: the triage mode in force and its rule.

``triage.mode`` (config) is what the operator asked for; :func:`resolve` says what applies to the next image:
- ``shadow``: nothing is finalised; every image is referred (reason ``site_validation``) and its review
  enters the site calibration pool.
- ``live``: the site rule certified on this site's pool and activated for the loaded bundle's hash (read from
  the store for every image, so an activation on any node applies on all of them without a restart). With no
  active rule (none certified yet, a new bundle, or the fail-safe withdrew it) it is ``shadow``, and says why.
- ``bundle``: the rule fitted on the bundle's own calibration split (``triage.risk_alpha``/``risk_delta``
  refit it; ``triage.confidence_threshold`` replaces it and voids the guarantee).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cds_daemon.analysis.risk import FinalisationRule, rule_from_manifest
from cds_daemon.common.config import Settings
from cds_daemon.common.manifest import Manifest, bundle_identity, read_manifest
from cds_daemon.common.vocabulary import TriageMode

if TYPE_CHECKING:
    from cds_daemon.store import SiteRule, Store


class BundleRules:
    """A bundle's identity and its own finalisation rule (refitted once per other alpha or delta): what the
    policy needs of a bundle, without loading its graphs (the CLI and the web page use it too)."""

    def __init__(self, manifest: Manifest, identity: str) -> None:
        self.manifest = manifest
        self.identity = identity
        self._rules: dict[tuple[float | None, float | None], FinalisationRule | None] = {}

    @classmethod
    def of(cls, bundle_dir: Path) -> BundleRules:
        return cls(read_manifest(bundle_dir), bundle_identity(bundle_dir))

    def finalisation(self, alpha: float | None = None, delta: float | None = None) -> FinalisationRule | None:
        """The bundle's rule, refitted for another alpha or delta; None for an older bundle without one."""
        key = (alpha, delta)
        if key not in self._rules:
            block = self.manifest.finalisation
            self._rules[key] = None if block is None else rule_from_manifest(block, alpha=alpha, delta=delta)
        return self._rules[key]

    def finalisation_threshold(self, alpha: float | None = None, delta: float | None = None) -> float:
        """Calibrated confidence at or above which a field nothing else refers is finalised (inf: never)."""
        rule = self.finalisation(alpha, delta)
        if rule is None:
            return self.manifest.confidence_threshold
        return math.inf if rule.threshold is None else rule.threshold


@dataclass(frozen=True)
class FinalisationPolicy:
    configured: TriageMode  # triage.mode as configured
    mode: TriageMode  # what applies: live without an active rule is shadow
    threshold: float  # finalisation confidence at or above which a candidate is finalised (inf: none)
    rule_id: int | None  # the active site rule (live)
    rule_text: str | None  # what a finalised SR names as the rule that finalised it
    why: str  # one line for check, status, health and the review page

    @property
    def finalises(self) -> bool:
        return self.mode != TriageMode.SHADOW and math.isfinite(self.threshold)


def site_rule_text(rule: SiteRule) -> str:
    """How an SR names a site rule: id, bundle, alpha, delta, pool size and the bound on its errors."""
    return (
        f"site rule {rule.id} (bundle {rule.model_sha256[:16]}): alpha {rule.alpha:g}, delta {rule.delta:g}, "
        f"n {rule.n_finalised} of {rule.n_pool} reviewed, {rule.errors} errors, bound {rule.upper_bound:.4f}, "
        f"threshold {rule.threshold:.6f}, certified by {rule.certified_by} at {rule.certified_at}"
    )


def bundle_threshold(settings: Settings, engine: BundleRules) -> float:
    """The bundle mode's threshold: a fixed one from the config, else the bundle's rule (refitted)."""
    fixed = settings.triage.confidence_threshold
    if fixed is not None:
        return fixed
    return engine.finalisation_threshold(settings.triage.risk_alpha, settings.triage.risk_delta)


def bundle_policy(settings: Settings, engine: BundleRules) -> FinalisationPolicy:
    t = settings.triage
    threshold = bundle_threshold(settings, engine)
    rule = engine.finalisation(t.risk_alpha, t.risk_delta)
    if t.confidence_threshold is not None:
        text = f"bundle mode, fixed threshold {threshold:.6f} from the configuration (no guarantee)"
    elif rule is None:
        text = f"bundle mode, the bundle's confidence threshold {threshold:.6f} (no fitted rule)"
    else:
        text = (
            f"bundle rule (calibration split of {engine.manifest.name} {engine.manifest.version}): alpha "
            f"{rule.alpha:g}, delta {rule.delta:g}, n {rule.n_finalised} of {rule.n_calibration}, {rule.errors} "
            f"errors, bound {rule.upper_bound:.4f}, threshold {threshold:.6f}"
        )
    why = (
        "bundle mode: finalising with the rule fitted on the bundle's own calibration split, not on this site's "
        "cases (for demos, or a bundle validated elsewhere)"
    )
    return FinalisationPolicy(TriageMode.BUNDLE, TriageMode.BUNDLE, threshold, None, text, why)


def _shadow(configured: TriageMode, why: str) -> FinalisationPolicy:
    return FinalisationPolicy(configured, TriageMode.SHADOW, math.inf, None, None, why)


def no_rule_why(store: Store, model_sha256: str) -> str:
    """Why live mode is reviewing everything for this bundle: never certified, or the last rule withdrawn."""
    events = [e for e in store.triage_events(model_sha256, limit=20) if e.event in {"fallback", "deactivated"}]
    last = events[0] if events else None
    base = f"live mode, but no site rule is active for bundle {model_sha256[:16]}: every case is reviewed"
    if last is not None:
        by = "the fail-safe" if last.event == "fallback" else last.actor
        return f"{base}; site rule {last.rule_id} was withdrawn by {by} at {last.at}: {last.reason}"
    return f"{base} until one is certified on this site's shadow reviews and activated (cds-daemon calibration)"


def resolve(settings: Settings, engine: BundleRules, store: Store | None) -> FinalisationPolicy:
    """The policy for the next image (live mode reads the active rule from ``store``)."""
    mode = settings.triage.mode
    if mode == TriageMode.BUNDLE:
        return bundle_policy(settings, engine)
    if mode == TriageMode.SHADOW:
        return _shadow(mode, "shadow mode: every case is reviewed, and the reviews build the site calibration pool")
    if store is None:
        return _shadow(mode, "live mode without the daemon's store (replay): every case is reviewed")
    rule = store.active_rule(engine.identity)
    if rule is None or rule.threshold is None:
        return _shadow(mode, no_rule_why(store, engine.identity))
    why = f"live mode: finalising with site rule {rule.id}, certified on this site's reviewed cases"
    return FinalisationPolicy(mode, TriageMode.LIVE, rule.threshold, rule.id, site_rule_text(rule), why)
