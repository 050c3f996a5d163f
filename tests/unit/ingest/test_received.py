"""A received file read without its pixel data (ingest.received)."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from cds_daemon.ingest.received import open_received
from tests.support.dicom_files import write_images


@pytest.mark.parametrize("ts", ["explicit", "implicit", "jpeg-baseline", "deflated"])
def test_the_pixel_data_are_located_not_read(tmp_path: Path, ts: str) -> None:
    (path,) = write_images(tmp_path, 1, ts=ts, seed=5)
    received = open_received(path)
    whole = pydicom.dcmread(path)
    assert "PixelData" not in received.header and received.has_pixels
    assert received.header.SOPInstanceUID == whole.SOPInstanceUID
    if ts == "jpeg-baseline":
        assert received.pixel_length is None
        assert list(received.frames(1)) == [next(pydicom.encaps.generate_frames(whole.PixelData, number_of_frames=1))]
    else:
        assert received.native_length() == (len(whole.PixelData), len(whole.PixelData))


def test_a_file_cut_in_its_pixel_data_says_how_much_is_there(tmp_path: Path) -> None:
    (path,) = write_images(tmp_path, 1, seed=6)
    data = path.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 1000])
    declared, present = open_received(cut).native_length()
    assert declared - present == 1000


def test_no_pixel_data(tmp_path: Path) -> None:
    (path,) = write_images(tmp_path, 1, seed=7)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(tmp_path / "none.dcm", enforce_file_format=True)
    assert not open_received(tmp_path / "none.dcm").has_pixels
