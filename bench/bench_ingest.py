"""Ingest rate: storescu -> cds-daemon (fsync on) vs storescu -> dcmtk storescp, same files, same run.

    .venv/bin/python bench/bench_ingest.py [--n 100] [--rounds 3]

Prints images/s for 1024x768 RGB explicit-little-endian VL Microscopic images sent in one
association. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.dicom_files import write_images
from tests.support.processes import DaemonProcess, free_port, storescu, wait_for_port


def _rate(port: int, files: list[Path], called: str) -> float:
    started = time.perf_counter()
    r = storescu(port, *files, called=called)
    elapsed = time.perf_counter() - started
    if r.returncode != 0:
        raise RuntimeError(f"storescu failed: {r.stderr[-500:]}")
    return len(files) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = write_images(root / "in", args.n, seed=1)
        size_mb = sum(f.stat().st_size for f in files) / len(files) / 2**20
        daemon_rates, storescp_rates = [], []
        for i in range(args.rounds):
            d = DaemonProcess(workdir=root / f"daemon{i}").start()
            try:
                daemon_rates.append(_rate(d.port, files, "THYROID_CDS"))
            finally:
                d.stop()
            port = free_port()
            out = root / f"storescp{i}"
            out.mkdir()
            scp = subprocess.Popen(["storescp", "-od", str(out), "-aet", "STORESCP", str(port)])
            try:
                wait_for_port(port, proc=scp)
                storescp_rates.append(_rate(port, files, "STORESCP"))
            finally:
                scp.terminate()
                scp.wait()
    print(f"files: {args.n} x {size_mb:.2f} MiB (1024x768 RGB, explicit VR LE), {args.rounds} rounds")
    for name, rates in (
        ("storescu -> cds-daemon (fsync file+dir, SQLite FULL)", daemon_rates),
        ("storescu -> dcmtk storescp", storescp_rates),
    ):
        rounds = ", ".join(f"{r:.1f}" for r in rates)
        print(f"{name:<54} median {statistics.median(rates):.1f} img/s  (rounds: {rounds})")


if __name__ == "__main__":
    main()
