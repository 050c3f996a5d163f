"""The ``cds-daemon`` command line: serve, check, status, replay, worklist, user."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cds_daemon.cli.calibration import add_parsers as add_calibration_parsers
from cds_daemon.cli.worklist import add_parsers as add_review_parsers
from cds_daemon.common.config import ConfigError, Settings, load_settings
from cds_daemon.ops.logs import configure_logging

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_CONFIG = 2


def _cmd_serve(settings: Settings, _args: argparse.Namespace) -> int:
    from cds_daemon.service import serve

    configure_logging(settings.log_level)
    return serve(settings)


def _check_data_dir(path: Path) -> tuple[bool, str]:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".check-", delete=True) as fh:
            fh.write(b"ok")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        return False, f"data directory {path} is not writable: {exc}"
    return True, f"data directory {path} is writable"


def _cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    from cds_daemon.egress import dicomweb, mllp
    from cds_daemon.egress.peers import echo

    results: list[dict[str, object]] = [{"check": "config", "ok": True, "detail": "configuration is valid"}]
    ok, detail = _check_data_dir(settings.storage.data_dir)
    results.append({"check": "data_dir", "ok": ok, "detail": detail})
    if settings.model_bundle is not None:
        from cds_daemon.analysis.bundle import load_bundle
        from cds_daemon.common.manifest import BundleError

        try:
            manifest = load_bundle(settings.model_bundle).manifest
            results.append(
                {
                    "check": "model_bundle",
                    "ok": True,
                    "detail": f"{manifest.name} {manifest.version}: every file's SHA-256 matches",
                }
            )
        except (BundleError, OSError) as exc:
            results.append({"check": "model_bundle", "ok": False, "detail": str(exc)})
    results.append(_triage_check(settings))
    for dest in [] if args.offline else settings.destinations:
        if dest.kind == "dicomweb":
            res = dicomweb.check(dest, timeout_s=args.timeout)
        elif dest.kind == "hl7":
            res = mllp.check(dest, timeout_s=args.timeout)
        else:
            res = echo(dest, settings.listener.ae_title, timeout_s=args.timeout)
        results.append(
            {
                "check": f"destination:{dest.name}",
                "ok": res.ok,
                "detail": f"{dest.address}: {res.detail} ({res.ms} ms)",
            }
        )
    passed = all(r["ok"] for r in results)
    if args.json:
        print(json.dumps({"ok": passed, "checks": results}, indent=2))
    else:
        for r in results:
            verdict = ("WARN" if r.get("warning") else "PASS") if r["ok"] else "FAIL"
            print(f"{verdict}  {r['check']}: {r['detail']}")
        print("all checks passed" if passed else "some checks FAILED")
    return EXIT_OK if passed else EXIT_CHECK_FAILED


def _triage_check(settings: Settings) -> dict[str, object]:
    """What ``check`` says about the triage mode: bundle mode warns; live mode names the active rule."""
    from cds_daemon.common.vocabulary import TriageMode

    mode = settings.triage.mode
    if mode == TriageMode.SHADOW:
        detail = "shadow: nothing is finalised; every case is reviewed and the reviews build the calibration pool"
        return {"check": "triage", "ok": True, "detail": detail}
    if mode == TriageMode.BUNDLE:
        detail = (
            "bundle: finalising with the rule fitted on the bundle's own calibration split, not certified on this "
            "site's cases (demos, or a bundle validated elsewhere); a site certifies its own rule in shadow mode"
        )
        return {"check": "triage", "ok": True, "warning": True, "detail": detail}
    db = settings.storage.database
    if (isinstance(db, Path) and not db.exists()) or settings.model_bundle is None:
        return {"check": "triage", "ok": True, "warning": True, "detail": "live: no site rule yet (no store)"}
    from cds_daemon.analysis.policy import BundleRules, resolve
    from cds_daemon.store import Store, StoreUnavailable

    try:
        store = Store(db)
    except StoreUnavailable as exc:
        return {"check": "triage", "ok": False, "detail": f"live: the store does not answer ({exc})"}
    try:
        policy = resolve(settings, BundleRules.of(settings.model_bundle), store)
    except OSError as exc:
        return {"check": "triage", "ok": False, "detail": f"live: cannot read the bundle ({exc})"}
    finally:
        store.close()
    return {"check": "triage", "ok": True, "warning": policy.mode != TriageMode.LIVE, "detail": policy.why}


def _cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from cds_daemon.store import Store, StoreUnavailable
    from cds_daemon.store.database import redact

    db = settings.storage.database
    if isinstance(db, Path) and not db.exists():
        print(f"no database at {db}: the daemon has not run with this data directory", file=sys.stderr)
        return EXIT_CHECK_FAILED
    try:
        store = Store(db)
    except StoreUnavailable as exc:
        print(f"cds-daemon: {exc}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    try:
        claims = store.claims()
        report: dict[str, Any] = {
            "database": redact(str(db)),
            "nodes": [n | {"claims": claims.get(n["node_id"], {})} for n in store.nodes()],
            "schema_version": store.schema_version,
            "instances": store.counts_by_state(),
            "slides_waiting": store.slides_waiting(),
            "rejections": store.rejection_counts(),
            "recent_rejections": store.recent_rejections(),
            "outbox": store.outbox_counts(),
            "dead_letters": [
                {
                    "kind": d.kind,
                    "destination": d.destination,
                    "source_uid": d.sop_instance_uid,
                    "object_uid": d.object_uid,
                    "attempts": d.attempts,
                    "error": d.last_error,
                }
                for d in store.dead_letters()
            ],
            "worklist": store.worklist_counts(),
            "review_agreement": store.agreement(),
            **_finalisation_and_monitoring(settings, store),
        }
    finally:
        store.close()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"database: {report['database']} (schema {report['schema_version']})")
        for n in report["nodes"]:
            held = ", ".join(f"{k} {v}" for k, v in n["claims"].items()) or "nothing"
            print(
                f"node {n['node_id']} on {n['host']} (pid {n['pid']}, {n['version']}): "
                f"last seen {n['last_seen']}, holds {held}"
            )
            if n.get("runtime"):
                print(f"  model: {n['runtime']}")
        print("instances:")
        for state, n in report["instances"].items():
            print(f"  {state:<11} {n}")
        if report["slides_waiting"]:
            print(f"  slides in their quiet period (levels still arriving): {report['slides_waiting']}")
        print("rejections:" + ("" if report["rejections"] else " none"))
        for key, n in sorted(report["rejections"].items()):
            print(f"  {n:>6}  {key}")
        for r in report["recent_rejections"][:5]:
            print(f"  latest  {r['at']}  {r['status']} from {r['calling_ae']}@{r['peer_address']}: {r['reason']}")
        print("outbox: " + ", ".join(f"{k} {v}" for k, v in report["outbox"].items()))
        for d in report["dead_letters"]:
            print(
                f"  DEAD  {d['kind']} -> {d['destination']} after {d['attempts']} attempts: {d['error']}"
                f" (source {d['source_uid']})"
            )
        print("worklist: " + ", ".join(f"{k} {v}" for k, v in report["worklist"].items()))
        _print_agreement(report["review_agreement"])
        _print_monitoring(report)
    return EXIT_OK


def _finalisation_and_monitoring(settings: Settings, store: Any) -> dict[str, Any]:
    """The triage mode in force (and why), the bundle's own rule, and the production checks (audit, drift)."""
    from cds_daemon.analysis.policy import BundleRules, resolve
    from cds_daemon.common.manifest import BundleError
    from cds_daemon.review.audit import check_for

    bundle = None
    if settings.model_bundle is not None:
        try:
            bundle = BundleRules.of(settings.model_bundle)
        except (BundleError, OSError):
            bundle = None
    triage: dict[str, Any] = {"configured": str(settings.triage.mode), "mode": None, "why": "no readable bundle"}
    rule = None
    if bundle is not None:
        policy = resolve(settings, bundle, store)
        triage = {"configured": str(policy.configured), "mode": str(policy.mode), "rule_id": policy.rule_id}
        triage |= {"why": policy.why, "rule": policy.rule_text}
        found = bundle.finalisation(settings.triage.risk_alpha, settings.triage.risk_delta)
        rule = None if found is None else found.to_json()
    monitoring = check_for(
        store, bundle.manifest if bundle else None, settings, bundle.identity if bundle else None
    ).to_json()
    return {"triage": triage, "finalisation": rule, "monitoring": monitoring}


def _print_monitoring(report: dict[str, Any]) -> None:
    triage = report["triage"]
    print(f"triage mode: {triage['mode']} (configured {triage['configured']}): {triage['why']}")
    if triage.get("rule"):
        print(f"  finalising with: {triage['rule']}")
    rule = report["finalisation"]
    if rule is not None:
        threshold = "none (every image is referred)" if rule["threshold"] is None else f"{rule['threshold']:.4f}"
        print(
            f"bundle rule: error <= {rule['alpha']:.1%} with {1 - rule['delta']:.0%} confidence; confidence "
            f"threshold {threshold} ({rule['n_finalised']} of {rule['n_calibration']} calibration images)"
        )
    audits = [(f"model {v}", a) for v, a in report["monitoring"]["audit"].items()]
    if report["monitoring"]["site_rule"] is not None:
        audits.append((f"site rule {report['monitoring']['site_rule']['rule_id']}", report["monitoring"]["site_rule"]))
    for name, a in audits:
        err = "—" if a["error"] is None else f"{a['error']:.1%}"
        print(
            f"audit {name}: {a['sampled']} sampled, {a['decided']} decided, {a['errors']} wrong "
            f"(error {err}, bounds {a['lower_bound']:.1%} .. {a['upper_bound']:.1%})"
        )
    for alert in report["monitoring"]["alerts"]:
        print(f"ALERT {alert['kind']}: {alert['text']}")


def _print_agreement(agreement: dict[str, Any]) -> None:
    """AI vs reviewer per AI class: how often the reviewer kept the class, and the override rate."""
    rate = agreement["override_rate"]
    overall = "" if rate is None else f", override rate {rate:.1%}"
    print(f"review agreement: {agreement['decisions']} decisions, {agreement['overrides']} overrides{overall}")
    for ai_class, finals in sorted(agreement["pairs"].items()):
        total = sum(finals.values())
        kept = finals.get(ai_class, 0)
        mix = ", ".join(f"{k} {v}" for k, v in sorted(finals.items()))
        print(f"  AI {ai_class:<14} {total:>5} reviewed, {kept / total:.0%} kept ({mix})")


def _cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    """Run the pipeline on local files, no PACS and no store: for troubleshooting."""
    from cds_daemon.analysis.decode import DecodeError
    from cds_daemon.analysis.engine import Engine
    from cds_daemon.analysis.pipeline import prediction_record, process_image
    from cds_daemon.common.manifest import BundleError
    from cds_daemon.reports.files import encode

    bundle = args.bundle or settings.model_bundle
    if bundle is None:
        print("cds-daemon: replay needs a model bundle (--bundle or model_bundle in the config)", file=sys.stderr)
        return EXIT_CONFIG
    try:
        engine = Engine(bundle, threads=settings.model_threads(), chunk=settings.backbone_chunk)
    except (BundleError, OSError) as exc:
        print(f"cds-daemon: model bundle {bundle}: {exc}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    args.out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path in args.files:
        try:
            processed = process_image(path, engine, settings)
        except (DecodeError, OSError, ValueError) as exc:
            failures += 1
            print(json.dumps({"file": str(path), "error": str(exc)}))
            continue
        target = args.out / path.stem
        target.mkdir(exist_ok=True)
        for kind, ds in processed.objects:
            (target / f"{kind}.dcm").write_bytes(encode(ds))
        record = prediction_record(processed)
        summary = {
            "file": str(path),
            "predicted": record.predicted,
            "probabilities": record.probabilities,
            "referred": record.referred,
            "reasons": record.reasons,
            "outputs": str(target),
        }
        (target / "result.json").write_text(json.dumps({**summary, "detail": record.detail}, indent=2))
        print(json.dumps(summary))
    return EXIT_CHECK_FAILED if failures else EXIT_OK


Command = Callable[[Settings, argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cds-daemon", description=__doc__)
    parser.add_argument("--config", type=Path, help="TOML config file (default: $CDS_CONFIG, else built-ins)")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the service (DICOM listener and pipeline)")
    serve.set_defaults(func=_cmd_serve)
    check = sub.add_parser("check", help="validate config and data dir, C-ECHO every destination")
    check.add_argument("--json", action="store_true")
    check.add_argument("--timeout", type=float, default=10.0, help="seconds per C-ECHO")
    check.add_argument("--offline", action="store_true", help="skip the C-ECHOs (used before start by systemd)")
    check.set_defaults(func=_cmd_check)
    status = sub.add_parser("status", help="counts per state from the store")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_cmd_status)
    replay = sub.add_parser("replay", help="run the pipeline on local DICOM files, write results to a folder")
    replay.add_argument("files", nargs="+", type=Path)
    replay.add_argument("--out", type=Path, default=Path("replay-out"))
    replay.add_argument("--bundle", type=Path, help="model bundle (default: model_bundle from the config)")
    replay.set_defaults(func=_cmd_replay)
    add_review_parsers(sub)
    add_calibration_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Files the daemon writes (database, spool, results, keys) are for its own user and group only, whether
    # systemd started it (UMask=0027 as well) or someone ran it by hand.
    os.umask(0o027)
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"cds-daemon: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    func: Command = args.func
    return func(settings, args)


if __name__ == "__main__":
    sys.exit(main())
