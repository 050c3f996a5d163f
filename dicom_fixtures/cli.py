"""``python -m dicom_fixtures``: command-line front end for the fixture generators."""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .synth import CLASSES
from .wrap import IODS, TRANSFER_SYNTAXES


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer seed, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer seed, got {value}")
    return value


def _unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value}")
    return value


def _noise(text: str) -> float:
    value = _unit_float(text)
    if value >= 1.0:
        raise argparse.ArgumentTypeError("label noise must be below 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dicom_fixtures",
        description="Synthetic thyroid FNAB cytology images, DICOM wrappers and broken-input corpora.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("make-dataset", help="image folder per class + labels.csv for training")
    p.add_argument("out", type=Path, metavar="OUT")
    p.add_argument("--n-per-class", type=_positive_int, required=True, metavar="N")
    p.add_argument("--seed", type=_seed, required=True, metavar="S")
    p.add_argument("--difficulty", type=_unit_float, default=0.5, metavar="D")
    p.add_argument("--label-noise", type=_noise, default=0.0, metavar="P", help="fraction of cases mislabelled")
    p.add_argument("--format", choices=("jpg", "png"), default="jpg")

    p = sub.add_parser("make-dicom", help="write synthetic fields as DICOM files")
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    p.add_argument("--n", type=_positive_int, required=True, help="number of files")
    p.add_argument("--iod", choices=list(IODS), required=True)
    p.add_argument("--ts", choices=list(TRANSFER_SYNTAXES), required=True, help="transfer syntax")
    p.add_argument("--seed", type=_seed, required=True, metavar="S")
    p.add_argument("--label", choices=CLASSES, help="class of every image (default: classes cycle per study)")
    p.add_argument("--difficulty", type=_unit_float, default=0.5, metavar="D")
    p.add_argument("--frames", type=_positive_int, default=1, help="frames per file (mf-true-color-sc only)")
    p.add_argument(
        "--images-per-study",
        type=_positive_int,
        default=None,
        metavar="K",
        help="start a new patient/study every K files (default: all files in one study)",
    )

    p = sub.add_parser("make-slide", help="a synthetic smear as a DICOM whole-slide pyramid + truth.json")
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    p.add_argument("--label", choices=CLASSES, required=True)
    p.add_argument("--seed", type=_seed, required=True, metavar="S")
    p.add_argument("--grid", type=_positive_int, nargs=2, default=(4, 6), metavar=("ROWS", "COLS"))
    p.add_argument("--cells", type=int, default=6, help="fields of follicular cells (0: nothing to analyse)")
    p.add_argument("--blood", type=int, default=3, help="patches of blood")
    p.add_argument("--focal-planes", type=_positive_int, default=1, help="odd; the middle one is in focus")
    p.add_argument("--difficulty", type=_unit_float, default=0.5, metavar="D")
    p.add_argument("--native", action="store_true", help="uncompressed tiles (default: JPEG Baseline)")
    p.add_argument("--no-pixel-spacing", action="store_true", help="leave Pixel Spacing out, as some writers do")

    p = sub.add_parser("make-corpus", help="broken-input corpus + corpus.json")
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    p.add_argument("--seed", type=_seed, default=0, metavar="S")

    p = sub.add_parser("contact-sheet", help="PNG grid of thumbnails per class and bad kinds")
    p.add_argument("out", type=Path, metavar="OUT.png")
    p.add_argument("--per-class", type=_positive_int, default=12)
    p.add_argument("--seed", type=_seed, default=1, metavar="S")
    p.add_argument("--difficulty", type=_unit_float, default=0.5, metavar="D")

    p = sub.add_parser("bench", help="print generator throughput (images/s on one core)")
    p.add_argument("--n-per-class", type=_positive_int, default=10)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--no-pin", action="store_true", help="do not pin the process to one CPU")
    return parser


def _make_dataset(args: argparse.Namespace) -> None:
    from .dataset import make_dataset

    rows = make_dataset(args.out, args.n_per_class, args.seed, args.difficulty, args.label_noise, args.format)
    cases = len({r.case_id for r in rows})
    print(f"wrote {len(rows)} images in {cases} cases to {args.out} (labels.csv)")


def _make_dicom(args: argparse.Namespace) -> None:
    from .dicom_files import write_dicom_series

    paths = write_dicom_series(
        args.out_dir,
        n=args.n,
        iod=args.iod,
        ts=args.ts,
        seed=args.seed,
        label=args.label,
        difficulty=args.difficulty,
        frames=args.frames,
        images_per_study=args.images_per_study,
    )
    print(f"wrote {len(paths)} {args.iod} files ({args.ts}) to {args.out_dir}")


def _make_slide(args: argparse.Namespace) -> None:
    import json

    from .smear import make_smear
    from .wsm import write_wsm

    smear = make_smear(
        args.label,
        args.seed,
        grid=tuple(args.grid),
        cell_patches=args.cells,
        blood_patches=args.blood,
        difficulty=args.difficulty,
        focal_planes=args.focal_planes,
    )
    written = write_wsm(
        smear, args.out_dir, seed=args.seed, jpeg=not args.native, pixel_spacing=not args.no_pixel_spacing
    )
    truth = {
        "label": smear.label,
        "mpp": smear.mpp,
        "focal_planes_um": [z * smear.plane_spacing_um for z in range(len(smear.planes))],
        "sharpest_plane": smear.sharpest,
        "patches": [vars(p) for p in smear.patches],
        "study_instance_uid": written.study_uid,
        "series_instance_uid": written.series_uid,
        "frame_of_reference_uid": written.frame_of_reference_uid,
        "container_identifier": written.container_identifier,
        "files": [p.name for p in written.paths],
    }
    (args.out_dir / "truth.json").write_text(json.dumps(truth, indent=2))
    rows, cols = smear.shape
    print(f"wrote a {cols}x{rows} {smear.label} slide, {len(written.paths)} levels, to {args.out_dir} (truth.json)")


def _make_corpus(args: argparse.Namespace) -> None:
    from .broken import MANIFEST, make_corpus

    items = make_corpus(args.out_dir, args.seed)
    print(f"wrote {len(items)} corpus items and {MANIFEST} to {args.out_dir}")
    for item in items:
        print(
            f"  {item.name:<22s} ingest={item.expected_ingest:<10s} outcome={item.expected_outcome:<6s} "
            f"send_with={item.send_with}"
        )


def _contact_sheet(args: argparse.Namespace) -> None:
    from .contact_sheet import write_contact_sheet

    path = write_contact_sheet(args.out, args.per_class, args.seed, args.difficulty)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


def _bench(args: argparse.Namespace) -> None:
    from .bench import run_bench

    run_bench(args.n_per_class, args.seed, pin=not args.no_pin)


_COMMANDS = {
    "make-dataset": _make_dataset,
    "make-dicom": _make_dicom,
    "make-slide": _make_slide,
    "make-corpus": _make_corpus,
    "contact-sheet": _contact_sheet,
    "bench": _bench,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "make-dicom" and args.frames > 1 and args.iod != "mf-true-color-sc":
        parser.error(f"--frames {args.frames}: only mf-true-color-sc holds more than one frame")
    try:
        _COMMANDS[args.command](args)
    except (ValueError, OSError) as exc:
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0
