"""Broken-input corpus: every item exists, is small, and is broken the way it says."""

import io
import shutil
import socket
import struct
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.errors import InvalidDicomError
from pydicom.pixels import pixel_array
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.dsutils import decode, split_dataset

from dicom_fixtures.broken import (
    BASIC_TEXT_SR_STORAGE,
    CT_IMAGE_STORAGE,
    HUGE_SIDE,
    MANIFEST,
    CorpusItem,
    load_corpus,
    make_corpus,
)
from dicom_fixtures.wrap import IODS

PARSE_ERRORS = (struct.error, OSError, EOFError, ValueError)  # what pydicom raises on these bytes
EXPECTED = {
    "truncated-pixel-data": ("0xA900", "none", "pynetdicom-raw"),
    "truncated-in-sequence": ("0xC000", "none", "pynetdicom-raw"),
    "garbage-sequence": ("0xC000", "none", "pynetdicom-raw"),
    "wrong-sop-ct": ("refused", "none", "storescu"),
    "wrong-sop-sr": ("refused", "none", "storescu"),
    "no-pixel-data": ("0xA900", "none", "storescu"),
    "missing-rows": ("0xA900", "none", "storescu"),
    "short-pixel-data": ("0xA900", "none", "storescu"),
    "wrong-photometric": ("0xA900", "none", "storescu"),
    "huge-20000": ("0xA900", "none", "storescu"),
    "gray16-sc": ("0x0000", "review", "storescu"),
    "tiny-1x1": ("0x0000", "review", "storescu"),
    "corrupt-jpeg": ("0x0000", "failed", "storescu"),
    "not-dicom-png": ("unsendable", "none", "storescu"),
    "not-dicom-random": ("unsendable", "none", "storescu"),
}


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    make_corpus(out, seed=0)
    return out


@pytest.fixture(scope="module")
def corpus(corpus_dir: Path) -> dict[str, CorpusItem]:
    return {item.name: item for item in load_corpus(corpus_dir)}


def read(item: CorpusItem) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(item.path)
        for elem in ds.iterall():
            _ = elem.value
    return ds


def declared_bytes(ds: pydicom.Dataset) -> int:
    frames = int(ds.get("NumberOfFrames", 1))
    return ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8 * frames


def test_manifest_lists_every_item(corpus_dir: Path, corpus: dict[str, CorpusItem]) -> None:
    assert set(corpus) == set(EXPECTED)
    assert (corpus_dir / MANIFEST).is_file()
    for name, item in corpus.items():
        assert (item.expected_ingest, item.expected_outcome, item.send_with) == EXPECTED[name]
        assert item.path.is_file() and item.path.parent == corpus_dir
        assert item.path.stat().st_size < 200_000, name
        assert item.storescu_sendable == (item.send_with == "storescu" and item.expected_ingest != "unsendable")
        assert item.description


def test_make_corpus_returns_what_the_manifest_says(tmp_path: Path, corpus: dict[str, CorpusItem]) -> None:
    items = make_corpus(tmp_path, seed=0)
    assert items == load_corpus(tmp_path)
    assert [i.path.read_bytes() for i in items] == [corpus[i.name].path.read_bytes() for i in items]
    other = make_corpus(tmp_path / "other", seed=1)
    assert any(a.path.read_bytes() != corpus[a.name].path.read_bytes() for a in other)


def test_truncated_pixel_data(corpus: dict[str, CorpusItem]) -> None:
    ds = read(corpus["truncated-pixel-data"])
    assert 0 < len(ds.PixelData) < declared_bytes(ds)
    with pytest.raises(ValueError, match="less than expected"):
        _ = ds.pixel_array


@pytest.mark.parametrize("name", ["truncated-in-sequence", "garbage-sequence"])
def test_unparseable_items_fail_in_pydicom_and_on_the_wire(name: str, corpus: dict[str, CorpusItem]) -> None:
    item = corpus[name]
    with pytest.raises(PARSE_ERRORS):
        read(item)
    meta, offset = split_dataset(item.path)  # what pynetdicom sends: the bytes after the meta
    assert meta.MediaStorageSOPClassUID == IODS["vl-microscopic"]
    body = item.path.read_bytes()[offset:]
    with pytest.raises(PARSE_ERRORS):
        ds = decode(io.BytesIO(body), False, True)
        for elem in ds.iterall():
            _ = elem.value


def test_wrong_sop_classes(corpus: dict[str, CorpusItem]) -> None:
    ct, sr = read(corpus["wrong-sop-ct"]), read(corpus["wrong-sop-sr"])
    assert ct.SOPClassUID == CT_IMAGE_STORAGE and ct.pixel_array.shape == (64, 64)
    assert sr.SOPClassUID == BASIC_TEXT_SR_STORAGE and "PixelData" not in sr
    assert {ct.SOPClassUID, sr.SOPClassUID}.isdisjoint(IODS.values())


def test_pixel_attribute_defects(corpus: dict[str, CorpusItem]) -> None:
    assert "PixelData" not in read(corpus["no-pixel-data"])
    assert "Rows" not in read(corpus["missing-rows"])
    short = read(corpus["short-pixel-data"])
    assert len(short.PixelData) == declared_bytes(short) // 2
    wrong = read(corpus["wrong-photometric"])
    assert wrong.PhotometricInterpretation == "MONOCHROME2" and wrong.SamplesPerPixel == 3


def test_huge_declares_400_megapixels_in_a_small_file(corpus: dict[str, CorpusItem]) -> None:
    item = corpus["huge-20000"]
    ds = read(item)
    assert ds.Rows == ds.Columns == HUGE_SIDE
    assert ds.Rows * ds.Columns > 64_000_000
    assert item.path.stat().st_size < 50_000
    fragment = next(pydicom.encaps.generate_fragmented_frames(ds.PixelData))[0]
    sof = fragment.index(b"\xff\xc0")
    assert struct.unpack(">HH", fragment[sof + 5 : sof + 9]) == (HUGE_SIDE, HUGE_SIDE)


def test_structurally_valid_items(corpus: dict[str, CorpusItem]) -> None:
    gray = read(corpus["gray16-sc"])
    assert (gray.SOPClassUID, gray.BitsAllocated, gray.SamplesPerPixel) == (IODS["sc"], 16, 1)
    assert gray.pixel_array.shape == (128, 128) and gray.pixel_array.max() > 255
    tiny = read(corpus["tiny-1x1"])
    assert tiny.pixel_array.shape == (1, 1, 3)
    if shutil.which("dciodvfy"):
        for name in ("gray16-sc", "tiny-1x1", "corrupt-jpeg"):
            out = subprocess.run(["dciodvfy", str(corpus[name].path)], capture_output=True, text=True)
            assert not [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")], name


@pytest.mark.parametrize("plugin", ["pylibjpeg", "pillow"])
def test_corrupt_jpeg_parses_but_does_not_decode(plugin: str, corpus: dict[str, CorpusItem]) -> None:
    item = corpus["corrupt-jpeg"]
    ds = read(item)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    with pytest.raises(RuntimeError, match="Unable to decode"):
        pixel_array(item.path, decoding_plugin=plugin)


def test_corrupt_jpeg_fails_in_dcmtk(corpus: dict[str, CorpusItem], tmp_path: Path) -> None:
    if shutil.which("dcmdjpeg") is None:
        pytest.skip("dcmdjpeg (dcmtk) not installed")
    out = subprocess.run(["dcmdjpeg", str(corpus["corrupt-jpeg"].path), str(tmp_path / "x.dcm")], capture_output=True)
    assert out.returncode != 0


@pytest.mark.parametrize("name", ["not-dicom-png", "not-dicom-random"])
def test_non_dicom(name: str, corpus: dict[str, CorpusItem]) -> None:
    item = corpus[name]
    with pytest.raises(InvalidDicomError):
        pydicom.dcmread(item.path)
    with pytest.raises(InvalidDicomError):
        split_dataset(item.path)  # so pynetdicom cannot send it either
    if name == "not-dicom-png":
        assert item.path.read_bytes().startswith(b"\x89PNG")


class _AcceptAllScp:
    """In-process Storage SCP that accepts every storage SOP class and transfer syntax."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.ae = AE("FXTESTSCP")
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = self.ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )

    def _on_store(self, event: evt.Event) -> int:
        self.received.append(event.request.AffectedSOPInstanceUID)
        return 0x0000


@pytest.fixture(scope="module")
def scp() -> Iterator[_AcceptAllScp]:
    server = _AcceptAllScp()
    yield server
    server.server.shutdown()


@pytest.mark.integration
def test_storescu_sends_exactly_the_items_marked_sendable(corpus: dict[str, CorpusItem], scp: _AcceptAllScp) -> None:
    storescu = "/usr/bin/storescu" if Path("/usr/bin/storescu").is_file() else shutil.which("storescu")
    if storescu is None:  # dcmtk's by its path: with the venv on PATH, "storescu" is pynetdicom's
        pytest.skip("storescu (dcmtk) not installed")
    for item in corpus.values():
        before = len(scp.received)
        cmd = [storescu, *item.storescu_args, "127.0.0.1", str(scp.port), str(item.path)]
        out = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=30)
        sent = out.returncode == 0 and len(scp.received) == before + 1
        assert sent == item.storescu_sendable, f"{item.name}: {out.stderr[-300:]}"


@pytest.mark.integration
def test_pynetdicom_raw_sends_the_items_storescu_cannot(
    corpus: dict[str, CorpusItem], scp: _AcceptAllScp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    raw = [item for item in corpus.values() if item.send_with == "pynetdicom-raw"]
    assert raw
    ae = AE("FXTESTSCU")
    ae.add_requested_context(IODS["vl-microscopic"], pydicom.uid.ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", scp.port)
    assert assoc.is_established
    try:
        for item in raw:
            before = len(scp.received)
            status = assoc.send_c_store(item.path)
            assert status.Status == 0x0000 and len(scp.received) == before + 1, item.name
    finally:
        assoc.release()
