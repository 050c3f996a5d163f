"""Issue 5 end to end: storescu -> daemon -> model -> SR/SC/KOS -> Orthanc, as real processes."""

from __future__ import annotations

import io
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from cds_daemon.common.manifest import read_manifest
from cds_daemon.reports.uids import derived_uid
from tests.support.dicom_files import write_images
from tests.support.processes import DAEMON_AE, STORESCU_PROPOSE, DaemonProcess, OrthancProcess, storescu
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

FAST_EGRESS = "[egress]\nretry_base_s = 0.3\nretry_max_s = 1.0\npoll_s = 0.5\ntimeout_s = 5\n"


def _start(make_daemon: Callable[..., DaemonProcess], bundle: Path, pacs: OrthancProcess) -> DaemonProcess:
    return make_daemon(
        bundle=bundle, destinations=[("pacs", "ORTHANC", pacs.dicom_port)], extra_config=FAST_EGRESS
    ).start()


def _outputs(pacs: OrthancProcess, source_uid: str, version: str) -> dict[str, str | None]:
    return {kind: pacs.instance_id(derived_uid(source_uid, version, kind)) for kind in ("sr", "sc", "kos")}


def test_images_come_back_as_sr_sc_and_kos(
    make_daemon: Callable[..., DaemonProcess], tiny_bundle: Path, orthanc: OrthancProcess, tmp_path: Path
) -> None:
    version = read_manifest(tiny_bundle).version
    daemon = _start(make_daemon, tiny_bundle, orthanc)
    sources: list[Path] = []
    for i, (iod, ts, label) in enumerate(
        [
            ("vl-microscopic", "explicit", "benign"),
            ("vl-microscopic", "jpeg-baseline", "malignant"),
            ("vl-slide-microscopic", "jpeg2000", "indeterminate"),
            ("vl-photographic", "rle", "benign"),
            ("sc", "explicit", "malignant"),
        ]
    ):
        files = write_images(tmp_path / f"in{i}", 1, iod=iod, ts=ts, seed=300 + i, label=label)
        r = storescu(daemon.port, *files, extra=STORESCU_PROPOSE[ts])
        assert r.returncode == 0, r.stderr
        sources += files

    for path in sources:
        src = pydicom.dcmread(path)
        uid = str(src.SOPInstanceUID)

        def reported_event(uid: str = uid) -> dict | None:
            found = [
                e for e in daemon.log_events() if e["event"] == "instance_reported" and e["sop_instance_uid"] == uid
            ]
            return found[0] if found else None

        referred = wait_until(reported_event, 120, f"the report of {path.name}")["referred"]
        expected = {"sr", "sc", "kos"} if referred else {"sr", "sc"}

        def complete(uid: str = uid, expected: set[str] = expected) -> bool:
            return {kind for kind, found in _outputs(orthanc, uid, version).items() if found} >= expected

        wait_until(complete, 120, f"{sorted(expected)} for {path.name}")
        out = _outputs(orthanc, uid, version)
        sr = hd.sr.srread(io.BytesIO(orthanc.file(out["sr"])))  # type: ignore[arg-type]
        sc = pydicom.dcmread(io.BytesIO(orthanc.file(out["sc"])))  # type: ignore[arg-type]
        assert sr.StudyInstanceUID == sc.StudyInstanceUID == src.StudyInstanceUID
        assert sr.SeriesInstanceUID != src.SeriesInstanceUID
        assert "NOT FOR DIAGNOSIS" in sc.SeriesDescription
        assert sr.VerificationFlag == "UNVERIFIED"

        status = daemon.cli("status", "--json")
        prediction = json.loads(status.stdout)
        assert prediction["instances"]["failed"] == 0

        report = daemon.log_events()
        reported = [e for e in report if e["event"] == "instance_reported" and e["sop_instance_uid"] == uid]
        assert len(reported) == 1
        referred = reported[0]["referred"]
        assert (out["kos"] is not None) == referred, "a KOS exactly for referred cases"
        text = str(sr)
        assert reported[0]["predicted"] in text.lower() or referred is not None

    # Every instance ends delivered; nothing failed or dead.
    def all_delivered() -> bool:
        counts = json.loads(daemon.cli("status", "--json").stdout)
        return counts["instances"]["delivered"] == len(sources)

    wait_until(all_delivered, 60, "every instance delivered")


def test_resend_creates_no_duplicate(
    make_daemon: Callable[..., DaemonProcess], tiny_bundle: Path, orthanc: OrthancProcess, tmp_path: Path
) -> None:
    version = read_manifest(tiny_bundle).version
    daemon = _start(make_daemon, tiny_bundle, orthanc)
    files = write_images(tmp_path / "in", 2, seed=400)
    assert storescu(daemon.port, *files).returncode == 0
    uids = [str(pydicom.dcmread(f).SOPInstanceUID) for f in files]
    wait_until(lambda: all(_outputs(orthanc, u, version)["sr"] for u in uids), 120, "first results")
    wait_until(lambda: json.loads(daemon.cli("status", "--json").stdout)["instances"]["delivered"] == 2, 60, "delivery")
    before = len(orthanc.instances())
    assert storescu(daemon.port, *files).returncode == 0
    time.sleep(3)
    assert len(orthanc.instances()) == before


def test_pacs_outage_outputs_arrive_after_restart(
    make_daemon: Callable[..., DaemonProcess], tiny_bundle: Path, tmp_path: Path
) -> None:
    version = read_manifest(tiny_bundle).version
    pacs = OrthancProcess(workdir=tmp_path / "orthanc")
    daemon = _start(make_daemon, tiny_bundle, pacs)  # PACS not started yet: it is "down"
    files = write_images(tmp_path / "in", 2, seed=500)
    assert storescu(daemon.port, *files).returncode == 0
    wait_until(
        lambda: any(e["event"] == "object_send_failed" for e in daemon.log_events()), 60, "a failed delivery attempt"
    )
    pacs.start()
    try:
        uids = [str(pydicom.dcmread(f).SOPInstanceUID) for f in files]
        wait_until(lambda: all(_outputs(pacs, u, version)["sr"] for u in uids), 60, "results after the PACS returned")
    finally:
        pacs.stop()


def test_undecodable_image_fails_alone(
    make_daemon: Callable[..., DaemonProcess], tiny_bundle: Path, orthanc: OrthancProcess, tmp_path: Path
) -> None:
    daemon = _start(make_daemon, tiny_bundle, orthanc)
    good, bad = write_images(tmp_path / "in", 2, ts="jpeg-baseline", seed=600)
    ds = pydicom.dcmread(bad)
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    # Headers and scan header intact (ingest's codestream check passes), then misplaced markers in the scan.
    corrupt = frame[: frame.index(b"\xff\xda") + 14] + b"\xff\xc0\x00\x11" * 40 + b"\xff\xd9"
    ds.PixelData = pydicom.encaps.encapsulate([corrupt])
    ds.save_as(bad, enforce_file_format=True)
    assert storescu(daemon.port, bad, good, extra=STORESCU_PROPOSE["jpeg-baseline"]).returncode == 0

    def settled() -> bool:
        counts = json.loads(daemon.cli("status", "--json").stdout)["instances"]
        return counts["failed"] == 1 and counts["delivered"] + counts["reported"] == 1

    wait_until(settled, 120, "one failed, one reported")
    failed = [e for e in daemon.log_events() if e["event"] == "instance_not_analysed"]
    assert [e["cause"] for e in failed] == ["decode"]


def test_helper_process_killed_mid_burst_loses_nothing(
    make_daemon: Callable[..., DaemonProcess], tiny_bundle: Path, orthanc: OrthancProcess, tmp_path: Path
) -> None:
    """The OOM killer (here: SIGKILL) takes the helper process: it is restarted, every image is still reported."""
    version = read_manifest(tiny_bundle).version
    daemon = _start(make_daemon, tiny_bundle, orthanc)
    helper = next(e["pid"] for e in daemon.log_events() if e["event"] == "offload_started")
    files = write_images(tmp_path / "in", 30, seed=700)
    assert storescu(daemon.port, *files).returncode == 0

    def counts() -> dict[str, int]:
        return json.loads(daemon.cli("status", "--json").stdout)["instances"]

    wait_until(lambda: counts()["reported"] + counts()["delivered"] >= 3, 120, "the first reports")
    os.kill(helper, signal.SIGKILL)
    wait_until(lambda: counts()["delivered"] == 30, 240, "all 30 delivered")
    assert counts()["failed"] == 0
    events = [e["event"] for e in daemon.log_events()]
    assert "offload_restarted" in events
    assert "cds_helper_restarts_total 1.0" in daemon.http("/metrics")[1]
    late = write_images(tmp_path / "late", 1, seed=9701)
    assert storescu(daemon.port, *late).returncode == 0
    wait_until(lambda: counts()["delivered"] == 31, 120, "an image sent after the restart")
    for f in [*files, *late]:
        uid = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        assert _outputs(orthanc, uid, version)["sr"] is not None
    assert daemon.proc is not None
    helpers = _helpers_of(daemon.proc.pid)
    assert helpers and helper not in helpers
    daemon.kill()  # SIGKILL: the daemon cannot stop its helper, which must notice and leave by itself
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in helpers), 10, "the orphaned helper to exit")


def _helpers_of(parent: int) -> list[int]:
    """PIDs of the multiprocessing children (helper, resource tracker) of ``parent``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == parent and b"spawn_main" in cmdline:
            found.append(int(stat.parent.name))
    return found


def test_sigterm_mid_burst_drains_and_resumes(
    make_daemon: Callable[..., DaemonProcess], tiny_bundle: Path, tmp_path: Path
) -> None:
    """A clean stop while images are in the pipeline: exit 0, nothing failed, the rest done after restart.

    120 images: the stop must land mid-burst however fast the machine analyses them."""
    daemon = make_daemon(bundle=tiny_bundle).start()
    n = 120
    files = write_images(tmp_path / "in", n, seed=9400)
    assert storescu(daemon.port, *files).returncode == 0

    def counts() -> dict[str, int]:
        return json.loads(daemon.cli("status", "--json").stdout)["instances"]

    wait_until(
        lambda: '"instance_reported"' in daemon.log_path.read_text(errors="replace"), 120, "the first report", 0.05
    )
    assert daemon.stop(signal.SIGTERM, timeout=60) == 0
    stopped = counts()
    assert stopped["failed"] == 0 and stopped["processing"] == 0 and stopped["reported"] < n, stopped
    daemon.start()
    wait_until(lambda: counts()["reported"] == n, 180, "the rest after the restart")
    assert counts()["failed"] == 0


def test_storage_commitment_end_to_end(
    make_daemon: Callable[..., DaemonProcess], tiny_bundle: Path, tmp_path: Path
) -> None:
    """With storage commitment on, the daemon counts its reports delivered once Orthanc has committed them."""
    daemon = make_daemon(bundle=tiny_bundle, extra_config=FAST_EGRESS)
    pacs = OrthancProcess(workdir=tmp_path / "orthanc", modalities={"cds": (DAEMON_AE, daemon.port)}).start()
    try:
        daemon.destinations = [("pacs", "ORTHANC", pacs.dicom_port)]
        daemon.destination_options = {"pacs": {"storage_commitment": True}}
        daemon.start()
        files = write_images(tmp_path / "in", 3, seed=9500)
        assert storescu(daemon.port, *files).returncode == 0
        wait_until(
            lambda: json.loads(daemon.cli("status", "--json").stdout)["instances"]["delivered"] == 3,
            120,
            "every instance committed",
        )
        events = [e for e in daemon.log_events() if e["event"] in ("commitment_requested", "commitment_report")]
        assert {e["event"] for e in events} == {"commitment_requested", "commitment_report"}
        assert sum(e["committed"] for e in events if e["event"] == "commitment_report") >= 6  # SR + SC (+ KOS) each
        assert json.loads(daemon.cli("status", "--json").stdout)["outbox"]["awaiting_commitment"] == 0
    finally:
        pacs.stop()
