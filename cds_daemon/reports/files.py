"""Result objects as files: encoded once, written durably to the results spool before anyone is told."""

from __future__ import annotations

import io

import pydicom

from cds_daemon.store import OutputObject
from cds_daemon.store.spool import Spool


def encode(ds: pydicom.Dataset) -> bytes:
    """A Part 10 file (preamble, meta header, dataset) in the dataset's own transfer syntax."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_objects(results: Spool, objects: list[tuple[str, pydicom.Dataset]]) -> list[OutputObject]:
    """Each object durably in the results spool, named by its SOPInstanceUID."""
    outputs = []
    for kind, ds in objects:
        spooled = results.write(str(ds.SOPInstanceUID), encode(ds))
        outputs.append(OutputObject(kind, str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(spooled.path)))
    return outputs
