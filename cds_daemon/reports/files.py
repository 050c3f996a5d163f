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
    """The objects of one case durably in the results spool (one round of fsyncs), named by SOPInstanceUID."""
    spooled = results.write_all([(str(ds.SOPInstanceUID), encode(ds)) for _, ds in objects])
    return [
        OutputObject(kind, str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(file.path))
        for (kind, ds), file in zip(objects, spooled, strict=True)
    ]
