"""``python -m model_build <command>``.

Adding a command: write one ``_add_<name>(subparsers)`` function that creates its parser and sets
``handler`` (a function ``argparse.Namespace -> int`` exit code), then append it to ``COMMANDS``.
Handlers import their heavy dependencies (torch, onnx, matplotlib) inside the function so that one
command never pays for, or requires, another's.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from model_build.cli_build import register as register_build

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def _evaluate_logits(args: argparse.Namespace) -> int:
    from model_build.evaluate_logits import format_summary, run_evaluate_logits

    try:
        result = run_evaluate_logits(
            args.data_dir,
            args.out,
            alpha=args.alpha,
            confidence_threshold=args.confidence_threshold,
            risk_alpha=args.risk_alpha,
            risk_delta=args.risk_delta,
            n_boot=args.n_boot,
            seed=args.seed,
        )
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(result))
    print(f"report written to {args.out}")
    return 0


def _add_evaluate_logits(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "evaluate-logits",
        help="calibrate and evaluate the ThyroidEffi paper's per-image logits",
        description="Fit T on val row 0, conformal thresholds on val; report Basic, T-scaled and 13-view "
        "mean on test (macro-F1, AUC, ECE, conformal coverage, referral, McNemar).",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder with {val,test}_not_aug.csv (default: $CDS_SHARED_DIR/data/thyroideffi_logits, "
        "else ../shared/data/thyroideffi_logits beside the repo)",
    )
    p.add_argument(
        "--out", type=Path, default=Path("build/evaluate-logits"), help="report folder (default: %(default)s)"
    )
    p.add_argument("--alpha", type=_unit_interval, default=0.1, help="conformal miscoverage (default: %(default)s)")
    p.add_argument(
        "--confidence-threshold",
        type=_unit_interval,
        default=0.6,
        help="refer below this calibrated confidence (default: %(default)s)",
    )
    p.add_argument(
        "--risk-alpha",
        type=_unit_interval,
        default=0.02,
        help="finalisation: error rate allowed among finalised images (default: %(default)s)",
    )
    p.add_argument(
        "--risk-delta",
        type=_unit_interval,
        default=0.1,
        help="finalisation: chance the rule exceeds it (default: %(default)s)",
    )
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples, 0 = none (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    p.set_defaults(handler=_evaluate_logits)


def _unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1), got {text}")
    return value


def _evaluate(args: argparse.Namespace) -> int:
    from cds_daemon.common.manifest import BundleError
    from model_build.evaluate import format_summary, run_evaluate

    try:
        result = run_evaluate(args.bundle, args.data, args.out, threads=args.threads, n_boot=args.n_boot)
    except (FileNotFoundError, ValueError, BundleError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(result))
    if args.out is not None:
        print(f"report written to {args.out}")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "evaluate",
        help="a bundle, as the daemon runs it, on a labelled folder of your own images",
        description="DATA: a folder per class, a folder with labels.csv, or a CSV (path,label,case_id). Prints "
        "macro-F1, ECE, the share finalised without review with its error and swaps, and the referral reasons.",
    )
    p.add_argument("bundle", type=Path, metavar="BUNDLE")
    p.add_argument("data", type=Path, metavar="DATA")
    p.add_argument("--out", type=Path, default=None, help="also write a report folder")
    p.add_argument("--threads", type=int, default=2, help="default: %(default)s")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default: %(default)s)")
    p.set_defaults(handler=_evaluate)


COMMANDS: tuple[Register, ...] = (_add_evaluate_logits, _add_evaluate, register_build)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model_build", description="ThyroidEffi model builder")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
