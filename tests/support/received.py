"""What ingest does for one acknowledged C-STORE, for tests and benchmarks that skip the network."""

from __future__ import annotations

import io

import pydicom

from cds_daemon.review.cases import case_key
from cds_daemon.store import NewInstance, Store
from cds_daemon.store.spool import Spool


def receive(store: Store, spool: Spool, data: bytes, calling_ae: str = "STORESCU") -> str:
    """Spool ``data`` (a DICOM file) durably and add its ``received`` row; returns its SOPInstanceUID."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    uid = str(ds.SOPInstanceUID)
    spooled = spool.write(uid, data)
    store.record_received(
        NewInstance(
            sop_instance_uid=uid,
            sop_class_uid=str(ds.SOPClassUID),
            study_instance_uid=str(ds.StudyInstanceUID),
            series_instance_uid=str(ds.SeriesInstanceUID),
            accession_number=str(ds.get("AccessionNumber", "")),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
            calling_ae=calling_ae,
            peer_address="127.0.0.1",
            spool_path=str(spooled.path),
            size_bytes=spooled.size,
            sha256=spooled.sha256,
            case_key=case_key(
                accession_number=str(ds.get("AccessionNumber", "")),
                study_instance_uid=str(ds.StudyInstanceUID),
                sop_instance_uid=uid,
            ),
        ),
        actor="test",
    )
    return uid
