"""Worker throughput and end-to-end latency, each beside the plain backbone run and today's reports path.

    .venv/bin/python bench/bench_pipeline.py --bundle DIR [--n 40] [--latency-n 20]

0. Backbone only: one plain ONNX Runtime run of the bundle's backbone on the 13 views of each field
   (views made beforehand), at 2 threads: the yardstick the worker and the latency are compared with.
1. Model only: Engine.predict on N decoded 1024x768 fields (13 views, ensemble, CAM), cases/s.
2. Worker path: the daemon's Worker (model thread, helper process, recorder) on a store on disk,
   from ``received`` rows to ``reported`` with durable SR/SC/KOS and outbox rows, cases/s, and its
   ratio to (0) and (1) measured in the same run; with the reports as before (``reports.templates =
   false``, ``reports.heatmap_jpeg = false``: highdicom builds each object, the heatmap uncompressed) and
   as now (templates, JPEG heatmap: the defaults). Both write a case's objects with one round of fsyncs.
   Run for each ONNX Runtime thread count in ``--threads`` (default 1 and 2); plus the same steps in
   one thread. ``bench_model.py --scaling`` shows how a second core scales model work.
3. End to end at idle: storescu sends one image at a time to a daemon process; time until its SR
   is in Orthanc (p50/p95, and as multiples of the backbone time), and the peak RSS of daemon + helper,
   for both reports paths.
Not part of the test suite: prints figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pydicom

from bench.bench_memory import Sampler
from bench.variants import VARIANTS, blas, engine
from cds_daemon.analysis.decode import decode
from cds_daemon.analysis.engine import Engine, open_session
from cds_daemon.analysis.pipeline import process_image
from cds_daemon.analysis.tiles import make_views
from cds_daemon.analysis.worker import Worker
from cds_daemon.common.config import load_settings
from cds_daemon.common.manifest import read_manifest
from cds_daemon.ops.logs import configure_logging
from cds_daemon.reports.uids import derived_uid
from cds_daemon.store import Store
from cds_daemon.store.spool import Spool
from tests.support.dicom_files import write_images
from tests.support.processes import DaemonProcess, OrthancProcess, storescu
from tests.support.received import receive

LABELS = ("benign", "indeterminate", "malignant")


def _inputs(root: Path, n: int) -> list[Path]:
    files: list[Path] = []
    for i in range(n):
        ts = "jpeg-baseline" if i % 2 else "explicit"
        files += write_images(root / f"in{i}", 1, ts=ts, seed=1000 + i, label=LABELS[i % 3])
    return files


def model_only(engine: Engine, files: list[Path]) -> float:
    images = [decode(f).rgb for f in files]
    engine.predict(images[0])
    t0 = time.perf_counter()
    for rgb in images:
        engine.predict(rgb)
    return len(images) / (time.perf_counter() - t0)


def backbone_only(engine: Engine, files: list[Path], threads: int = 2) -> float:
    """A plain one-batch ONNX Runtime run of the backbone on each field's 13 views, cases/s."""
    session = open_session(Path("backbone.onnx"), threads, engine.bundle.backbone_onnx)
    views = [make_views(decode(f).rgb) for f in files]
    session.run(None, {session.get_inputs()[0].name: views[0]})
    t0 = time.perf_counter()
    for v in views:
        session.run(None, {session.get_inputs()[0].name: v})
    return len(views) / (time.perf_counter() - t0)


def worker_path(
    engine: Engine, bundle: Path, files: list[Path], root: Path, threads: int, templates: bool = True
) -> tuple[float, dict]:
    """The daemon's Worker (model thread + helper process + recorder) on a store on disk, cases/s."""
    settings = load_settings(
        None,
        model_bundle=bundle,
        worker_threads=threads,
        storage={"data_dir": root / "data"},
        reports={"templates": templates, "heatmap_jpeg": templates},
    )
    settings.storage.spool_dir.mkdir(parents=True, exist_ok=True)
    store = Store(settings.storage.database)
    spool = Spool(settings.storage.spool_dir)
    done = threading.Event()
    reported = [0]

    def on_reported() -> None:
        reported[0] += 1
        if reported[0] == len(files):
            done.set()

    worker = Worker(settings, store, engine, on_reported=on_reported)
    worker.start()  # the helper process is up before the clock starts
    try:
        t0 = time.perf_counter()
        for f in files:
            receive(store, spool, f.read_bytes(), calling_ae="BENCH")
            worker.wake()
        if not done.wait(600):
            raise TimeoutError(f"only {reported[0]} of {len(files)} reported: {store.counts_by_state()}")
        rate = len(files) / (time.perf_counter() - t0)
    finally:
        worker.stop()
    stages: dict[str, list[float]] = {}
    for inst in store.instances("reported"):
        record = store.get_prediction(inst.sop_instance_uid)
        for k, v in (record.detail.get("timings_ms", {}) if record else {}).items():
            stages.setdefault(k, []).append(v)
    store.close()
    return rate, {k: statistics.median(v) for k, v in stages.items() if k in ("prepare", "model", "reports", "total")}


def throughput(bundle: Path, files: list[Path], root: Path, threads: int, backbone_rate: float) -> None:
    """Model-only and worker cases/s for the one-batch baseline and the daemon's path, with both reports paths."""
    print(f"[{threads} ONNX Runtime thread(s); backbone only at 2 threads: {backbone_rate:.2f} cases/s]")
    rates: dict[str, float] = {}
    for variant in VARIANTS:
        with blas(variant):
            e = engine(bundle, threads, variant)
            model_rate = model_only(e, files)
            for templates in (False, True):
                reports = "now" if templates else "before"
                rate, stages = worker_path(
                    e, bundle, files, root / f"t{threads}-{variant}-{reports}", threads, templates
                )
                rates[f"{variant}/{reports}"] = rate
                print(
                    f"  {variant:<8} {reports:<9} worker {rate:5.2f} cases/s = {rate / model_rate:.0%} of model-only "
                    f"({model_rate:.2f}), {rate / backbone_rate:.2f} x backbone only"
                )
                per_case = ", ".join(f"{k} {v:.0f}" for k, v in stages.items())
                print(f"{'':21}median ms per case: {per_case}")
    gain = rates["daemon/now"] / rates["baseline/before"]
    print(f"  worker, daemon path with today's reports / baseline with the reports before: {gain:.2f}x")
    settings = load_settings(None, model_bundle=bundle, worker_threads=threads)
    e = engine(bundle, threads, "daemon")
    serial_rate = len(files) / _timed(lambda: [process_image(f, e, settings) for f in files])
    print(f"  same steps in one thread (replay path: highdicom SR and KOS): {serial_rate:.2f} cases/s")


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def latency(bundle: Path, files: list[Path], root: Path, backbone_ms: float, templates: bool) -> None:
    version = read_manifest(bundle).version
    reports = "now" if templates else "before"
    pacs = OrthancProcess(workdir=root / f"orthanc-{reports}").start()
    daemon = DaemonProcess(
        workdir=root / f"daemon-{reports}",
        bundle=bundle,
        destinations=[("pacs", "ORTHANC", pacs.dicom_port)],
        extra_config=f"[egress]\npoll_s = 0.5\n[reports]\ntemplates = {str(templates).lower()}\n"
        f"heatmap_jpeg = {str(templates).lower()}\n",
    ).start()
    times = []
    assert daemon.proc is not None
    sampler = Sampler(daemon.proc.pid)
    try:
        for f in files:
            uid = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
            target = derived_uid(uid, version, "sr")
            t0 = time.perf_counter()
            r = storescu(daemon.port, f, extra=("-xy",) if "jpeg" in f.name else ())
            if r.returncode != 0:
                raise RuntimeError(r.stderr)
            while pacs.instance_id(target) is None:
                if time.perf_counter() - t0 > 60:
                    raise TimeoutError(f"no SR for {f.name}")
                time.sleep(0.01)
            times.append(time.perf_counter() - t0)
        peak = sampler.phase()
    finally:
        sampler.stop()
        daemon.stop()
        pacs.stop()
    times.sort()
    p50, p95 = statistics.median(times) * 1000, times[min(len(times) - 1, round(0.95 * (len(times) - 1)))] * 1000
    print(
        f"end to end at idle, {reports} reports (storescu send -> SR in Orthanc), n={len(times)}: "
        f"p50 {p50:.0f} ms ({p50 / backbone_ms:.1f} x backbone), p95 {p95:.0f} ms ({p95 / backbone_ms:.1f} x), "
        f"max {times[-1] * 1000:.0f} ms; peak RSS daemon + helper {peak:.0f} MiB"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--latency-n", type=int, default=20)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="ONNX Runtime intra-op threads to try")
    args = ap.parse_args()
    configure_logging("warning", stream=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = _inputs(root, max(args.n, args.latency_n))
        backbone_rate = backbone_only(engine(args.bundle, 2, "daemon"), files[: args.n])
        for threads in args.threads:
            throughput(args.bundle, files[: args.n], root, threads, backbone_rate)
        if args.latency_n:
            for templates in (False, True):
                latency(args.bundle.resolve(), files[: args.latency_n], root, 1000 / backbone_rate, templates)


if __name__ == "__main__":
    main()
