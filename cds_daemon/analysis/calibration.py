"""Site calibration: certify a finalisation rule on this site's own reviewed cases, and say where it stands.

The pool (:meth:`cds_daemon.store.Store.pool`) holds one row per image reviewed in shadow mode: the
finalisation confidence, whether nothing but the threshold referred it (a candidate), the AI class and the
reviewer's class. Certifying fits the same Learn-then-Test rule the bundle's calibration split was fitted
with (:func:`cds_daemon.analysis.risk.fit_finalisation`) on that pool, and stores it bound to the bundle's
hash; activating it puts it in force on every node (:mod:`cds_daemon.analysis.policy`). One code path for
the command line and the admin page.

What the guarantee means: with probability at least 1 - delta over the pool, the error rate among the images
the rule finalises is at most alpha, where an error is a disagreement with the site's reviewers (not with
histology), for images like the pool's. The audit and the drift alarm watch the second assumption.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cds_daemon.analysis.policy import BundleRules, resolve
from cds_daemon.analysis.risk import FinalisationRule, fit_finalisation, power_curve, reviews_for_stable_rule
from cds_daemon.common.config import Settings
from cds_daemon.store import PoolRow, SiteRule, StateError, Store

#: Pool sizes the projection looks at (as ``evaluate-logits --power``), beside the pool's own size.
POWER_SIZES = (271, 542, 1000, 2000, 4000)
POWER_REPS = 50


class CalibrationError(Exception):
    """A certification or activation that cannot be done; the message says why."""


@dataclass(frozen=True)
class PoolArrays:
    confidence: np.ndarray
    errors: np.ndarray
    candidates: np.ndarray
    max_id: int

    @classmethod
    def of(cls, rows: list[PoolRow]) -> PoolArrays:
        return cls(
            np.asarray([r.confidence for r in rows], dtype=np.float64),
            np.asarray([r.error for r in rows], dtype=bool),
            np.asarray([r.candidate for r in rows], dtype=bool),
            max((r.id for r in rows), default=0),
        )


def fit_on_pool(pool: PoolArrays, *, alpha: float, delta: float) -> FinalisationRule:
    return fit_finalisation(pool.confidence, pool.errors, pool.candidates, alpha=alpha, delta=delta)


def certify(store: Store, bundle: BundleRules, *, alpha: float, delta: float, actor: str) -> SiteRule:
    """Fit the rule on the bundle's pool and store it (not yet active). Refuses a rule that finalises nothing."""
    pool = PoolArrays.of(store.pool(bundle.identity))
    if pool.confidence.size == 0:
        raise CalibrationError(
            f"the calibration pool of bundle {bundle.identity[:16]} is empty: run in shadow mode and review cases first"
        )
    rule = fit_on_pool(pool, alpha=alpha, delta=delta)
    if rule.threshold is None:
        raise CalibrationError(
            f"no rule can be certified at alpha {alpha:g}, delta {delta:g} on {pool.confidence.size} reviewed images "
            f"({rule.n_candidates} candidates): the most confident candidates hold too many errors, or fewer than "
            "the rule needs; review more cases in shadow mode (see the projection in 'calibration status')"
        )
    return store.add_site_rule(bundle.identity, rule.to_json(), pool_max_id=pool.max_id, actor=actor)


def activate(store: Store, bundle: BundleRules, rule_id: int, *, actor: str) -> SiteRule:
    rule = store.site_rule(rule_id)
    if rule is None:
        raise CalibrationError(f"no site rule {rule_id}")
    if rule.model_sha256 != bundle.identity:
        raise CalibrationError(
            f"site rule {rule_id} was certified for bundle {rule.model_sha256[:16]}, not for the loaded bundle "
            f"{bundle.identity[:16]}: certify this bundle on its own pool"
        )
    try:
        return store.activate_rule(rule_id, actor=actor)
    except StateError as exc:
        raise CalibrationError(str(exc)) from exc


def deactivate(store: Store, bundle: BundleRules, *, actor: str, reason: str) -> SiteRule:
    rule = store.active_rule(bundle.identity)
    if rule is None:
        raise CalibrationError(f"no site rule is active for bundle {bundle.identity[:16]}")
    store.deactivate_rule(rule.id, actor=actor, reason=reason)
    return rule


def risk_coverage(pool: PoolArrays) -> list[tuple[float, float, float]]:
    """(threshold, coverage, error among finalised) for each distinct candidate confidence, highest first:
    the pool's risk-coverage curve (the admin page plots it)."""
    cand = pool.candidates
    order = np.argsort(-pool.confidence[cand], kind="stable")
    conf, wrong = pool.confidence[cand][order], pool.errors[cand][order]
    n = pool.confidence.size
    out: list[tuple[float, float, float]] = []
    if not conf.size:
        return out
    ends = np.flatnonzero(np.r_[conf[1:] != conf[:-1], True]) + 1
    cumulative = np.cumsum(wrong)
    for end in ends:
        out.append((float(conf[end - 1]), end / n, float(cumulative[end - 1]) / end))
    return out


def status(settings: Settings, store: Store, bundle: BundleRules, *, power: bool = True) -> dict[str, Any]:
    """Everything ``calibration status`` and the admin page show: mode, pool, the rule that would be certified
    now, the projection of reviews still needed, the rules and their history."""
    alpha, delta = settings.triage.risk_levels()
    rows = store.pool(bundle.identity)
    pool = PoolArrays.of(rows)
    policy = resolve(settings, bundle, store)
    by_class: dict[str, dict[str, int]] = {}
    for r in rows:
        entry = by_class.setdefault(r.final_class or "non_diagnostic", {"reviewed": 0, "ai_agreed": 0})
        entry["reviewed"] += 1
        entry["ai_agreed"] += int(not r.error)
    would = fit_on_pool(pool, alpha=alpha, delta=delta).to_json() if rows else None
    if would is not None:
        would["pool_coverage"] = would["n_finalised"] / len(rows)
    projection: dict[str, Any] | None = None
    if power and rows:
        sizes = tuple(sorted({len(rows), *POWER_SIZES}))
        points = power_curve(
            pool.confidence, pool.errors, pool.candidates, sizes, alpha=alpha, delta=delta, reps=POWER_REPS
        )
        more = reviews_for_stable_rule(points, len(rows))
        projection = {"points": [p.to_json() for p in points], "more_reviews_for_stable_rule": more}
    return {
        "bundle": bundle.identity,
        "configured_mode": str(settings.triage.mode),
        "mode": str(policy.mode),
        "why": policy.why,
        "active_rule_id": policy.rule_id,
        "alpha": alpha,
        "delta": delta,
        "pool": {
            "size": len(rows),
            "candidates": int(pool.candidates.sum()),
            "errors": int(pool.errors.sum()),
            "by_reviewer_class": by_class,
        },
        "would_certify": would,
        "projection": projection,
        "rules": [rule_json(r) for r in store.site_rules(bundle.identity)],
        "events": [e.__dict__ for e in store.triage_events(bundle.identity, limit=20)],
        "risk_coverage": risk_coverage(pool),
    }


def rule_json(rule: SiteRule) -> dict[str, Any]:
    return dict(rule.__dict__)
