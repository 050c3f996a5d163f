"""A C-STORE data set received to a file, read without holding its pixel data in memory.

pynetdicom writes each incoming data set to a file as its P-DATA arrive (``STORE_RECV_CHUNKED_DATASET``):
a level of a whole slide can be several GB. :func:`use_incoming_directory` puts those files in the
spool's ``incoming/`` directory, on the spool's file system, so an accepted one is renamed into place,
not copied; an unfinished one (an aborted association, a crash) never reaches the handler and is removed
(:func:`discard_unfinished`, and ``Spool.clean_incoming`` at start).

:func:`open_received` parses the header only and locates Pixel Data; frames are read one at a time.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from tempfile import NamedTemporaryFile
from typing import IO, Any

import pydicom
import pynetdicom._config as pynetdicom_config
import pynetdicom.dimse_messages as pynetdicom_messages
from pydicom import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

PIXEL_DATA_TAG = 0x7FE00010
UNDEFINED_LENGTH = 0xFFFFFFFF
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"})

_directory_lock = threading.Lock()
_incoming: list[Path] = []  # the directories of the listeners in this process, newest last


def _incoming_file(*args: Any, **kwargs: Any) -> Any:
    """pynetdicom's NamedTemporaryFile, in our incoming directory, named so that ``clean_incoming`` finds it."""
    with _directory_lock:
        directory = _incoming[-1] if _incoming else None
    kwargs["dir"] = directory
    kwargs["suffix"] = ".part"
    return NamedTemporaryFile(*args, **kwargs)


def use_incoming_directory(directory: Path) -> None:
    """Receive every C-STORE data set to a file in ``directory`` (the spool's incoming/), never in memory.

    The setting is pynetdicom's and so per process: with several listeners in one process (tests), files
    land in the last one's directory and :meth:`Spool.adopt` copies across when it must.
    """
    pynetdicom_config.STORE_RECV_CHUNKED_DATASET = True
    pynetdicom_messages.NamedTemporaryFile = _incoming_file  # type: ignore[attr-defined]
    with _directory_lock:
        _incoming.append(directory)


def release_incoming_directory(directory: Path) -> None:
    with _directory_lock:
        if directory in _incoming:
            _incoming.remove(directory)


def discard_unfinished(assoc: Any) -> None:
    """Remove the file of a data set whose transfer did not finish (the association ended mid-message)."""
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    handle: IO[bytes] | None = getattr(message, "_data_set_file", None)
    if handle is None:
        return
    with contextlib.suppress(OSError):
        handle.close()
    with contextlib.suppress(OSError):
        os.unlink(handle.name)


class ReceivedFileError(ValueError):
    """The file does not hold a readable data set (truncated header, broken Pixel Data element)."""


@dataclass(frozen=True)
class ReceivedFile:
    """A received data set: its header (no pixels) and where its Pixel Data lie in the file."""

    path: Path
    header: Dataset
    transfer_syntax: str
    size: int
    pixel_offset: int | None  # of the Pixel Data value; None: no Pixel Data
    pixel_length: int | None  # declared value length; None: encapsulated (undefined length)
    in_memory: Dataset | None = None  # deflated data sets are read whole (camera images only)

    @property
    def has_pixels(self) -> bool:
        return self.pixel_offset is not None or (self.in_memory is not None and "PixelData" in self.in_memory)

    def native_length(self) -> tuple[int, int]:
        """(declared, present) bytes of native Pixel Data."""
        if self.in_memory is not None:
            n = len(self.in_memory.PixelData)
            return n, n
        assert self.pixel_offset is not None and self.pixel_length is not None
        return self.pixel_length, max(0, min(self.pixel_length, self.size - self.pixel_offset))

    def frames(self, number_of_frames: int) -> Iterator[bytes]:
        """The encapsulated frames, one at a time (a broken encapsulation raises as pydicom does)."""
        if self.in_memory is not None:
            yield from generate_frames(self.in_memory.PixelData, number_of_frames=number_of_frames)
            return
        assert self.pixel_offset is not None
        with open(self.path, "rb") as fh:
            fh.seek(self.pixel_offset)
            yield from generate_frames(fh, number_of_frames=number_of_frames)


def _element_header(head: bytes, transfer_syntax: str) -> tuple[int, int, int]:
    """(tag, value length, header size) of the element that starts ``head``."""
    if len(head) < 8:
        raise ReceivedFileError("the data set ends inside an element header")
    little = transfer_syntax != ExplicitVRBigEndian
    order = "<" if little else ">"
    group, element = struct.unpack(order + "HH", head[:4])
    tag = group << 16 | element
    if transfer_syntax == ImplicitVRLittleEndian:
        return tag, struct.unpack("<L", head[4:8])[0], 8
    vr = head[4:6]
    if vr in _LONG_VRS:
        if len(head) < 12:
            raise ReceivedFileError("the data set ends inside an element header")
        return tag, struct.unpack(order + "L", head[8:12])[0], 12
    return tag, struct.unpack(order + "H", head[6:8])[0], 8


def open_received(path: Path) -> ReceivedFile:
    """Parse the header of a received file and locate its Pixel Data without reading them."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        header = pydicom.dcmread(fh, stop_before_pixels=True)
        transfer_syntax = str(header.file_meta.TransferSyntaxUID)
        if transfer_syntax == DeflatedExplicitVRLittleEndian:
            whole = pydicom.dcmread(path)
            return ReceivedFile(path, header, transfer_syntax, size, None, None, in_memory=whole)
        start = fh.tell()
        head = fh.read(12)
    if not head:
        return ReceivedFile(path, header, transfer_syntax, size, None, None)
    tag, length, header_size = _element_header(head, transfer_syntax)
    if tag != PIXEL_DATA_TAG:  # (7FE0,0008/0009) float pixel data, or trailing elements: no integer pixels
        return ReceivedFile(path, header, transfer_syntax, size, None, None)
    return ReceivedFile(
        path,
        header,
        transfer_syntax,
        size,
        start + header_size,
        None if length == UNDEFINED_LENGTH else length,
    )
