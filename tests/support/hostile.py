"""Attacks any host on the network can make, and the daemon's memory: shared by tests and bench/."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE

from tests.support.processes import DAEMON_AE, SENDER_AE


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (the helper), MiB."""
    total = 0.0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        status = Path(f"/proc/{p}/status")
        if status.exists():
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
    return total


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def connect(port: int, source: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    return sock


def send_huge_pdu(port: int, source: str, declared: int = 300 * 2**20) -> int:
    """An A-ASSOCIATE-RQ header declaring ``declared`` bytes, then as much of them as the daemon takes."""
    sent = 0
    with connect(port, source) as sock:
        try:
            sock.sendall(struct.pack(">BBL", 0x01, 0x00, declared))
            chunk = b"\x00" * 2**20
            deadline = time.monotonic() + 10
            while sent < declared and time.monotonic() < deadline:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # closed by the daemon: what it should do
    return sent


def sc_dataset(pixels: bytes, rows: int = 16, cols: int = 16) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = "OT", "Hostile^Test", "HOSTILE1"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 3, "RGB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.PlanarConfiguration = 8, 8, 7, 0, 0
    ds.PixelData = pixels
    return ds


def send_dataset(port: int, ds: pydicom.Dataset, syntax: str, source: str = "127.0.0.1") -> int | None:
    """C-STORE with pynetdicom; the status, or None when the daemon aborted the association."""
    ae = AE(ae_title=SENDER_AE)
    ae.add_requested_context(str(ds.SOPClassUID), syntax)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    assoc = ae.associate("127.0.0.1", port, ae_title=DAEMON_AE, bind_address=(source, 0))
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
    finally:
        if assoc.is_established:
            assoc.release()
    return int(status.Status) if status is not None and "Status" in status else None
