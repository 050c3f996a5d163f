"""No silent ends: an acknowledged image the AI cannot analyse ends as a "not analysed" worklist case and SR."""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from cds_daemon.analysis.bundle import read_manifest
from cds_daemon.reports.uids import derived_uid
from tests.support.dicom_files import write_images
from tests.support.processes import STORESCU_PROPOSE, DaemonProcess, OrthancProcess, storescu
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

FAST_EGRESS = "[egress]\nretry_base_s = 0.3\nretry_max_s = 1.0\npoll_s = 0.5\ntimeout_s = 5\n"


def _undecodable(path: Path) -> Path:
    """Headers intact (ingest's codestream check passes), misplaced markers in the scan: decoding fails."""
    ds = pydicom.dcmread(path)
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    corrupt = frame[: frame.index(b"\xff\xda") + 14] + b"\xff\xc0\x00\x11" * 40 + b"\xff\xd9"
    ds.PixelData = pydicom.encaps.encapsulate([corrupt])
    ds.save_as(path, enforce_file_format=True)
    return path


def _unreportable(path: Path) -> Path:
    """A character set no report can be written in (the image itself decodes): report building fails."""
    ds = pydicom.dcmread(path)
    ds.SpecificCharacterSet = "ISO_IR 999"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_failures_end_as_visible_not_analysed_cases(
    make_daemon: Callable[..., DaemonProcess], tiny_bundle: Path, orthanc: OrthancProcess, tmp_path: Path
) -> None:
    version = read_manifest(tiny_bundle).version
    daemon = make_daemon(
        bundle=tiny_bundle, destinations=[("pacs", "ORTHANC", orthanc.dicom_port)], extra_config=FAST_EGRESS
    ).start()
    jpeg = _undecodable(write_images(tmp_path / "a", 1, ts="jpeg-baseline", seed=700)[0])
    charset = _unreportable(write_images(tmp_path / "b", 1, seed=701)[0])
    assert storescu(daemon.port, jpeg, extra=STORESCU_PROPOSE["jpeg-baseline"]).returncode == 0
    assert storescu(daemon.port, charset).returncode == 0
    uids = {name: str(pydicom.dcmread(p).SOPInstanceUID) for name, p in (("decode", jpeg), ("report", charset))}

    db = daemon.data_dir / "cds.sqlite3"

    def rows(sql: str, *args: object) -> list[tuple[object, ...]]:
        with sqlite3.connect(db) as con:
            return con.execute(sql, args).fetchall()

    wait_until(lambda: len(rows("SELECT 1 FROM instances WHERE state = 'failed'")) == 2, 90, "both images failed")
    for stage, uid in uids.items():
        ((reasons, detail),) = rows("SELECT reasons, detail FROM predictions WHERE sop_instance_uid = ?", uid)
        assert json.loads(str(reasons)) == ["not_analysed"], stage
        assert json.loads(str(detail))["reason_texts"][0].startswith("not analysed by the AI: "), stage
        ((priority, status),) = rows(
            "SELECT w.priority, w.status FROM worklist w JOIN worklist_images i ON i.worklist_id = w.id"
            " WHERE i.sop_instance_uid = ?",
            uid,
        )
        assert (priority, status) == (2, "open"), stage
    (decode_reason,) = rows("SELECT state_reason FROM instances WHERE sop_instance_uid = ?", uids["decode"])[0]
    assert "cannot decode" in str(decode_reason)

    # The undecodable image's header is fine: the PACS gets an SR that says it was not analysed, and why.
    sr_uid = derived_uid(uids["decode"], version, "sr")
    wait_until(lambda: orthanc.instance_id(sr_uid), 60, "the not-analysed SR in the PACS")
    sr = pydicom.dcmread(io.BytesIO(orthanc.file(orthanc.instance_id(sr_uid) or "")))
    texts = [str(elem.value) for elem in sr.iterall() if elem.keyword == "TextValue"]
    assert any(t.startswith("not analysed by the AI: cannot decode pixel data") for t in texts), texts
    assert str(sr.SeriesDescription).startswith("AI not analysed") and sr.VerificationFlag == "UNVERIFIED"
    # The other one's report cannot be written at all: its worklist case is the only trace, and it is there.
    assert not rows("SELECT 1 FROM outbox WHERE sop_instance_uid = ?", uids["report"])
    events = [e for e in daemon.log_events() if e["event"] == "instance_not_analysed"]
    assert sorted(e["sr"] for e in events) == [False, True]
