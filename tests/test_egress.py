"""Egress against a real Orthanc: delivery, retry after an outage, dead letters."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from cds_daemon.config import Destination, EgressSettings
from cds_daemon.egress import Egress, backoff_s
from cds_daemon.store import NewInstance, OutputObject, PredictionRecord, Store
from tests.support.dicom_files import write_images
from tests.support.processes import OrthancProcess, free_port

pytestmark = pytest.mark.integration


def _queue_outputs(store: Store, tmp_path: Path, n: int, destinations: list[str]) -> list[str]:
    """Put ``n`` source instances through the store with one output object each; returns object UIDs."""
    files = write_images(tmp_path / "src", n, iod="sc", seed=50)
    object_uids = []
    for path in files:
        ds = pydicom.dcmread(path)
        uid = str(ds.SOPInstanceUID)
        store.record_received(
            NewInstance(
                uid,
                str(ds.SOPClassUID),
                str(ds.StudyInstanceUID),
                str(ds.SeriesInstanceUID),
                None,
                str(ds.file_meta.TransferSyntaxUID),
                "T",
                "127.0.0.1",
                str(path),
                1,
                "0" * 64,
            ),
            actor="test",
        )
        store.claim_next(actor="test")
        out = ds.copy()
        out.SOPInstanceUID = out.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        out.SeriesInstanceUID = generate_uid()
        out_path = tmp_path / f"{out.SOPInstanceUID}.dcm"
        out.save_as(out_path, enforce_file_format=True)
        record = PredictionRecord("m", "1", "0" * 64, "benign", [1.0, 0.0, 0.0], False, [], {})
        store.record_result(
            uid,
            record,
            [OutputObject("sc", str(out.SOPInstanceUID), str(out.SOPClassUID), str(out_path))],
            destinations,
            actor="test",
        )
        object_uids.append(str(out.SOPInstanceUID))
    return object_uids


def _stored_uids(orthanc: OrthancProcess) -> set[str]:
    return {orthanc.tags(i)["SOPInstanceUID"] for i in orthanc.instances()}


def test_delivers_and_completes_instances(tmp_path: Path, orthanc: OrthancProcess) -> None:
    store = Store(tmp_path / "db.sqlite3")
    uids = _queue_outputs(store, tmp_path, 3, ["pacs"])
    egress = Egress(
        store,
        [Destination(name="pacs", ae_title="ORTHANC", host="127.0.0.1", port=orthanc.dicom_port)],
        EgressSettings(),
        calling_ae="THYROID_CDS",
    )
    assert egress.run_once() == 3
    assert set(uids) <= _stored_uids(orthanc)
    assert store.counts_by_state()["delivered"] == 3
    assert store.outbox_counts() == {"pending": 0, "delivered": 3, "dead": 0}
    assert egress.run_once() == 0  # nothing sent twice


def test_outage_then_recovery(tmp_path: Path) -> None:
    pacs = OrthancProcess(workdir=tmp_path / "orthanc")
    store = Store(tmp_path / "db.sqlite3")
    uids = _queue_outputs(store, tmp_path, 2, ["pacs"])
    settings = EgressSettings(retry_base_s=0.2, retry_max_s=0.5, max_attempts=50, timeout_s=3)
    egress = Egress(
        store,
        [Destination(name="pacs", ae_title="ORTHANC", host="127.0.0.1", port=pacs.dicom_port)],
        settings,
        calling_ae="THYROID_CDS",
    )
    assert egress.run_once() == 0  # PACS down
    items = store.due_outbox(now="9999")
    assert len(items) == 2 and all(i.attempts == 1 and i.last_error for i in items)
    pacs.start()
    try:
        deadline = time.monotonic() + 20
        while store.outbox_counts()["delivered"] < 2 and time.monotonic() < deadline:
            egress.run_once()
            time.sleep(0.1)
        assert set(uids) <= _stored_uids(pacs)
        assert store.counts_by_state()["delivered"] == 2
    finally:
        pacs.stop()


def test_dead_letter_after_budget(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    _queue_outputs(store, tmp_path, 1, ["gone"])
    settings = EgressSettings(retry_base_s=0.01, retry_max_s=0.01, max_attempts=3, timeout_s=2)
    egress = Egress(
        store,
        [Destination(name="gone", ae_title="NOBODY", host="127.0.0.1", port=free_port())],
        settings,
        calling_ae="THYROID_CDS",
    )
    for _ in range(3):
        egress.run_once()
        time.sleep(0.05)
    assert store.outbox_counts()["dead"] == 1
    dead = store.dead_letters()[0]
    assert dead.attempts == 3 and dead.last_error
    assert store.counts_by_state()["reported"] == 1  # not delivered


def test_backoff_doubles_and_caps() -> None:
    assert [backoff_s(a, 2, 10) for a in (1, 2, 3, 4, 5)] == [2, 4, 8, 10, 10]
