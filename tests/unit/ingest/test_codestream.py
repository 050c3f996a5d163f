"""Codestream header parsing (ingest's check before acknowledging compressed pixel data)."""

from __future__ import annotations

import struct

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames

from cds_daemon.ingest.codestream import CodestreamError, FrameHeader, j2k_header, jpeg_header, rle_segments


def _frame(name: str) -> bytes:
    ds = pydicom.dcmread(get_testdata_file(name))
    return next(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1)))


@pytest.mark.parametrize(
    ("name", "parse", "expected"),
    [
        ("SC_rgb_jpeg_dcmtk.dcm", jpeg_header, FrameHeader(100, 100, 3, 8)),
        ("JPGExtended.dcm", jpeg_header, FrameHeader(1024, 256, 1, 12)),
        ("SC_rgb_jpeg_gdcm.dcm", jpeg_header, FrameHeader(100, 100, 3, 8)),  # lossless SOF3
        ("SC_rgb_jls_lossy_line.dcm", jpeg_header, FrameHeader(100, 100, 3, 8)),  # JPEG-LS SOF55
        ("SC_rgb_gdcm_KY.dcm", j2k_header, FrameHeader(100, 100, 3, 8)),
        ("GDCMJ2K_TextGBR.dcm", j2k_header, FrameHeader(400, 400, 3, 8)),  # inside a JP2 wrapper
    ],
)
def test_headers_of_files_other_toolkits_wrote(name: str, parse, expected: FrameHeader) -> None:  # type: ignore[no-untyped-def]
    assert parse(_frame(name)) == expected


def test_rle_segments() -> None:
    assert rle_segments(_frame("SC_rgb_rle.dcm")) == 3
    assert rle_segments(_frame("SC_rgb_rle_16bit.dcm")) == 6


def test_a_corrupt_siz_parses_to_what_it_declares() -> None:
    # pydicom's deliberately broken file: the decoder then reports a 3.8e12-pixel image
    header = j2k_header(_frame("JPEG2000-embedded-sequence-delimiter.dcm"))
    assert header.columns == 3722445056 and header.rows == 1024


def test_a_sequential_scan_with_bad_spectral_selection_is_refused() -> None:
    with pytest.raises(CodestreamError, match=r"0\.\.63"):
        jpeg_header(_frame("JPEG-lossy.dcm"))


@pytest.mark.parametrize(
    ("frame", "parse", "message"),
    [
        (b"", jpeg_header, "SOI"),
        (b"\xff\xd8\xff\xc0\x00\x11\x08", jpeg_header, "longer than the frame"),
        (b"\xff\xd8\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00", jpeg_header, "before any SOF"),
        (b"\xff\xd8\xff\xd9", jpeg_header, "no SOF"),
        (b"\xff\x4f\xff\x51\x00", j2k_header, "ends early"),
        (b"\x00\x00\x00\x0cjP  \r\n\x87\n", j2k_header, "no codestream box"),
        (b"\x00" * 10, j2k_header, "neither SOC"),
        (b"\x00" * 63, rle_segments, "shorter than its 64-byte header"),
        (struct.pack("<16I", 0, *[0] * 15), rle_segments, "declares 0 segments"),
        (struct.pack("<16I", 2, 64, 64, *[0] * 13) + b"\x00" * 10, rle_segments, "increasing"),
    ],
)
def test_malformed_headers_say_why(frame: bytes, parse, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CodestreamError, match=message):
        parse(frame)
