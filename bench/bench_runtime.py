"""OpenVINO f32 against ONNX Runtime on a bundle's backbone: time per field (13 views) and output agreement.

    .venv/bin/pip install openvino   # not a dependency of the daemon: only for this study
    .venv/bin/python bench/bench_runtime.py --bundle var/demo-bundle [--fields 30]

For 1 and 2 threads, taking turns so that each sees the same machine: ONNX Runtime as the daemon runs it
(chunks of ``backbone_chunk`` views), ONNX Runtime on all 13 views at once (the one-batch baseline), and
OpenVINO f32 (INFERENCE_PRECISION_HINT f32, latency hint, one stream) on both. Then the largest
differences between OpenVINO's and ONNX Runtime's logits, view probabilities and feature maps (the CAMs'
input) over ``--fields`` synthetic fields, against the daemon's identity tolerances (probabilities 1e-6,
CAMs 1e-5). Not part of the test suite.
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

from cds_daemon.analysis.engine import BACKBONE_CHUNK, Engine, open_session
from cds_daemon.analysis.tiles import make_views
from tests.support.reports import field_pixels

Runner = Callable[[np.ndarray], list[np.ndarray]]


def chunked(run: Runner, chunk: int) -> Runner:
    def go(views: np.ndarray) -> list[np.ndarray]:
        parts = [run(views[i : i + chunk]) for i in range(0, len(views), chunk)]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]

    return go


def median_ms(run: Runner, fields: list[np.ndarray], repeat: int) -> float:
    times = []
    for i in range(repeat):
        t0 = time.perf_counter()
        run(fields[i % len(fields)])
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--fields", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    try:
        import openvino as ov
    except ImportError:
        sys.exit("openvino is not installed: .venv/bin/pip install openvino")
    graph = Engine(args.bundle, threads=1).bundle.backbone_onnx
    path = Path(tempfile.mkdtemp()) / "backbone.onnx"
    path.write_bytes(graph)
    labels = ("benign", "indeterminate", "malignant")
    fields = [make_views(field_pixels(labels[i % 3], seed=i)) for i in range(args.fields)]
    print(f"OpenVINO {ov.__version__}; {args.fields} fields x 13 views; daemon chunk {BACKBONE_CHUNK}")
    for threads in (1, 2):
        session = open_session(path, threads, graph)
        names = [o.name for o in session.get_outputs()]
        name_in = session.get_inputs()[0].name
        compiled = ov.Core().compile_model(
            str(path),
            "CPU",
            {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"},
        )
        request = compiled.create_infer_request()

        def ort_run(views: np.ndarray, s: object = session, n: list[str] = names, i: str = name_in) -> list[np.ndarray]:
            return list(s.run(n, {i: views}))  # type: ignore[attr-defined]

        def ov_run(views: np.ndarray, r: object = request, c: object = compiled) -> list[np.ndarray]:
            out = r.infer({0: views})  # type: ignore[attr-defined]
            return [out[o] for o in c.outputs]  # type: ignore[attr-defined]

        runners = {
            "ORT, daemon chunks": chunked(ort_run, BACKBONE_CHUNK),
            "ORT, one batch": ort_run,
            "OpenVINO f32, chunks": chunked(ov_run, BACKBONE_CHUNK),
            "OpenVINO f32, one batch": ov_run,
        }
        for run in runners.values():
            run(fields[0])
        times: dict[str, list[float]] = {k: [] for k in runners}
        for _ in range(3):
            for key, run in runners.items():
                times[key].append(median_ms(run, fields, args.repeat))
        base = statistics.median(times["ORT, daemon chunks"])
        print(f"[{threads} thread(s)]")
        for key, values in times.items():
            ms = statistics.median(values)
            print(f"  {key:<24} {ms:6.1f} ms per field  ({base / ms:.2f}x the daemon's path)")
        d_logit = d_p = d_map = 0.0
        agree = 0
        for views in fields:
            a, b = ort_run(views), ov_run(views)
            d_logit = max(d_logit, float(np.abs(a[0] - b[0]).max()))
            d_p = max(d_p, float(np.abs(softmax(a[0]) - softmax(b[0])).max()))
            d_map = max(d_map, float(np.abs(a[2] - b[2]).max() / (np.abs(a[2]).max() + 1e-12)))
            agree += int((a[0].argmax(1) == b[0].argmax(1)).sum())
        print(
            f"  OpenVINO vs ORT: view argmax {agree}/{13 * len(fields)} agree; max |d logit| {d_logit:.2e}, "
            f"max |d p| {d_p:.2e} (tolerance 1e-6), max |d feature map| / max {d_map:.2e} (CAM tolerance 1e-5)"
        )


if __name__ == "__main__":
    main()
