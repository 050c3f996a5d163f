"""Inference figures for a model bundle on ONNX Runtime (CPU).

    .venv/bin/python bench/bench_model.py [BUNDLE] [--threads 2] [--repeat 30]

Prints: views build ms (1024 x 768 field -> 13 normalised views), Basic img/s (backbone on view 0
only), Premium cases/s (backbone on the 13 views + aggregator), full ``Engine.predict`` cases/s, and
CAM ms (stitched tile CAM + whole-image CAM from the feature map). Without BUNDLE a tiny bundle is built
first (speed does not depend on how well the weights are trained).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cds_daemon.analysis.engine import Engine, class_activation_maps, stitch_tiles, synthetic_field, unit_scale
from cds_daemon.analysis.tiles import make_views


def _median_ms(fn: Callable[[], object], repeat: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", nargs="?", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    if args.bundle is None:
        from model_build.demo import make_tiny_bundle

        args.bundle = make_tiny_bundle(Path(tempfile.mkdtemp(prefix="bench-bundle-")) / "tiny")
    engine = Engine(args.bundle, threads=args.threads)
    m = engine.manifest
    rgb = synthetic_field(768, 1024)
    views = make_views(rgb)

    views_ms = _median_ms(lambda: make_views(rgb), args.repeat)
    basic_ms = _median_ms(lambda: engine.run_backbone(views[:1]), args.repeat)

    def premium() -> None:
        engine.run_aggregator(engine.run_backbone(views)[1])

    premium_ms = _median_ms(premium, max(5, args.repeat // 3))
    predict_ms = _median_ms(lambda: engine.predict(rgb), max(5, args.repeat // 3))
    fmap = engine.run_backbone(views)[2]
    w = engine.bundle.cam_weight[0].astype(np.float32)

    def cam() -> None:
        cams = class_activation_maps(fmap, w)
        unit_scale(stitch_tiles(cams[1:], m.grid))
        unit_scale(cams[0])

    cam_ms = _median_ms(cam, args.repeat)
    print(f"bundle {args.bundle} ({m.name} {m.version}), ONNX Runtime CPU, {args.threads} threads, medians")
    print(f"views build (1024x768 -> 13x3x224x224): {views_ms:7.2f} ms")
    print(f"Basic (view 0 only):                     {basic_ms:7.2f} ms  = {1e3 / basic_ms:6.1f} img/s")
    print(f"Premium (13 views + aggregator):         {premium_ms:7.2f} ms  = {1e3 / premium_ms:6.2f} cases/s")
    print(f"Engine.predict (views..CAM, all):        {predict_ms:7.2f} ms  = {1e3 / predict_ms:6.2f} cases/s")
    print(f"CAM (stitched 21x28 + whole 7x7):        {cam_ms:7.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
