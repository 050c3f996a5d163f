"""A corpus of DICOM files written by other toolkits, not by ``dicom_fixtures``.

Three origins:
- pydicom's bundled test files (written by dcmtk, GDCM and others; some are deliberately odd);
- dcmtk (``img2dcm`` wraps a camera JPEG; ``dcmdjpeg``, ``dcmconv``, ``dcmcjpls``, ``dcmcrle``
  transcode it; ``dcmodify`` changes the SOP class, erases attributes or gives a new SOP Instance UID);
- GDCM (``gdcmconv`` to JPEG 2000, JPEG-LS, RLE and native).
Broken codestreams are copies of these files with a few header bytes changed in place (the DICOM
encoding itself stays as the other toolkit wrote it).

Each entry says what the daemon must answer and how the image must end: ``classified`` (an AI SR was
made), ``refused`` (a C-STORE status other than success, with the reason code) or ``not-negotiated``
(the SOP class is refused at association time).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pydicom
from PIL import Image
from pydicom.data import get_testdata_file

from dicom_fixtures.synth import make_field

VL_MICROSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.2"
VL_SLIDE_COORDINATES = "1.2.840.10008.5.1.4.1.1.77.1.3"
MULTIFRAME_TRUE_COLOR_SC = "1.2.840.10008.5.1.4.1.1.7.4"
TOOLS = ("img2dcm", "dcmodify", "dcmdjpeg", "dcmconv", "dcmcjpls", "dcmcrle", "gdcmconv")


@dataclass(frozen=True)
class ThirdPartyFile:
    name: str
    path: Path
    origin: str  # who wrote it
    status: str  # "0x0000", "0xA900", "0xC000" or "not-negotiated"
    outcome: str  # "classified", "refused", "not-negotiated"
    code: str | None = None  # refusal code when refused
    sender: str = "storescu"  # "raw": bytes sent as they are (pynetdicom), for files dcmtk cannot read

    @property
    def header(self) -> pydicom.Dataset:
        return pydicom.dcmread(self.path, stop_before_pixels=True, force=True)


#: pydicom's bundled files: name -> (status, outcome, refusal code, needs a fresh SOP Instance UID).
#: Several bundled files share one SOP Instance UID; ``dcmodify -gin`` gives the copies their own.
PYDICOM_FILES: dict[str, tuple[str, str, str | None, bool]] = {
    "GDCMJ2K_TextGBR.dcm": ("0x0000", "classified", None, False),
    "JPEG-lossy.dcm": ("0xC000", "refused", "codestream_unreadable", False),
    "JPEG2000-embedded-sequence-delimiter.dcm": ("0xA900", "refused", "codestream_mismatch", False),
    "JPEG2000.dcm": ("0x0000", "classified", None, True),
    "JPEGLSNearLossless_08.dcm": ("0xA900", "refused", "missing_attribute", False),
    "JPGExtended.dcm": ("0x0000", "classified", None, True),
    "SC_jpeg_no_color_transform.dcm": ("0x0000", "classified", None, False),
    "SC_jpeg_no_color_transform_2.dcm": ("0x0000", "classified", None, False),
    "SC_rgb_dcmtk_+eb+cr.dcm": ("0x0000", "classified", None, False),
    "SC_rgb_dcmtk_+eb+cy+n1.dcm": ("0x0000", "classified", None, False),
    "SC_rgb_dcmtk_+eb+cy+n2.dcm": ("0x0000", "classified", None, True),
    "SC_rgb_dcmtk_+eb+cy+np.dcm": ("0x0000", "classified", None, False),
    "SC_rgb_dcmtk_+eb+cy+s2.dcm": ("0x0000", "classified", None, False),
    "SC_rgb_dcmtk_+eb+cy+s4.dcm": ("0x0000", "classified", None, False),
    "SC_rgb_gdcm_KY.dcm": ("0x0000", "classified", None, False),
    "SC_rgb_jls_lossy_line.dcm": ("0xA900", "refused", "missing_attribute", False),
    "SC_rgb_jpeg.dcm": ("0x0000", "classified", None, False),  # meta says explicit VR, data is implicit
    "SC_rgb_jpeg_app14_dcmd.dcm": ("0x0000", "classified", None, True),
    "SC_rgb_jpeg_dcmd.dcm": ("0x0000", "classified", None, True),
    "SC_rgb_jpeg_dcmtk.dcm": ("0x0000", "classified", None, False),
    "SC_rgb_jpeg_gdcm.dcm": ("0x0000", "classified", None, False),
    "SC_rgb_jpeg_lossy_gdcm.dcm": ("0x0000", "classified", None, False),
    "SC_rgb_rle.dcm": ("0x0000", "classified", None, True),
    "SC_rgb_rle_16bit.dcm": ("0x0000", "classified", None, True),
    "SC_rgb_rle_2frame.dcm": ("0x0000", "classified", None, True),
    "SC_rgb_rle_32bit.dcm": ("0xA900", "refused", "unsupported_bits", True),
    "SC_rgb_small_odd.dcm": ("0x0000", "classified", None, False),
    "SC_rgb_small_odd_big_endian.dcm": ("0x0000", "classified", None, True),
    "SC_rgb_small_odd_jpeg.dcm": ("0x0000", "classified", None, False),
    "SC_ybr_full_422_uncompressed.dcm": ("0x0000", "classified", None, False),
    "image_dfl.dcm": ("0x0000", "classified", None, False),
    "CT_small.dcm": ("not-negotiated", "not-negotiated", None, False),
    "examples_ybr_color.dcm": ("not-negotiated", "not-negotiated", None, False),
}


#: Bundled files that dcmtk cannot read (an old highdicom wrote implicit VR under an explicit VR meta header).
DCMTK_UNREADABLE = frozenset({"SC_rgb_jpeg.dcm"})


def _run(*cmd: str | Path) -> None:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed: {result.stderr.strip()[:500]}")


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def _patch(path: Path, find: bytes, offset: int, new: bytes) -> Path:
    """Write ``new`` ``offset`` bytes after the first ``find`` in the file (a codestream header edit)."""
    data = bytearray(path.read_bytes())
    at = data.index(find) + offset
    data[at : at + len(new)] = new
    path.write_bytes(bytes(data))
    return path


def _camera_jpeg(path: Path, seed: int) -> Path:
    """A 640x480 photomicrograph as a camera writes it: a baseline JPEG file (Pillow)."""
    Image.fromarray(make_field("benign", seed, size=(480, 640))).save(path, quality=90)
    return path


def build_corpus(out: Path) -> list[ThirdPartyFile]:
    """Write the corpus into ``out`` and return its entries (in the order they are sent)."""
    out.mkdir(parents=True, exist_ok=True)
    files: list[ThirdPartyFile] = []

    def add(
        name: str, path: Path, origin: str, status: str = "0x0000", code: str | None = None, sender: str = "storescu"
    ) -> None:
        outcome = {"0x0000": "classified", "not-negotiated": "not-negotiated"}.get(status, "refused")
        files.append(ThirdPartyFile(name, path, origin, status, outcome, code, sender))

    for name, (status, _outcome, code, fresh_uid) in PYDICOM_FILES.items():
        path = out / f"pydicom-{name}"
        shutil.copyfile(get_testdata_file(name), path)
        if fresh_uid:
            _run("dcmodify", "-nb", "-gin", path)
        sender = "raw" if name in DCMTK_UNREADABLE else "storescu"
        add(f"pydicom/{name}", path, "pydicom test files", status, code, sender)

    jpg = _camera_jpeg(out / "camera.jpg", seed=7)
    vlp = out / "dcmtk-img2dcm-vlp.dcm"
    _run("img2dcm", "-vlp", jpg, vlp)
    add("dcmtk/img2dcm VL Photographic", vlp, "dcmtk img2dcm")
    sc = out / "dcmtk-img2dcm-sc.dcm"
    _run("img2dcm", _camera_jpeg(out / "camera2.jpg", seed=8), sc)
    add("dcmtk/img2dcm Secondary Capture", sc, "dcmtk img2dcm")

    def variant(name: str, source: Path, *modify: str) -> Path:
        path = out / f"dcmtk-{name}.dcm"
        shutil.copyfile(source, path)
        _run("dcmodify", "-nb", "-gin", *modify, path)
        return path

    # dcmodify updates the meta header's Media Storage SOP Class / Instance UIDs along with the dataset's.
    vlm = variant("vlm", vlp, "-m", f"SOPClassUID={VL_MICROSCOPIC}")
    add("dcmtk/VL Microscopic JPEG", vlm, "dcmtk img2dcm + dcmodify")
    slide = variant("slide", vlp, "-m", f"SOPClassUID={VL_SLIDE_COORDINATES}")
    add("dcmtk/VL Slide-Coordinates JPEG", slide, "dcmtk img2dcm + dcmodify")
    add(
        "dcmtk/JPEG without Planar Configuration",
        variant("no-planar", vlm, "-ea", "(0028,0006)"),
        "dcmtk img2dcm + dcmodify -ea",
    )
    add(
        "dcmtk/no Study or Series Instance UID",
        variant("no-study-series", vlm, "-ea", "StudyInstanceUID", "-ea", "SeriesInstanceUID"),
        "dcmtk img2dcm + dcmodify -ea",
        "0xA900",
        "missing_attribute",
    )
    multiframe = out / "dcmtk-multiframe-rle.dcm"
    shutil.copyfile(get_testdata_file("SC_rgb_rle_2frame.dcm"), multiframe)
    _run("dcmodify", "-nb", "-gin", "-m", f"SOPClassUID={MULTIFRAME_TRUE_COLOR_SC}", multiframe)
    add("dcmtk/Multi-frame True Color SC, RLE", multiframe, "pydicom file + dcmodify")

    native = out / "dcmtk-native-rgb.dcm"
    _run("dcmdjpeg", vlm, native)
    _run("dcmodify", "-nb", "-gin", native)
    add("dcmtk/dcmdjpeg native RGB", native, "dcmtk dcmdjpeg")
    for flag, label in (("+ti", "implicit VR"), ("+tb", "big endian"), ("+td", "deflated")):
        path = out / f"dcmtk-dcmconv{flag}.dcm"
        _run("dcmconv", flag, native, path)
        _run("dcmodify", "-nb", "-gin", path)
        add(f"dcmtk/dcmconv {label}", path, "dcmtk dcmconv")
    for tool, label in (("dcmcjpls", "JPEG-LS lossless"), ("dcmcrle", "RLE")):
        path = out / f"dcmtk-{tool}.dcm"
        _run(tool, native, path)
        _run("dcmodify", "-nb", "-gin", path)
        add(f"dcmtk/{tool} {label}", path, f"dcmtk {tool}")

    gdcm: dict[str, Path] = {}
    for flag, label in (("--j2k", "JPEG 2000 lossless"), ("--jpegls", "JPEG-LS lossless"), ("--rle", "RLE"),
                        ("--raw", "native YBR_FULL")):  # fmt: skip
        path = out / f"gdcm{flag}.dcm"
        _run("gdcmconv", flag, vlm, path)
        _run("dcmodify", "-nb", "-gin", path)
        gdcm[flag] = path
        add(f"gdcm/gdcmconv {label}", path, "GDCM gdcmconv")
    add(
        "gdcm/JPEG 2000 without Planar Configuration",
        variant("j2k-no-planar", gdcm["--j2k"], "-ea", "(0028,0006)"),
        "GDCM gdcmconv + dcmodify -ea",
    )

    # Broken codestream headers: a few bytes changed in (copies of) files the toolkits wrote.
    siz = b"\xff\x4f\xff\x51"
    add(
        "broken/J2K SIZ width disagrees",
        _patch(variant("broken-j2k-siz", gdcm["--j2k"]), siz, 8, b"\x00\x00\x40\x00"),
        "GDCM gdcmconv, SIZ edited",
        "0xA900",
        "codestream_mismatch",
    )
    add(
        "broken/J2K without SOC",
        _patch(variant("broken-j2k-soc", gdcm["--j2k"]), siz, 0, b"\x00\x00"),
        "GDCM gdcmconv, SOC overwritten",
        "0xC000",
        "codestream_unreadable",
    )
    add(
        "broken/JPEG SOF height disagrees",
        _patch(variant("broken-jpeg-sof", vlm), b"\xff\xc0\x00\x11\x08", 5, b"\x01\x00"),
        "dcmtk img2dcm, SOF edited",
        "0xA900",
        "codestream_mismatch",
    )
    add(
        "broken/RLE header segment count",
        _patch(variant("broken-rle", out / "dcmtk-dcmcrle.dcm"), b"\x03\x00\x00\x00\x40\x00\x00\x00", 0, b"\x10"),
        "dcmtk dcmcrle, header edited",
        "0xC000",
        "codestream_unreadable",
    )
    return files
