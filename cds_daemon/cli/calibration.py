"""``cds-daemon calibration status|certify|activate|deactivate``: site calibration from a shell.

``certify``, ``activate`` and ``deactivate`` need an admin's password or token and are audited; the running
daemons pick an activation up with the next image (no restart). The same operations are on the admin page.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import TYPE_CHECKING, Any

from cds_daemon.cli.worklist import EXIT_FAILED, EXIT_OK, log_to_stderr, open_store, proven_user
from cds_daemon.common.config import Settings
from cds_daemon.common.vocabulary import UserRole
from cds_daemon.store import Store

if TYPE_CHECKING:
    from cds_daemon.analysis.policy import BundleRules


def _bundle(settings: Settings) -> BundleRules | None:
    from cds_daemon.analysis.policy import BundleRules

    if settings.model_bundle is None:
        print("cds-daemon: model_bundle is not configured: a site rule is bound to one bundle", file=sys.stderr)
        return None
    try:
        return BundleRules.of(settings.model_bundle)
    except (OSError, ValueError) as exc:
        print(f"cds-daemon: cannot read the model bundle: {exc}", file=sys.stderr)
        return None


def _admin(store: Store, args: argparse.Namespace, action: str) -> str | None:
    """The admin who asks, proven; a refusal is audited."""
    user = proven_user(store, args.admin, args)
    if user is not None and user.role != UserRole.ADMIN:
        print(f"cds-daemon: {user.username} is not an admin", file=sys.stderr)
        user = None
    if user is None:
        store.audit(f"cli:{getpass.getuser()}", f"cli:calibration-{action}-refused", None, admin=args.admin)
        return None
    return f"{user.username} (cli:{getpass.getuser()})"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.1%}"


def print_status(report: dict[str, Any]) -> None:
    pool = report["pool"]
    print(f"triage mode: {report['mode']} (configured {report['configured_mode']}): {report['why']}")
    print(f"bundle: {report['bundle']}")
    classes = ", ".join(
        f"{c} {v['reviewed']} ({v['ai_agreed']} as the AI said)" for c, v in sorted(pool["by_reviewer_class"].items())
    )
    print(
        f"calibration pool: {pool['size']} reviewed in shadow mode, {pool['candidates']} candidates, "
        f"{pool['errors']} AI errors" + (f"; by the reviewers' class: {classes}" if classes else "")
    )
    would = report["would_certify"]
    alpha, delta = report["alpha"], report["delta"]
    if would is None:
        print(f"certifiable now at alpha {alpha:g}, delta {delta:g}: nothing (the pool is empty)")
    elif would["threshold"] is None:
        print(
            f"certifiable now at alpha {alpha:g}, delta {delta:g}: no rule (the most confident candidates hold "
            "too many errors, or there are too few of them)"
        )
    else:
        print(
            f"certifiable now at alpha {alpha:g}, delta {delta:g}: threshold {would['threshold']:.6f}, finalises "
            f"{would['n_finalised']} of {would['n_calibration']} ({_pct(would['pool_coverage'])}), "
            f"{would['errors']} errors, upper bound {would['upper_bound']:.2%}"
        )
    projection = report["projection"]
    if projection is not None:
        for p in projection["points"]:
            print(
                f"  projected with {p['size']:>5} reviewed: finalises {_pct(p['coverage_mean'])} on average "
                f"(10th percentile {_pct(p['coverage_p10'])})"
            )
        more = projection["more_reviews_for_stable_rule"]
        if more == 0:
            print("  the pool is large enough for a stable rule")
        elif more is None:
            print("  a stable rule needs more reviews than the projection reaches (4000)")
        else:
            print(f"  a stable rule needs about {more} more reviews")
    for r in report["rules"]:
        state = (
            "ACTIVE"
            if r["active"]
            else (f"inactive ({r['deactivation_reason']})" if r["deactivated_at"] else "certified")
        )
        threshold = "none" if r["threshold"] is None else f"{r['threshold']:.6f}"
        print(
            f"rule {r['id']}: alpha {r['alpha']:g}, delta {r['delta']:g}, threshold {threshold}, "
            f"{r['n_finalised']} of {r['n_pool']} finalised, {r['errors']} errors, bound {r['upper_bound']:.2%}; "
            f"certified by {r['certified_by']} at {r['certified_at']}; {state}"
        )


def _cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from cds_daemon.analysis.calibration import status

    bundle = _bundle(settings)
    store = None if bundle is None else open_store(settings)
    if store is None or bundle is None:
        return EXIT_FAILED
    try:
        report = status(settings, store, bundle, power=not args.no_projection)
    finally:
        store.close()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_status(report)
    return EXIT_OK


def _change(settings: Settings, args: argparse.Namespace, action: str) -> int:
    from cds_daemon.analysis import calibration

    log_to_stderr(settings)
    bundle = _bundle(settings)
    store = None if bundle is None else open_store(settings)
    if store is None or bundle is None:
        return EXIT_FAILED
    try:
        actor = _admin(store, args, action)
        if actor is None:
            return EXIT_FAILED
        if action == "certify":
            default_alpha, default_delta = settings.triage.risk_levels()
            alpha = default_alpha if args.alpha is None else args.alpha
            delta = default_delta if args.delta is None else args.delta
            rule = calibration.certify(store, bundle, alpha=alpha, delta=delta, actor=actor)
            done = f"certified site rule {rule.id} (not active yet: cds-daemon calibration activate {rule.id})"
        elif action == "activate":
            rule = calibration.activate(store, bundle, args.rule, actor=actor)
            done = f"site rule {rule.id} is active for bundle {rule.model_sha256[:16]}"
        else:
            rule = calibration.deactivate(store, bundle, actor=actor, reason=args.reason)
            done = f"site rule {rule.id} deactivated: every case is reviewed again"
    except calibration.CalibrationError as exc:
        print(f"cds-daemon: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        store.close()
    print(json.dumps(calibration.rule_json(rule), indent=2) if args.json else done)
    return EXIT_OK


def add_parsers(sub: Any) -> None:
    """Register the ``calibration`` command group on the main parser's subparsers."""
    cal = sub.add_parser("calibration", help="site calibration: status, certify, activate, deactivate")
    cal_sub = cal.add_subparsers(dest="calibration_command", required=True)
    st = cal_sub.add_parser("status", help="mode, pool, the rule certifiable now, projection, certified rules")
    st.add_argument("--json", action="store_true")
    st.add_argument("--no-projection", action="store_true", help="skip the bootstrap projection (faster)")
    st.set_defaults(func=_cmd_status)

    def admin_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--admin", required=True, help="the admin who certifies (password asked, or --token)")
        p.add_argument("--token", help="from 'user token' (or $CDS_REVIEW_TOKEN)")
        p.add_argument("--password-stdin", action="store_true", help="read the admin's password from stdin")
        p.add_argument("--json", action="store_true")

    certify = cal_sub.add_parser("certify", help="fit and store a site rule on the pool (not yet active)")
    certify.add_argument("--alpha", type=float, help="error allowed among finalised (default triage.risk_alpha, 0.02)")
    certify.add_argument("--delta", type=float, help="chance the error exceeds alpha (default triage.risk_delta, 0.1)")
    admin_args(certify)
    certify.set_defaults(func=lambda s, a: _change(s, a, "certify"))
    activate = cal_sub.add_parser("activate", help="put a certified rule in force on every node")
    activate.add_argument("rule", type=int)
    admin_args(activate)
    activate.set_defaults(func=lambda s, a: _change(s, a, "activate"))
    deactivate = cal_sub.add_parser("deactivate", help="take the active rule out of force (back to review all)")
    deactivate.add_argument("--reason", required=True)
    admin_args(deactivate)
    deactivate.set_defaults(func=lambda s, a: _change(s, a, "deactivate"))
