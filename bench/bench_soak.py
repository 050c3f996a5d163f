"""Soak under faults: camera images at a steady share of capacity, with the faults a site sees in a year.

    .venv/bin/python bench/bench_soak.py --bundle DIR [--minutes 30] [--load 0.8] [--rate R]

One daemon node on PostgreSQL (cluster mode), Orthanc as the PACS, the data directory on a file system
of its own (a loop-mounted ext4 image, so that it can fill up; needs root, else that fault is skipped).
First the capacity is measured (a burst of images in one association, first send to last SR in the
PACS), unless ``--rate`` gives it; then JPEG camera images are sent one association each (dcmtk's
storescu) at ``--load`` x capacity for ``--minutes``, a new case every few images. A refused or failed
send is sent again 10 s later, as a modality does. Faults, at fixed shares of the run:

- 15%: the PACS is down for 2 minutes (Orthanc stopped, then started on the same storage);
- 35%: the daemon is killed (SIGKILL) and started again 3 s later;
- 55%: PostgreSQL is restarted (fast shutdown);
- 75%: the data directory's file system is full for 60 s (a ballast file, then removed).

Then sending stops and the daemon drains. Prints: images sent, acknowledged, refused (sent again),
results delivered (an SR in the PACS for each acknowledged image), duplicates (objects delivered more
than once, images analysed more than once), lost (acknowledged, no SR in the PACS: must be 0); p50/p95
from send to SR in the PACS per phase; RSS (daemon + helper) slope in MB/min over each daemon process's
life after its first minute; open file descriptors at start and end. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pydicom
from pydicom.uid import generate_uid

from cds_daemon.common.manifest import read_manifest
from cds_daemon.reports.uids import derived_uid
from tests.support.dicom_files import write_images
from tests.support.hostile import rss_mb
from tests.support.postgres import PostgresServer
from tests.support.processes import DaemonProcess, OrthancProcess, storescu

LABELS = ("benign", "indeterminate", "malignant")
CASE_SIZE = 3  # images per case (study)
RETRY_S = 10.0
FAULTS = (("pacs outage", 0.15), ("daemon SIGKILL", 0.35), ("postgresql restart", 0.55), ("disk full", 0.75))


@dataclass
class Sent:
    uid: str
    first_sent: float
    phase: str
    attempts: int = 0
    acknowledged_at: float | None = None


@dataclass
class Run:
    phase: str = "warm-up"
    sent: dict[str, Sent] = field(default_factory=dict)
    refusals: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)


@contextlib.contextmanager
def own_file_system(path: Path, size_gb: int) -> Iterator[bool]:
    """``path`` on a loop-mounted ext4 image of its own (True), or a plain directory when not root (False)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        yield False
        return
    image = path.parent / "data.ext4"
    subprocess.run(["truncate", "-s", f"{size_gb}G", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(path)], check=True)
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
        image.unlink(missing_ok=True)


def fill(path: Path) -> Path:
    """Fill the file system of ``path`` to the last block; returns the ballast file."""
    ballast = path / "ballast"
    free = shutil.disk_usage(path).free
    subprocess.run(["fallocate", "-l", str(free), str(ballast)], check=False)
    with contextlib.suppress(OSError), open(ballast, "ab") as fh:  # what fallocate left, byte by byte blocks
        while True:
            fh.write(b"\0" * 65536)
            fh.flush()
    return ballast


def camera_images(root: Path, n: int) -> list[pydicom.Dataset]:
    files = []
    for i in range(n):
        files += write_images(root / f"pool{i}", 1, ts="jpeg-baseline", seed=5000 + i, label=LABELS[i % 3])
    return [pydicom.dcmread(f) for f in files]


def one_image(pool: list[pydicom.Dataset], n: int, directory: Path, study: str) -> tuple[str, Path]:
    """A new image (new UID) of the pool's picture ``n``, in ``study`` (one series and accession per study)."""
    ds = pool[n % len(pool)]
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[study, "series"])
    ds.AccessionNumber = f"SOAK{int(study.replace('.', '')[-8:]):08d}"
    path = directory / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return str(ds.SOPInstanceUID), path


def sender(run: Run, daemon: DaemonProcess, pool: list[pydicom.Dataset], rate: float, directory: Path) -> None:
    """One image per association at ``rate``; refused ones again after RETRY_S (their file is kept)."""
    retries: list[tuple[float, str, Path]] = []
    n, study, next_t = 0, generate_uid(), time.monotonic()
    while not run.stop.is_set():
        now = time.monotonic()
        due = [r for r in retries if r[0] <= now]
        if due:
            retries = [r for r in retries if r[0] > now]
            _, uid, path = due[0]
            retries += [r for r in due[1:]]
        elif now >= next_t:
            if n % CASE_SIZE == 0:
                study = generate_uid()
            uid, path = one_image(pool, n, directory, study)
            with run.lock:
                run.sent[uid] = Sent(uid, time.time(), run.phase)
            n += 1
            next_t += 1 / rate
        else:
            run.stop.wait(min(next_t - now, 0.05))
            continue
        r = storescu(daemon.port, path, extra=("-xy",))
        with run.lock:
            item = run.sent[uid]
            item.attempts += 1
            if r.returncode == 0:
                item.acknowledged_at = time.time()
                path.unlink(missing_ok=True)
            else:
                run.refusals += 1
                retries.append((time.monotonic() + RETRY_S, uid, path))


def capacity(daemon: DaemonProcess, pacs: OrthancProcess, pool: list[pydicom.Dataset], root: Path, n: int) -> float:
    """Images per second from the first send of a burst (one association) to its last SR in the PACS."""
    version = read_manifest(daemon.bundle).version if daemon.bundle else ""
    study = generate_uid()
    paths, uids = [], []
    for i in range(n):
        uid, path = one_image(pool, 10_000 + i, root, study if i % CASE_SIZE else (study := generate_uid()))
        paths.append(path)
        uids.append(uid)
    t0 = time.perf_counter()
    if storescu(daemon.port, *paths, extra=("-xy",)).returncode != 0:
        raise RuntimeError("the capacity burst was refused")
    for uid in uids:
        while pacs.instance_id(derived_uid(uid, version, "sr")) is None:
            if time.perf_counter() - t0 > 600:
                raise TimeoutError("the capacity burst did not drain")
            time.sleep(0.05)
    return n / (time.perf_counter() - t0)


def fds(pid: int) -> int:
    pids = [pid] + [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return sum(len(os.listdir(f"/proc/{p}/fd")) for p in pids if Path(f"/proc/{p}/fd").exists())


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) in MiB per minute."""
    if len(points) < 3:
        return float("nan")
    ts, ys = [p[0] for p in points], [p[1] for p in points]
    mt, my = statistics.fmean(ts), statistics.fmean(ys)
    var = sum((t - mt) ** 2 for t in ts)
    return 60 * sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / var if var else float("nan")


def log_events(path: Path) -> Iterator[dict[str, object]]:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                yield json.loads(line)


def epoch(ts: object) -> float:
    return datetime.fromisoformat(str(ts).replace("Z", "+00:00")).timestamp()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--load", type=float, default=0.8, help="share of the measured capacity to send at")
    ap.add_argument("--rate", type=float, default=None, help="capacity in images/s (skips the measurement)")
    ap.add_argument("--outage-s", type=float, default=120.0)
    ap.add_argument("--disk-full-s", type=float, default=60.0)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs) and print it")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cds-soak-"))
    duration = args.minutes * 60
    pg = PostgresServer().start()
    with own_file_system(root / "node" / "data", 16) as mounted:
        pacs = OrthancProcess(workdir=root / "orthanc").start()
        daemon = DaemonProcess(
            workdir=root / "node",
            bundle=args.bundle.resolve(),
            destinations=[("pacs", "ORTHANC", pacs.dicom_port)],
            database_url=pg.new_database(),
            extra_config="[egress]\npoll_s = 0.5\nretry_max_s = 60\n",
        ).start()
        run = Run()
        samples: list[tuple[int, float, float]] = []  # (pid, seconds since start, MiB)
        fd_counts: list[tuple[int, int]] = []
        version = read_manifest(args.bundle).version
        try:
            pool = camera_images(root / "pool", 24)
            (root / "send").mkdir()
            rate = args.rate or capacity(daemon, pacs, pool, root / "send", 30)
            target = args.load * rate
            print(f"capacity {rate:.2f} images/s; sending at {target:.2f} images/s for {args.minutes:.0f} min")
            assert daemon.proc is not None
            fd_counts.append((daemon.proc.pid, fds(daemon.proc.pid)))
            run.phase = "baseline"
            thread = threading.Thread(target=sender, args=(run, daemon, pool, target, root / "send"), daemon=True)
            start = time.monotonic()
            thread.start()
            pending = list(FAULTS)
            outage_end = disk_end = None
            ballast: Path | None = None
            while time.monotonic() - start < duration:
                elapsed = time.monotonic() - start
                if pending and elapsed >= pending[0][1] * duration:
                    name, _ = pending.pop(0)
                    run.phase = name
                    print(f"{elapsed:7.0f} s  {name}", flush=True)
                    if name == "pacs outage":
                        pacs.stop()
                        outage_end = elapsed + args.outage_s
                    elif name == "daemon SIGKILL":
                        fd_counts.append((daemon.proc.pid, fds(daemon.proc.pid)))
                        daemon.kill()
                        time.sleep(3)
                        daemon.start()
                        run.phase = "after SIGKILL"
                    elif name == "postgresql restart":
                        pg.restart()
                        run.phase = "after postgresql restart"
                    elif name == "disk full":
                        if mounted:
                            ballast = fill(daemon.data_dir)
                            disk_end = elapsed + args.disk_full_s
                        else:
                            print("          skipped: not root, the data directory has no file system of its own")
                if outage_end is not None and elapsed >= outage_end:
                    pacs.start()
                    outage_end = None
                    run.phase = "after pacs outage"
                    print(f"{elapsed:7.0f} s  pacs back", flush=True)
                if disk_end is not None and elapsed >= disk_end and ballast is not None:
                    ballast.unlink()
                    disk_end = None
                    run.phase = "after disk full"
                    print(f"{elapsed:7.0f} s  disk space back", flush=True)
                assert daemon.proc is not None
                with contextlib.suppress(OSError, ValueError):
                    samples.append((daemon.proc.pid, elapsed, rss_mb(daemon.proc.pid)))
                time.sleep(2)
            run.stop.set()
            thread.join(120)
            print(f"{time.monotonic() - start:7.0f} s  sending stopped; draining", flush=True)
            acknowledged = [s for s in run.sent.values() if s.acknowledged_at is not None]
            missing = {s.uid for s in acknowledged}
            drain_deadline = time.monotonic() + 900
            while missing and time.monotonic() < drain_deadline:
                missing = {u for u in missing if pacs.instance_id(derived_uid(u, version, "sr")) is None}
                time.sleep(5)
            assert daemon.proc is not None
            fd_counts.append((daemon.proc.pid, fds(daemon.proc.pid)))
        finally:
            run.stop.set()
            with contextlib.suppress(Exception):
                daemon.stop()
            pacs.stop()
        report(run, acknowledged, missing, daemon, samples, fd_counts, version)
    pg.remove()
    if args.keep:
        print(f"work directory: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


def report(
    run: Run,
    acknowledged: list[Sent],
    missing: set[str],
    daemon: DaemonProcess,
    samples: list[tuple[int, float, float]],
    fd_counts: list[tuple[int, int]],
    version: str,
) -> None:
    events = list(log_events(daemon.log_path))
    delivered: Counter[str] = Counter()
    sr_at: dict[str, float] = {}
    reported: Counter[str] = Counter()
    for e in events:
        if e.get("event") == "object_delivered":
            delivered[str(e["object_uid"])] += 1
            if e.get("kind") == "sr":
                sr_at.setdefault(str(e["source_uid"]), epoch(e["timestamp"]))
        elif e.get("event") == "instance_reported":
            reported[str(e.get("sop_instance_uid"))] += 1
    received_twice = sum(1 for e in events if e.get("event") == "instance_received" and e.get("duplicate"))
    print(f"images sent {len(run.sent)}, acknowledged {len(acknowledged)}, refusals (sent again) {run.refusals}")
    print(f"results delivered (SR in the PACS): {len(acknowledged) - len(missing)}; lost: {len(missing)}")
    print(
        f"duplicates: objects delivered more than once {sum(1 for n in delivered.values() if n > 1)}, "
        f"images analysed more than once {sum(1 for n in reported.values() if n > 1)}, "
        f"images received again after a lost acknowledgement {received_twice}"
    )
    by_phase: dict[str, list[float]] = {}
    for s in acknowledged:
        if s.uid in sr_at:
            by_phase.setdefault(s.phase, []).append(sr_at[s.uid] - s.first_sent)
    for phase, values in by_phase.items():
        values.sort()
        p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
        print(f"  {phase:<26} n={len(values):5d}  p50 {statistics.median(values):7.2f} s  p95 {p95:7.2f} s")
    for pid in dict.fromkeys(p for p, _, _ in samples):
        points = [(t, m) for p, t, m in samples if p == pid]
        settled = [(t, m) for t, m in points if t - points[0][0] >= 60]
        peak = max(m for _, m in points)
        print(
            f"daemon pid {pid}: RSS {points[0][1]:.0f} -> {points[-1][1]:.0f} MiB (peak {peak:.0f}),"
            f" slope after its first minute {slope(settled):+.2f} MB/min over {len(settled)} samples"
        )
    print("open file descriptors (daemon + helper): " + ", ".join(f"pid {p}: {n}" for p, n in fd_counts))


if __name__ == "__main__":
    main()
