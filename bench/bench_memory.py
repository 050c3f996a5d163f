"""Peak resident memory of the daemon (process + helper) while images arrive and while it is attacked.

    .venv/bin/python bench/bench_memory.py --bundle DIR [--n 200]

1. Idle after start (the bundle loaded, the self-check run).
2. ``--n`` JPEG-baseline 1024x768 fields sent in one association (storescu -xy) and analysed.
3. Attacks, each followed by a valid image: a 300 MiB PDU declared by an unknown address and by a
   known one, 40 connections from one address, a 64 MiB deflate bomb, a 32 MiB uncompressed image
   past ``max_dataset_mb`` (16 here).
Prints peak RSS (daemon + helper, sampled every 50 ms) per phase, with the split at the end, and
the systemd unit's MemoryHigh/MemoryMax for comparison. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from tests.support.dicom_files import write_images
from tests.support.hostile import connect, rss_mb, sc_dataset, send_dataset, send_huge_pdu
from tests.support.processes import DaemonProcess, storescu

TRUSTED, UNKNOWN, NEIGHBOUR = "127.0.0.1", "127.0.0.9", "127.0.0.5"


class Sampler:
    """Peak RSS of a process tree, sampled in a thread; ``phase()`` returns and resets the peak."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_mb(self.pid))

    def phase(self) -> float:
        peak, self.peak = self.peak, rss_mb(self.pid)
        return max(peak, self.peak)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _drained(daemon: DaemonProcess, timeout: float = 900) -> None:
    db = daemon.data_dir / "cds.sqlite3"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as con:
            (left,) = con.execute("SELECT COUNT(*) FROM instances WHERE state IN ('received','processing')").fetchone()
        if left == 0:
            return
        time.sleep(0.2)
    raise TimeoutError("the queue did not drain")


def _split(pid: int) -> str:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    own = rss_mb(pid) - sum(rss_mb(int(c)) for c in children)
    return f"daemon {own:.0f} MiB + helper {sum(rss_mb(int(c)) for c in children):.0f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="model bundle (default: a tiny one is built; same graphs' size)")
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bundle = args.bundle
        if bundle is None:
            from model_build.demo import make_tiny_bundle

            bundle = make_tiny_bundle(root / "bundle")
        daemon = DaemonProcess(
            workdir=root / "daemon",
            bundle=bundle,
            allowed=[("STORESCU", [f"{TRUSTED}/32"]), ("MODALITY", [f"{NEIGHBOUR}/32"])],
            listener_options={"max_dataset_mb": 16, "network_timeout_s": 5, "acse_timeout_s": 3},
        ).start()
        assert daemon.proc is not None
        pid = daemon.proc.pid
        time.sleep(3)
        sampler = Sampler(pid)
        rows: list[tuple[str, float]] = [("idle after start", sampler.phase())]
        files = write_images(root / "in", args.n, ts="jpeg-baseline", seed=10_000)
        t0 = time.perf_counter()
        if storescu(daemon.port, *files, extra=("-xy",)).returncode != 0:
            raise RuntimeError("storescu failed")
        _drained(daemon)
        elapsed = time.perf_counter() - t0
        rows.append((f"{args.n} JPEG fields received and analysed ({args.n / elapsed:.1f}/s)", sampler.phase()))
        valid = write_images(root / "ok", 6, seed=20_000)

        def then_valid(i: int) -> None:
            storescu(daemon.port, valid[i])
            _drained(daemon, 120)

        attacks: list[tuple[str, Callable[[], object]]] = [
            ("300 MiB PDU declared, unknown address", lambda: send_huge_pdu(daemon.port, UNKNOWN)),
            ("300 MiB PDU declared, known address", lambda: send_huge_pdu(daemon.port, TRUSTED)),
            ("40 connections from one address", lambda: _flood(daemon.port)),
            (
                "64 MiB deflate bomb",
                lambda: send_dataset(daemon.port, sc_dataset(bytes(64 * 2**20)), DeflatedExplicitVRLittleEndian),
            ),
            (
                "32 MiB image past max_dataset_mb",
                lambda: send_dataset(daemon.port, sc_dataset(bytes(32 * 2**20)), ExplicitVRLittleEndian),
            ),
        ]
        for i, (name, attack) in enumerate(attacks):
            attack()
            then_valid(i)
            rows.append((name + ", then a valid image", sampler.phase()))
        sampler.stop()
        split = _split(pid)
        daemon.stop()
    unit = (Path(__file__).resolve().parents[1] / "systemd" / "thyroid-cds.service").read_text()
    limits = [line for line in unit.splitlines() if line.startswith(("MemoryHigh", "MemoryMax"))]
    width = max(len(name) for name, _ in rows)
    print("peak RSS, daemon + helper (MiB)")
    for name, peak in rows:
        print(f"  {name:<{width}}  {peak:7.0f}")
    print(f"at the end: {split}")
    print(f"overall peak {max(p for _, p in rows):.0f} MiB; systemd unit: {', '.join(limits)}")


def _flood(port: int) -> None:
    socks = []
    for _ in range(40):
        with contextlib.suppress(OSError):
            socks.append(connect(port, NEIGHBOUR))
    time.sleep(1.0)
    for sock in socks:
        sock.close()


if __name__ == "__main__":
    main()
