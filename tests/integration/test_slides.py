"""Issue 23: whole slides (VL Whole Slide Microscopy) in, informative fields chosen, WSI-native objects out.

Real processes: dcmtk's storescu sends the levels, the daemon receives them to disk, waits for the slide's
quiet period, analyses it, and Orthanc receives the 3D SR, annotations, heatmap map, mosaic and KOS once.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from wsidicom import WsiDicom

from cds_daemon.common.manifest import read_manifest
from cds_daemon.reports.uids import derived_uid
from dicom_fixtures.smear import make_smear
from dicom_fixtures.wsm import BROKEN_SLIDES, write_broken_slide
from tests.integration.test_browser import PASSWORD, _cli
from tests.support.processes import DaemonProcess, OrthancProcess, echoscu, send_raw, storescu
from tests.support.slides import dicomize_with_orthanc, hit_rate, write_slide
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

CONFIG = (
    "[egress]\nretry_base_s = 0.3\nretry_max_s = 1.0\npoll_s = 0.5\ntimeout_s = 20\n"
    "[slides]\nquiet_s = 2\n"
    "[reports]\ncase_sr = false\n"
)
KINDS = ("sr", "ann", "pm", "sc", "kos")


def _start(make: Callable[..., DaemonProcess], bundle: Path, pacs: OrthancProcess, **kw: object) -> DaemonProcess:
    return make(bundle=bundle, destinations=[("pacs", "ORTHANC", pacs.dicom_port)], extra_config=CONFIG, **kw).start()


def _rows(daemon: DaemonProcess, sql: str) -> list[tuple[object, ...]]:
    import sqlite3

    with sqlite3.connect(daemon.data_dir / "cds.sqlite3") as db:
        return list(db.execute(sql).fetchall())


def _representative(daemon: DaemonProcess, series_uid: str) -> str:
    def reported() -> str | None:
        rows = _rows(
            daemon,
            f"SELECT i.sop_instance_uid FROM instances i JOIN predictions p USING (sop_instance_uid)"
            f" WHERE i.series_instance_uid = '{series_uid}'",
        )
        return str(rows[0][0]) if rows else None

    return wait_until(reported, 180, "the slide's result")


def _delivered(pacs: OrthancProcess, uid: str, version: str, kinds: tuple[str, ...]) -> dict[str, str]:
    def found() -> dict[str, str] | None:
        ids = {k: pacs.instance_id(derived_uid(uid, version, k)) for k in kinds}
        return {k: v for k, v in ids.items() if v} if all(ids.values()) else None

    return wait_until(found, 120, f"{', '.join(kinds)} in Orthanc")


def test_a_synthetic_slide_comes_back_as_wsi_objects(
    make_daemon: Callable[..., DaemonProcess], tiny_bundle: Path, orthanc: OrthancProcess, tmp_path: Path
) -> None:
    version = read_manifest(tiny_bundle).version
    written, smear = write_slide(tmp_path / "slide", "malignant", seed=11, focal_planes=3)
    daemon = _start(make_daemon, tiny_bundle, orthanc)
    r = storescu(daemon.port, *written.paths, extra=("-xy",))
    assert r.returncode == 0, r.stderr
    uid = _representative(daemon, written.series_uid)
    ids = _delivered(orthanc, uid, version, KINDS)

    sr = pydicom.dcmread(io.BytesIO(orthanc.file(ids["sr"])))
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    fields = hd.sr.srread(io.BytesIO(orthanc.file(ids["sr"]))).content.get_planar_roi_measurement_groups()
    assert fields, "no field regions in the SR"
    boxes = []
    for group in fields:
        region = group.roi
        assert isinstance(region, hd.sr.ImageRegion3D)
        assert region.frame_of_reference_uid == written.frame_of_reference_uid
        assert region.value.shape == (5, 3)
    record = _rows(daemon, f"SELECT detail FROM predictions WHERE sop_instance_uid = '{uid}'")[0][0]
    detail = json.loads(str(record))
    boxes = [tuple(f["box"]) for f in detail["slide"]["fields"]]
    assert len(boxes) == len(fields)
    rate = hit_rate(boxes, smear)  # type: ignore[arg-type]
    print(f"field hit rate on the synthetic slide: {rate:.2f} ({len(boxes)} fields)")
    assert rate >= 0.75
    assert all(f["z"] == 1.0 for f in detail["slide"]["fields"]), "the focused plane is the middle one (z = 1 µm)"

    ann = hd.ann.annread(io.BytesIO(orthanc.file(ids["ann"])))
    assert ann.FrameOfReferenceUID == written.frame_of_reference_uid
    assert sum(len(g.get_graphic_data("3D")) for g in ann.get_annotation_groups()) == len(boxes)
    pm = pydicom.dcmread(io.BytesIO(orthanc.file(ids["pm"])))
    assert pm.ContentLabel == "HEATMAP" and pm.FrameOfReferenceUID == written.frame_of_reference_uid
    assert written.container_identifier.encode() in orthanc.file(ids["sr"]), "the SR's subject: the slide (TID 1009)"

    out = tmp_path / "back"
    out.mkdir()
    for kind in ("sr", "ann", "pm", "sc", "kos"):
        path = out / f"{kind}.dcm"
        path.write_bytes(orthanc.file(ids[kind]))
        check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [ln for ln in check.stderr.splitlines() if ln.startswith("Error")]
        assert not errors, f"{kind}: {errors}"
    with WsiDicom.open([*written.paths, out / "ann.dcm"]) as wsi:  # wsidicom reads the slide with our annotations
        assert len(wsi.annotations) == 1

    levels = _rows(daemon, f"SELECT state FROM instances WHERE series_instance_uid = '{written.series_uid}'")
    wait_until(
        lambda: all(
            s == "delivered"
            for (s,) in _rows(daemon, f"SELECT state FROM instances WHERE series_instance_uid = '{written.series_uid}'")
        ),
        60,
        "every level delivered",
    )
    assert len(levels) == len(written.paths)
    assert len(_rows(daemon, "SELECT * FROM predictions")) == 1, "a slide is analysed once, not per level"
    item = _rows(daemon, f"SELECT reasons FROM predictions WHERE sop_instance_uid = '{uid}'")[0][0]
    assert "slide_validation" in str(item)
    assert _rows(daemon, "SELECT COUNT(*) FROM worklist_images")[0][0] == 1


def test_third_party_slides_are_analysed(
    make_daemon: Callable[..., DaemonProcess], tiny_bundle: Path, orthanc: OrthancProcess, tmp_path: Path
) -> None:
    """Orthanc's dicomizer: no Image Type, Pixel Spacing with rows and columns swapped; one slide with a Frame of
    Reference given in its dataset, one without (then no annotations or map, and 2D regions in the SR)."""
    version = read_manifest(tiny_bundle).version
    _, smear = write_slide(tmp_path / "ours", "benign", seed=12)
    framed = dicomize_with_orthanc(smear, tmp_path / "framed", frame_of_reference_uid="1.2.826.0.1.3680043.10.9.1")
    bare = dicomize_with_orthanc(smear, tmp_path / "bare", accession="FXA-77700002")
    daemon = _start(make_daemon, tiny_bundle, orthanc)
    for files, kinds in ((framed, KINDS), (bare, ("sr", "sc", "kos"))):
        series = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
        assert storescu(daemon.port, *files, extra=("-xy",)).returncode == 0
        uid = _representative(daemon, series)
        ids = _delivered(orthanc, uid, version, kinds)
        detail = json.loads(
            str(_rows(daemon, f"SELECT detail FROM predictions WHERE sop_instance_uid = '{uid}'")[0][0])
        )
        assert any("Pixel Spacing" in r for r in detail["slide"]["repairs"])
        assert any("Image Type" in r for r in detail["slide"]["repairs"])
        rate = hit_rate([tuple(f["box"]) for f in detail["slide"]["fields"]], smear)  # type: ignore[misc]
        print(f"field hit rate on the Orthanc-dicomized slide: {rate:.2f}")
        assert rate >= 0.75
        fields = hd.sr.srread(io.BytesIO(orthanc.file(ids["sr"]))).content.get_planar_roi_measurement_groups()
        region = hd.sr.ImageRegion3D if len(kinds) == len(KINDS) else hd.sr.ImageRegion
        assert fields and all(isinstance(g.roi, region) for g in fields)
        if len(kinds) < len(KINDS):
            assert orthanc.instance_id(derived_uid(uid, version, "ann")) is None
            assert orthanc.instance_id(derived_uid(uid, version, "pm")) is None
        _decided_with_fields(daemon, orthanc, uid, version, region, tmp_path)


def _decided_with_fields(
    daemon: DaemonProcess, pacs: OrthancProcess, uid: str, version: str, region: type, out: Path
) -> None:
    """A decision from the command line naming examined fields 2 and 1 (diagnostic): the verified SR holds
    them as regions of the slide SR's kind (3D with a Frame of Reference, 2D without); dciodvfy finds no error."""
    if _cli(daemon, "user", "list").stdout.find("dr.lee") < 0:
        added = _cli(daemon, "user", "add", "dr.lee", "--password-stdin", stdin=PASSWORD)
        assert added.returncode == 0, added.stderr
    items = json.loads(_cli(daemon, "worklist", "list", "--json").stdout)["items"]
    (item,) = [i for i in items if i["images"] == [uid]]
    args = ("--field", "2", "--field", "1", "--diagnostic-field", "1", "--reviewer", "dr.lee", "--password-stdin")
    made = _cli(daemon, "worklist", "decide", "--item", str(item["id"]), "--decision", "confirm", *args, stdin=PASSWORD)
    assert made.returncode == 0, made.stderr
    orthanc_id = wait_until(lambda: pacs.instance_id(derived_uid(uid, version, "review-sr:1")), 60, "the review SR")
    data = pacs.file(str(orthanc_id))
    groups = hd.sr.srread(io.BytesIO(data)).content.get_planar_roi_measurement_groups()
    assert [g.tracking_uid for g in groups] == [derived_uid(uid, version, f"field:{n}") for n in (1, 2)]
    assert all(isinstance(g.roi, region) for g in groups)
    path = out / f"review-{uid}.dcm"
    path.write_bytes(data)
    check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    assert not [ln for ln in check.stderr.splitlines() if ln.startswith("Error")], check.stderr


def test_an_empty_slide_ends_as_not_analysed(
    make_daemon: Callable[..., DaemonProcess], tiny_bundle: Path, orthanc: OrthancProcess, tmp_path: Path
) -> None:
    version = read_manifest(tiny_bundle).version
    written, _ = write_slide(tmp_path / "empty", "benign", seed=13, cells=0, blood=3)
    daemon = _start(make_daemon, tiny_bundle, orthanc)
    assert storescu(daemon.port, *written.paths, extra=("-xy",)).returncode == 0
    uid = _representative(daemon, written.series_uid)
    _delivered(orthanc, uid, version, ("sr",))
    state, reason = _rows(daemon, f"SELECT state, state_reason FROM instances WHERE sop_instance_uid = '{uid}'")[0]
    assert state == "failed" and "no informative field" in str(reason)
    parts = _rows(daemon, f"SELECT state FROM instances WHERE series_instance_uid = '{written.series_uid}'")
    assert {s for (s,) in parts} == {"failed"}
    assert _rows(daemon, "SELECT COUNT(*) FROM worklist_images")[0][0] == 1


def test_kill_during_transfer_and_during_analysis_loses_and_duplicates_nothing(
    make_daemon: Callable[..., DaemonProcess], tiny_bundle: Path, orthanc: OrthancProcess, tmp_path: Path
) -> None:
    version = read_manifest(tiny_bundle).version
    written, _ = write_slide(tmp_path / "slide", "indeterminate", seed=14, grid=(5, 8), cells=6, jpeg=False)
    daemon = _start(make_daemon, tiny_bundle, orthanc, listener_options={"max_pdu_size": 4096})
    big = max(written.paths, key=lambda p: p.stat().st_size)  # the native level 0: about 150 MB
    sent: list[subprocess.CompletedProcess[str]] = []
    sender = threading.Thread(target=lambda: sent.append(storescu(daemon.port, big)))
    sender.start()
    incoming = daemon.data_dir / "spool" / "incoming"
    wait_until(lambda: any(p.stat().st_size > 2**20 for p in incoming.glob("*.part")), 60, "the transfer", 0.01)
    daemon.stop(signal.SIGKILL)
    sender.join()
    assert sent and sent[0].returncode != 0, "the sender saw the transfer fail"
    assert _rows(daemon, "SELECT COUNT(*) FROM instances")[0][0] == 0, "nothing acknowledged, nothing recorded"

    daemon.start()
    assert not list((daemon.data_dir / "spool" / "incoming").glob("*.part")), "the partial file is removed at start"
    assert storescu(daemon.port, *written.paths).returncode == 0
    wait_until(
        lambda: _rows(daemon, "SELECT COUNT(*) FROM instances WHERE state = 'processing'")[0][0] == 1,
        60,
        "the slide under analysis",
        interval=0.05,
    )
    daemon.stop(signal.SIGKILL)
    daemon.start()
    uid = _representative(daemon, written.series_uid)
    _delivered(orthanc, uid, version, KINDS)
    wait_until(
        lambda: {s for (s,) in _rows(daemon, "SELECT state FROM instances")} == {"delivered"}, 60, "all delivered"
    )
    assert len(_rows(daemon, "SELECT * FROM instances")) == len(written.paths)
    assert len(_rows(daemon, "SELECT * FROM predictions")) == 1
    for kind in KINDS:
        assert len(orthanc.lookup(derived_uid(uid, version, kind))) == 1, f"{kind} arrived more than once"
    time.sleep(0.1)


def test_broken_slides_are_refused_or_end_visibly(
    make_daemon: Callable[..., DaemonProcess], tiny_bundle: Path, orthanc: OrthancProcess, tmp_path: Path
) -> None:
    """dicom_fixtures.wsm.BROKEN_SLIDES: a truncated level and a wrong offset table are refused at C-STORE
    (the rest of that slide then lacks its finest level and is not analysed); undecodable tiles end the slide as
    "not analysed"; a slide without its lower levels is analysed from level 0."""
    smear = make_smear("benign", 31, grid=(2, 3), cell_patches=3, blood_patches=1)
    daemon = _start(make_daemon, tiny_bundle, orthanc)
    outcomes = {}
    for n, kind in enumerate(BROKEN_SLIDES):
        paths = write_broken_slide(kind, smear, tmp_path / kind, seed=40 + n)
        statuses = [send_raw(daemon.port, p) for p in paths]
        series = str(pydicom.dcmread(paths[-1], stop_before_pixels=True).SeriesInstanceUID)
        uid = _representative(daemon, series)
        (state, reason), *_ = _rows(
            daemon, f"SELECT state, state_reason FROM instances WHERE sop_instance_uid = '{uid}'"
        )
        outcomes[kind] = (statuses, state, str(reason))
    assert outcomes["truncated-level"][0][0] in (0xA900, 0xC000) and outcomes["truncated-level"][0][1:] == [0, 0]
    assert outcomes["wrong-offsets"][0][0] in (0xA900, 0xC000)
    for kind in ("truncated-level", "wrong-offsets"):
        assert outcomes[kind][1] == "failed" and "finest level" in outcomes[kind][2]
    assert outcomes["undecodable-tiles"][1] == "failed" and "cannot be read" in outcomes["undecodable-tiles"][2]
    assert outcomes["missing-levels"][0] == [0] and outcomes["missing-levels"][1] == "reported"
    assert echoscu(daemon.port).returncode == 0


def test_the_size_limit_is_per_sop_class(make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    """max_dataset_mb (1 MiB here) stops a camera image; a whole-slide level may be up to its own limit."""
    from tests.support.dicom_files import write_images

    daemon = make_daemon(listener_options={"max_dataset_mb": 1}).start()
    written, _ = write_slide(tmp_path / "slide", "benign", seed=15)
    assert written.paths[0].stat().st_size > 2**20
    assert storescu(daemon.port, written.paths[0], extra=("-xy",)).returncode == 0
    camera = write_images(tmp_path / "camera", 1, seed=15)  # 2.3 MB uncompressed
    assert storescu(daemon.port, *camera).returncode != 0
    assert _rows(daemon, "SELECT COUNT(*) FROM instances") == [(1,)]
    assert _rows(daemon, "SELECT code FROM rejections") == [("dataset_too_large",)]
    incoming = daemon.data_dir / "spool" / "incoming"
    wait_until(lambda: not list(incoming.glob("*.part")), 10, "the aborted message's file removed")


def test_the_case_sr_includes_the_slide(
    make_daemon: Callable[..., DaemonProcess], tiny_bundle: Path, orthanc: OrthancProcess, tmp_path: Path
) -> None:
    version = read_manifest(tiny_bundle).version
    written, _ = write_slide(tmp_path / "slide", "malignant", seed=16)
    config = CONFIG.replace("case_sr = false", "case_sr = true\ncase_quiet_s = 1")
    daemon = make_daemon(
        bundle=tiny_bundle, destinations=[("pacs", "ORTHANC", orthanc.dicom_port)], extra_config=config
    )
    daemon.start()
    assert storescu(daemon.port, *written.paths, extra=("-xy",)).returncode == 0
    uid = _representative(daemon, written.series_uid)

    def case_sr() -> str | None:
        rows = _rows(daemon, "SELECT object_uid FROM outbox WHERE kind = 'case-sr' AND state = 'delivered'")
        return str(rows[0][0]) if rows else None

    case_uid = wait_until(case_sr, 120, "the case SR delivered")
    case = pydicom.dcmread(io.BytesIO(orthanc.file(str(orthanc.instance_id(case_uid)))))
    evidence = {
        str(ref.ReferencedSOPInstanceUID): str(ref.ReferencedSOPClassUID)
        for study in case.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert evidence[uid] == "1.2.840.10008.5.1.4.1.1.77.1.6"
    assert evidence[derived_uid(uid, version, "sr")] == "1.2.840.10008.5.1.4.1.1.88.34"
