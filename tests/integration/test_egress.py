"""Egress against a real Orthanc: delivery, retry after an outage, dead letters."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from cds_daemon.common.config import AllowedCaller, Destination, EgressSettings, ListenerSettings
from cds_daemon.egress.sender import Egress, backoff_s
from cds_daemon.ingest.listener import Listener
from cds_daemon.store import NewInstance, OutputObject, PredictionRecord, Store
from cds_daemon.store.spool import Spool
from tests.support.dicom_files import write_images
from tests.support.processes import OrthancProcess, StoreSCPProcess, free_port

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
                f"study:{ds.StudyInstanceUID}",
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


def _egress(store: Store, port: int, settings: EgressSettings | None = None, name: str = "pacs") -> Egress:
    ae = "ORTHANC" if name == "pacs" else "NOBODY"
    return Egress(
        store,
        [Destination(name=name, ae_title=ae, host="127.0.0.1", port=port)],
        settings or EgressSettings(),
        calling_ae="THYROID_CDS",
    )


def _stored_uids(orthanc: OrthancProcess) -> set[str]:
    return {orthanc.tags(i)["SOPInstanceUID"] for i in orthanc.instances()}


def test_delivers_and_completes_instances(tmp_path: Path, orthanc: OrthancProcess) -> None:
    store = Store(tmp_path / "db.sqlite3")
    uids = _queue_outputs(store, tmp_path, 3, ["pacs"])
    egress = _egress(store, orthanc.dicom_port)
    assert egress.run_once() == 3
    assert set(uids) <= _stored_uids(orthanc)
    assert store.counts_by_state()["delivered"] == 3
    assert store.outbox_counts() == {"pending": 0, "delivered": 3, "dead": 0, "awaiting_commitment": 0}
    assert egress.run_once() == 0  # nothing sent twice


def test_jpeg_heatmap_reaches_a_peer_that_takes_only_uncompressed(tmp_path: Path) -> None:
    """The heatmap SC is JPEG; dcmtk's storescp by default accepts uncompressed syntaxes only: it gets the
    same instance (same UID), decoded, and it counts as delivered."""
    from cds_daemon.reports.heatmap import build_heatmap_sc
    from tests.support.reports import field_pixels, make_result, vl_microscopic

    store = Store(tmp_path / "db.sqlite3")
    (object_uid,) = _queue_outputs(store, tmp_path, 1, ["pacs"])
    (item,) = store.due_outbox(now="9999")
    source = vl_microscopic()
    sc = build_heatmap_sc(source, field_pixels(), make_result())
    assert sc.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50" and sc.LossyImageCompression == "01"
    sc.SOPInstanceUID = sc.file_meta.MediaStorageSOPInstanceUID = object_uid
    sc.StudyInstanceUID = pydicom.dcmread(item.path).StudyInstanceUID
    sc.save_as(item.path, enforce_file_format=True)
    scp = StoreSCPProcess(workdir=tmp_path / "scp", ae_title="ORTHANC", accept_all=False).start()
    try:
        assert _egress(store, scp.port).run_once() == 1
        (received,) = [pydicom.dcmread(p) for p in scp.received_dir.iterdir()]
        assert received.SOPInstanceUID == object_uid
        assert not received.file_meta.TransferSyntaxUID.is_compressed
        assert received.PhotometricInterpretation == "RGB" and received.LossyImageCompression == "01"
        assert store.outbox_counts()["delivered"] == 1
    finally:
        scp.stop()


def test_outage_then_recovery(tmp_path: Path) -> None:
    pacs = OrthancProcess(workdir=tmp_path / "orthanc")
    store = Store(tmp_path / "db.sqlite3")
    uids = _queue_outputs(store, tmp_path, 2, ["pacs"])
    settings = EgressSettings(retry_base_s=0.2, retry_max_s=0.5, max_attempts=50, timeout_s=3)
    egress = _egress(store, pacs.dicom_port, settings)
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
    egress = _egress(store, free_port(), settings, name="gone")
    for _ in range(3):
        egress.run_once()
        time.sleep(0.05)
    assert store.outbox_counts()["dead"] == 1
    dead = store.dead_letters()[0]
    assert dead.attempts == 3 and dead.last_error
    assert store.counts_by_state()["reported"] == 1  # not delivered


def test_backoff_doubles_and_caps() -> None:
    assert [backoff_s(a, 2, 10) for a in (1, 2, 3, 4, 5)] == [2, 4, 8, 10, 10]


def _commitment_egress(store: Store, port: int, **settings: float) -> Egress:
    return Egress(
        store,
        [Destination(name="pacs", ae_title="ORTHANC", host="127.0.0.1", port=port, storage_commitment=True)],
        EgressSettings(retry_base_s=0.2, retry_max_s=0.5, timeout_s=5, **settings),
        calling_ae="THYROID_CDS",
    )


def test_storage_commitment_delivers_only_when_orthanc_commits(tmp_path: Path) -> None:
    """Orthanc answers asynchronously, on its own association to our listener: delivered only then."""
    store = Store(tmp_path / "db.sqlite3")
    uids = _queue_outputs(store, tmp_path, 3, ["pacs"])
    listener_port = free_port()
    pacs = OrthancProcess(workdir=tmp_path / "orthanc", modalities={"cds": ("THYROID_CDS", listener_port)}).start()
    egress = _commitment_egress(store, pacs.dicom_port)
    settings = ListenerSettings(
        port=listener_port, allowed_callers=[AllowedCaller(ae_title="ORTHANC", addresses=["127.0.0.1/32"])]
    )
    listener = Listener(settings, store, Spool(tmp_path / "spool"), on_commitment_report=egress.commitment_report)
    listener.start()
    try:
        assert egress.run_once() == 0  # stored; delivered only by the report (which may already be in)
        assert set(uids) <= _stored_uids(pacs)
        deadline = time.monotonic() + 30
        while store.outbox_counts()["delivered"] < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert store.outbox_counts() == {"pending": 0, "delivered": 3, "dead": 0, "awaiting_commitment": 0}
        assert store.counts_by_state()["delivered"] == 3
        trail = [a["action"] for a in store.audit_trail(store.instances("delivered")[0].sop_instance_uid)]
        assert trail.index("commitment-requested:sc") < trail.index("delivered:sc")
        assert egress.run_once() == 0  # nothing sent twice
    finally:
        listener.stop(0)
        pacs.stop()


def test_commitment_report_failures_are_sent_again(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    uids = _queue_outputs(store, tmp_path, 2, ["pacs"])
    egress = _commitment_egress(store, free_port())
    items = store.due_outbox()
    txn = "1.2.3.4.5"
    store.mark_awaiting_commitment([i.id for i in items], txn, "9999")
    assert egress.commitment_report(3, Dataset()) == 0x0113  # not a storage commitment event
    report = Dataset()
    report.TransactionUID = txn
    ok, bad = Dataset(), Dataset()
    ok.ReferencedSOPClassUID = bad.ReferencedSOPClassUID = items[0].sop_class_uid
    ok.ReferencedSOPInstanceUID, bad.ReferencedSOPInstanceUID = uids
    bad.FailureReason = 0x0112
    report.ReferencedSOPSequence = [ok]
    report.FailedSOPSequence = [bad]
    assert egress.commitment_report(2, report) == 0x0000
    by_uid = {
        i.object_uid: i
        for i in store.outbox_items(items[0].sop_instance_uid) + store.outbox_items(items[1].sop_instance_uid)
    }
    assert by_uid[uids[0]].state == "delivered"
    again = by_uid[uids[1]]
    assert again.state == "pending" and again.commit_txn is None
    assert again.last_error == "not committed: no such object instance"
    assert egress.commitment_report(1, report) == 0x0000  # a late duplicate report changes nothing
    assert store.outbox_items(items[1].sop_instance_uid)[0].state == "pending"


def test_commitment_refused_by_a_peer_without_it(tmp_path: Path) -> None:
    """dcmtk's storescp stores but has no storage commitment: nothing counts as delivered."""
    store = Store(tmp_path / "db.sqlite3")
    _queue_outputs(store, tmp_path, 1, ["pacs"])
    scp = StoreSCPProcess(workdir=tmp_path / "scp", ae_title="ORTHANC").start()
    try:
        assert _commitment_egress(store, scp.port).run_once() == 0
        item = store.due_outbox(now="9999")[0]
        assert item.commit_txn is None and "storage commitment not supported" in (item.last_error or "")
        assert store.counts_by_state()["reported"] == 1
    finally:
        scp.stop()
