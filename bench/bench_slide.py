"""A whole slide from first byte to results delivered: time, peak memory, and field reading against the model.

    .venv/bin/python bench/bench_slide.py [--bundle DIR] [--width 40000 --height 30000] [--quality 100]
                                          [--native-gb 2]

1. Writes a ``--width`` x ``--height`` px slide (JPEG tiles of 512 px at ``--quality``, levels 1, 4, 16, 64;
   a synthetic smear repeated over it, written a tile at a time) and prints its size.
2. Starts Orthanc and the daemon (``slides.quiet_s`` 2 s), sends the levels with dcmtk's storescu, and waits
   until every result object of the slide is in Orthanc. Prints the time to acknowledge the transfer, the
   time from first byte to results delivered (less the quiet period), the slide's prepare time (reading,
   field selection, quality gate, in the helper process) beside the model time on the same fields, per
   field, and the peak RSS of daemon + helper while receiving and while analysing.
3. With ``--native-gb``: one uncompressed level of about that size (a second slide) is sent, and the peak
   RSS while it arrives is printed beside the idle figure from the same run.
Without ``--bundle`` a tiny bundle is built: the model's cost per field does not depend on its training.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_memory import Sampler
from dicom_fixtures.smear import make_smear
from dicom_fixtures.wsm import write_large_wsm
from tests.support.processes import DaemonProcess, OrthancProcess, storescu

QUIET_S = 2.0


def _series_done(daemon: DaemonProcess, series: str) -> bool:
    with sqlite3.connect(daemon.data_dir / "cds.sqlite3") as db:
        states = {s for (s,) in db.execute("SELECT state FROM instances WHERE series_instance_uid = ?", (series,))}
    return states == {"delivered"} or states == {"failed"}


def _slide_event(daemon: DaemonProcess) -> dict[str, object]:
    for event in daemon.log_events():
        if event.get("event") == "slide_reported":
            return event
    raise RuntimeError("no slide_reported event")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--width", type=int, default=40_000)
    ap.add_argument("--height", type=int, default=30_000)
    ap.add_argument("--quality", type=int, default=100)
    ap.add_argument("--native-gb", type=float, default=0.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parents[1] / "var") as tmp:
        root = Path(tmp)
        bundle = args.bundle
        if bundle is None:
            from model_build.demo import make_tiny_bundle

            bundle = make_tiny_bundle(root / "bundle")
        t0 = time.perf_counter()
        smear = make_smear("malignant", 40, grid=(4, 6), cell_patches=10, blood_patches=6)
        written = write_large_wsm(smear, root / "slide", args.width, args.height, quality=args.quality)
        size = sum(p.stat().st_size for p in written.paths)
        print(
            f"slide: {args.width} x {args.height} px, {len(written.paths)} levels, {size / 2**30:.2f} GiB of JPEG "
            f"(quality {args.quality}); written in {time.perf_counter() - t0:.0f} s"
        )
        pacs = OrthancProcess(root / "orthanc").start()
        daemon = DaemonProcess(
            workdir=root / "daemon",
            bundle=bundle,
            destinations=[("pacs", "ORTHANC", pacs.dicom_port)],
            extra_config=f"[slides]\nquiet_s = {QUIET_S}\n[reports]\ncase_sr = false\n",
            extra_env={"CDS_WORKER_THREADS": "0"},  # threads chosen from the cores, as installed
        )
        daemon.start()
        assert daemon.proc is not None
        time.sleep(3)
        sampler = Sampler(daemon.proc.pid)
        idle = sampler.phase()
        t_send = time.perf_counter()
        if storescu(daemon.port, *written.paths, extra=("-xy",)).returncode != 0:
            raise RuntimeError("storescu failed")
        acked = time.perf_counter() - t_send
        receive_peak = sampler.phase()
        deadline = time.monotonic() + 1800
        while not _series_done(daemon, written.series_uid):
            if time.monotonic() > deadline:
                raise TimeoutError("the slide's results did not arrive")
            time.sleep(0.2)
        total = time.perf_counter() - t_send
        analysis_peak = sampler.phase()
        event = _slide_event(daemon)
        ms = event["ms"]
        assert isinstance(ms, dict)
        fields = int(str(event["fields"]))
        print(f"sent and acknowledged in {acked:.1f} s ({size / 2**20 / acked:.0f} MiB/s)")
        print(
            f"first byte to results delivered: {total:.1f} s ({total - QUIET_S:.1f} s without the {QUIET_S:.0f} s "
            "quiet period)"
        )
        print(
            f"fields: {fields} of {event['proposals']} proposed windows; per field: prepare (read, choose, gate) "
            f"{ms['prepare'] / fields:.0f} ms, model {ms['model'] / fields:.0f} ms, "
            f"reports {ms['reports'] / fields:.0f} ms"
        )
        print(f"prepare / model on those fields: {ms['prepare'] / ms['model']:.2f} (goal < 1)")
        print(
            f"peak RSS, daemon + helper: idle {idle:.0f} MiB, receiving {receive_peak:.0f} MiB, "
            f"analysing {analysis_peak:.0f} MiB (goal <= 700)"
        )
        if args.native_gb > 0:  # on a fresh daemon, so its figure is the receive's alone
            side = int((args.native_gb * 2**30 / 3) ** 0.5) // 64 * 64
            big = write_large_wsm(smear, root / "native", side, side, jpeg=False, downsamples=(1,), seed=41)
            gib = big.paths[0].stat().st_size / 2**30
            sampler.stop()
            daemon.stop()
            daemon.start()
            time.sleep(3)
            assert daemon.proc is not None
            sampler = Sampler(daemon.proc.pid)
            idle = sampler.phase()
            t1 = time.perf_counter()
            if storescu(daemon.port, big.paths[0]).returncode != 0:
                raise RuntimeError("storescu failed on the native level")
            took = time.perf_counter() - t1
            print(
                f"one {gib:.2f} GiB uncompressed level ({side} x {side} px) received in {took:.1f} s: "
                f"peak RSS while it arrived {sampler.phase():.0f} MiB (idle {idle:.0f} MiB)"
            )
        sampler.stop()
        daemon.stop(signal.SIGKILL)  # it is analysing the native slide now: nothing to wait for
        pacs.stop()
        print(json.dumps({"event": event}, default=str)[:400])


if __name__ == "__main__":
    main()
