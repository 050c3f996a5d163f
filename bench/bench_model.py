"""Inference figures for a model bundle on ONNX Runtime (CPU), the daemon's path against the one-batch baseline.

    .venv/bin/python bench/bench_model.py [BUNDLE] [--threads 1 2] [--repeat 40] [--chunks 2 3 4] [--scaling]

For each ONNX Runtime thread count: ``Engine.predict`` (views to CAM) on a 1024x768 field for the
baseline (13 views in one backbone run, Mahalanobis recomputed per call, numpy's BLAS pool as numpy
starts it) and for the daemon's path at each chunk size (precomputed Mahalanobis, one BLAS thread),
taking turns call by call so that both see the same machine; medians, cases/s and the ratio to the
baseline; and whether the outputs agree. ``--scaling``: model-only cases/s in 1 and in 2 processes at
once (one ORT thread each), with numpy's BLAS pool limited to one thread and not.
Without BUNDLE a tiny bundle is built first (speed does not depend on how well the weights are trained).
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.synchronize
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.variants import blas, engine
from cds_daemon.analysis.engine import Engine, synthetic_field
from cds_daemon.analysis.tiles import make_views


def _turns(engines: dict[str, Engine], rgb: np.ndarray, repeat: int) -> dict[str, float]:
    """Median ms of ``predict`` per engine, calling them in turn."""
    times: dict[str, list[float]] = {name: [] for name in engines}
    for i in range(repeat + 3):
        for name, e in engines.items():
            with blas("baseline" if name == "baseline" else "daemon"):
                t0 = time.perf_counter()
                e.predict(rgb)
                if i >= 3:
                    times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def _agreement(engines: dict[str, Engine], fields: list[np.ndarray]) -> str:
    base = engines["baseline"]
    worst, same = 0.0, True
    for rgb in fields:
        ref = base.predict(rgb)
        for e in engines.values():
            got = e.predict(rgb)
            same &= (got.label, got.conformal_set) == (ref.label, ref.conformal_set)
            worst = max(worst, *(abs(got.probs[k] - ref.probs[k]) for k in ref.probs))
    return f"{len(fields)} fields: labels, reasons, sets {'identical' if same else 'DIFFER'}; max |dp| {worst:.1e}"


def _model_process(bundle: Path, n: int, start: multiprocessing.synchronize.Barrier) -> float:
    e = Engine(bundle, threads=1)
    rgb = synthetic_field(768, 1024)
    e.predict(rgb)
    start.wait()
    t0 = time.perf_counter()
    for _ in range(n):
        e.predict(rgb)
    return n / (time.perf_counter() - t0)


def scaling(bundle: Path, n: int) -> None:
    """1 vs 2 model processes at once, numpy's BLAS limited and not: does a second core add throughput?"""
    ctx = multiprocessing.get_context("spawn")
    saved = os.environ.get("OPENBLAS_NUM_THREADS")
    for label, threads in (("BLAS 1 thread", "1"), (f"BLAS {os.cpu_count()} threads (numpy's default)", None)):
        os.environ["OPENBLAS_NUM_THREADS"] = threads or str(os.cpu_count())
        rates = {}
        for procs in (1, 2):
            barrier = ctx.Manager().Barrier(procs)
            with ctx.Pool(procs) as pool:
                rates[procs] = pool.starmap(_model_process, [(bundle, n, barrier)] * procs)
        one, two = rates[1][0], sum(rates[2])
        print(
            f"  {label:<32} 1 process {one:6.2f} cases/s; 2 processes "
            f"{' + '.join(f'{r:.2f}' for r in rates[2])} = {two:6.2f} cases/s ({two / one:.2f}x)"
        )
    if saved is None:
        os.environ.pop("OPENBLAS_NUM_THREADS", None)
    else:
        os.environ["OPENBLAS_NUM_THREADS"] = saved


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", nargs="?", type=Path, default=None)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=40)
    ap.add_argument("--chunks", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument("--scaling", action="store_true", help="1 vs 2 processes, BLAS limited and not")
    args = ap.parse_args()
    if args.bundle is None:
        from model_build.demo import make_tiny_bundle

        args.bundle = make_tiny_bundle(Path(tempfile.mkdtemp(prefix="bench-bundle-")) / "tiny")
    rgb = synthetic_field(768, 1024)
    fields = [np.roll(rgb, 97 * i, axis=1) for i in range(6)]
    print(f"bundle {args.bundle}, ONNX Runtime CPU, {os.cpu_count()} CPUs, medians of {args.repeat} turns")
    t0 = time.perf_counter()
    make_views(rgb)
    print(f"views build (1024x768 -> 13x3x224x224): {(time.perf_counter() - t0) * 1e3:.1f} ms")
    for threads in args.threads:
        engines = {"baseline": engine(args.bundle, threads, "baseline")}
        engines |= {f"daemon, chunks of {c}": engine(args.bundle, threads, "daemon", c) for c in args.chunks}
        ms = _turns(engines, rgb, args.repeat)
        print(f"[{threads} ONNX Runtime thread(s)] Engine.predict, views to CAM")
        for name, value in ms.items():
            ratio = ms["baseline"] / value
            print(f"  {name:<20} {value:7.1f} ms = {1e3 / value:6.2f} cases/s  ({ratio:.2f}x baseline)")
        print("  " + _agreement(engines, fields))
    if args.scaling:
        print("scaling (model only, 1 ORT thread per process):")
        scaling(args.bundle, max(10, args.repeat // 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
