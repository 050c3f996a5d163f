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
            resplits=args.resplits,
            power=args.power,
            power_reps=args.power_reps,
            site_simulation=args.site_simulation,
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
        help="folder with {val,test}_not_aug.csv (default: the copy in model_build/data/thyroideffi_logits, "
        "or $CDS_SHARED_DIR/data/thyroideffi_logits when that variable is set and holds them)",
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
    p.add_argument("--seed", type=int, default=0, help="bootstrap, resplit and simulation seed (default: %(default)s)")
    p.add_argument(
        "--resplits",
        type=_positive_int,
        default=0,
        metavar="N",
        help="refit the finalisation rule on N random stratified halves of val + test and measure it on the other "
        "half (resplits.png)",
    )
    p.add_argument(
        "--power",
        action="store_true",
        help="expected share finalised against calibration size, by bootstrap from val + test (power.png)",
    )
    p.add_argument("--power-reps", type=_positive_int, default=200, help="bootstraps per size (default: %(default)s)")
    p.add_argument(
        "--site-simulation",
        type=_positive_int,
        nargs="?",
        const=50,
        default=0,
        metavar="R",
        help="stream val + test in R random orders (default R: %(const)s) as shadow-mode reviews, certify a rule "
        "every 100 and measure it on the images still to come (site_simulation.png)",
    )
    p.set_defaults(handler=_evaluate_logits)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1), got {text}")
    return value


def _evaluate(args: argparse.Namespace) -> int:
    if args.data is None:
        if not args.resplits:
            print("error: DATA is required unless --resplits is given", file=sys.stderr)
            return 2
        return _evaluate_resplits_only(args)
    from cds_daemon.common.manifest import BundleError
    from model_build.evaluate import format_summary, run_evaluate

    try:
        result = run_evaluate(
            args.bundle,
            args.data,
            args.out,
            threads=args.threads,
            n_boot=args.n_boot,
            seed=args.seed,
            resplits=args.resplits,
        )
    except (FileNotFoundError, ValueError, BundleError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(result))
    if args.out is not None:
        print(f"report written to {args.out}")
    return 0


def _evaluate_resplits_only(args: argparse.Namespace) -> int:
    """``evaluate BUNDLE --resplits N`` without DATA: only the manifest's calibration data are needed."""
    import json

    from model_build.robustness import (
        RESPLITS_PNG,
        bundle_resplits,
        format_resplit_line,
        plot_resplits,
        read_finalisation_block,
        without_runs,
    )

    try:
        block = bundle_resplits(read_finalisation_block(args.bundle), args.resplits, seed=args.seed)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, s in block["scores"].items():
        print(format_resplit_line(name, s))
    if args.out is not None:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        text = json.dumps(without_runs(block), indent=2, allow_nan=False)
        (out / "resplits.json").write_text(text + "\n", encoding="utf-8")
        plot_resplits(block, out / RESPLITS_PNG, f"{args.bundle}")
        print(f"resplits written to {out}")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "evaluate",
        help="a bundle, as the daemon runs it, on a labelled folder of your own images",
        description="DATA: a folder per class, a folder with labels.csv, or a CSV (path,label,case_id). Prints "
        "macro-F1, ECE, the share finalised without review with its error and swaps, and the referral reasons.",
    )
    p.add_argument("bundle", type=Path, metavar="BUNDLE")
    p.add_argument("data", type=Path, metavar="DATA", nargs="?", default=None, help="optional with --resplits")
    p.add_argument("--out", type=Path, default=None, help="also write a report folder")
    p.add_argument("--threads", type=int, default=2, help="default: %(default)s")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap and resplit seed (default: %(default)s)")
    p.add_argument(
        "--resplits",
        type=_positive_int,
        default=0,
        metavar="N",
        help="refit the bundle's finalisation rule on N random halves of its calibration data (stratified by the "
        "error flag) and measure it on the other half; without DATA, only this",
    )
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
