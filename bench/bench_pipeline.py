"""Worker throughput and end-to-end latency.

    .venv/bin/python bench/bench_pipeline.py --bundle DIR [--n 40] [--latency-n 20]

1. Model only: Engine.predict on N decoded 1024x768 fields (13 views, ensemble, CAM), cases/s.
2. Worker path: decode -> quality -> model -> triage -> SR/SC/KOS -> durable outputs, cases/s,
   in the same run, and its ratio to (1).
3. End to end at idle: storescu sends one image at a time to a daemon process; time until its SR
   is in Orthanc (p50/p95).
Not part of the test suite: prints figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cds_daemon.bundle import read_manifest
from cds_daemon.config import load_settings
from cds_daemon.engine import Engine
from cds_daemon.pixels import decode
from cds_daemon.reports.uids import derived_uid
from cds_daemon.spool import Spool
from cds_daemon.worker import encode, process_image
from tests.support.dicom_files import write_images
from tests.support.processes import DaemonProcess, OrthancProcess, storescu

LABELS = ("benign", "indeterminate", "malignant")


def _inputs(root: Path, n: int) -> list[Path]:
    files: list[Path] = []
    for i in range(n):
        ts = "jpeg-baseline" if i % 2 else "explicit"
        files += write_images(root / f"in{i}", 1, ts=ts, seed=1000 + i, label=LABELS[i % 3])
    return files


def throughput(bundle: Path, files: list[Path], root: Path, threads: int) -> None:
    engine = Engine(bundle, threads=threads)
    settings = load_settings(None, model_bundle=bundle, worker_threads=threads)
    images = [decode(f).rgb for f in files]
    engine.predict(images[0])
    t0 = time.perf_counter()
    for rgb in images:
        engine.predict(rgb)
    model_rate = len(images) / (time.perf_counter() - t0)
    results = Spool(root / "results")
    t0 = time.perf_counter()
    for f in files:
        processed = process_image(f, engine, settings)
        for _kind, ds in processed.objects:
            results.write(str(ds.SOPInstanceUID), encode(ds))
    worker_rate = len(files) / (time.perf_counter() - t0)
    print(f"model only (13 views + aggregator + CAM, {threads} threads): {model_rate:.2f} cases/s")
    print(f"worker path (decode -> durable SR/SC/KOS):          {worker_rate:.2f} cases/s "
          f"({worker_rate / model_rate:.0%} of model-only)")


def latency(bundle: Path, files: list[Path], root: Path) -> None:
    version = read_manifest(bundle).version
    pacs = OrthancProcess(workdir=root / "orthanc").start()
    daemon = DaemonProcess(
        workdir=root / "daemon",
        bundle=bundle,
        destinations=[("pacs", "ORTHANC", pacs.dicom_port)],
        extra_config="[egress]\npoll_s = 0.5\n",
    ).start()
    import pydicom

    times = []
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
    finally:
        daemon.stop()
        pacs.stop()
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    print(f"end to end at idle (storescu send -> SR in Orthanc), n={len(times)}: "
          f"p50 {statistics.median(times) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max {times[-1] * 1000:.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--latency-n", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = _inputs(root, max(args.n, args.latency_n))
        throughput(args.bundle, files[: args.n], root, args.threads)
        latency(args.bundle.resolve(), files[: args.latency_n], root)


if __name__ == "__main__":
    main()
