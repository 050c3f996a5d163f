"""Corpus of broken and unwanted inputs for the ingest path, with the expected daemon response.

``expected_ingest`` is the C-STORE response the daemon must give when the item is
delivered with ``send_with``:

* ``"refused"``: SOP class not accepted (no presentation context; 0xA900 if forced);
* ``"0xA900"``: parsed, but pixel attributes missing/inconsistent, pixel data missing or
  short, or more than 64 megapixels declared;
* ``"0xC000"``: pydicom cannot parse the dataset;
* ``"0x0000"``: structurally valid; ``expected_outcome`` then says what the worker does
  ("failed": decode error, "review": flagged by the quality gate);
* ``"unsendable"``: neither dcmtk ``storescu`` nor pynetdicom can send it (not DICOM).

``send_with`` is ``"storescu"`` when dcmtk's storescu reads and sends the file (run it
with ``storescu_args``, which make it propose the file's own transfer syntax), else
``"pynetdicom-raw"``: set ``pynetdicom._config.STORE_SEND_CHUNKED_DATASET = True`` and call
``assoc.send_c_store(path)``, which sends the bytes after the file meta without decoding
them. ``storescu_sendable`` records what storescu 3.6.7 did with the file when this
corpus was designed (the tests re-check it against a live SCP).

pydicom is lenient with truncation: a file cut inside its last element (Pixel Data) parses
with a short value, so "truncated-pixel-data" is a 0xA900 case; a cut inside an earlier
sequence, or a sequence item of garbage without delimiters, is what pydicom cannot parse.
"""

import io
import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

from . import modules
from .encoding import jpeg_baseline_frame
from .identity import fake_patient, make_uid, study_datetime
from .synth import make_bad_field, make_field
from .wrap import IODS, STORESCU_OPTIONS, wrap_image, write_dicom

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
BASIC_TEXT_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.11"
HUGE_SIDE = 20000
MANIFEST = "corpus.json"


@dataclass(frozen=True)
class CorpusItem:
    name: str
    path: Path
    description: str
    expected_ingest: str  # "refused" | "0xA900" | "0xC000" | "0x0000" | "unsendable"
    expected_outcome: str  # "none" (no job) | "failed" | "review"
    send_with: str  # "storescu" | "pynetdicom-raw"
    storescu_sendable: bool
    storescu_args: tuple[str, ...] = ()


def _field(seed: int, size: tuple[int, int] = (128, 160)) -> np.ndarray:
    return make_field("benign", seed, size=size)


def _wrapped(seed: int, size: tuple[int, int] = (128, 160), ts: str = "explicit") -> Dataset:
    return wrap_image(_field(seed, size), "vl-microscopic", ts, seed=seed, comment="broken-corpus fixture")


def _save(ds: Dataset, path: Path) -> Path:
    return write_dicom(ds, path)


def _explicit_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _grayscale_base(sop_class: str, seed: int, modality: str) -> Dataset:
    """Patient/study/series/equipment attributes shared by the non-RGB items."""
    patient = fake_patient(seed)
    when = study_datetime(seed)
    uid = make_uid("broken", sop_class, seed)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    modules.add_sop_common(ds, sop_class, uid, when)
    modules.add_patient(ds, patient)
    study = modules.StudyInfo(make_uid("broken-study", seed), when, f"FXA-{seed:08d}", f"FX{seed:08d}")
    modules.add_study(ds, study, patient)
    modules.add_series(ds, make_uid("broken-series", sop_class, seed), modality, 1, "Fixture")
    modules.add_equipment(ds)
    return ds


def _gray16_sc(seed: int) -> Dataset:
    """16-bit (12 stored) MONOCHROME2 Secondary Capture of a radiograph-like image."""
    ds = _grayscale_base(IODS["sc"], seed, "OT")
    modules.add_general_image(ds, 1, study_datetime(seed), "16-bit grayscale fixture")
    modules.add_sc_equipment(ds, study_datetime(seed))
    img = make_bad_field("radiograph", seed, size=(128, 128)).astype(np.uint16) * 16
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = img.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = img.tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def _ct(seed: int) -> Dataset:
    ds = _grayscale_base(CT_IMAGE_STORAGE, seed, "CT")
    modules.add_general_image(ds, 1, study_datetime(seed), None)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.FrameOfReferenceUID = make_uid("broken-for", seed)
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = [-32, -32, 0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceThickness = 2.5
    ds.PixelSpacing = [1.0, 1.0]
    ds.KVP = 120
    ds.AcquisitionNumber = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    yy, xx = np.mgrid[-32:32, -32:32]
    body = ((xx**2 + yy**2) < 28**2) * 1040 + ((xx**2 + yy**2) < 6**2) * 600
    ds.PixelData = body.astype(np.uint16).tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def _basic_text_sr(seed: int) -> Dataset:
    ds = _grayscale_base(BASIC_TEXT_SR_STORAGE, seed, "SR")
    when = study_datetime(seed)
    ds.InstanceNumber = 1
    ds.ContentDate = when.strftime("%Y%m%d")
    ds.ContentTime = when.strftime("%H%M%S")
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.PerformedProcedureCodeSequence = []
    ds.ValueType = "CONTAINER"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = "11526-1", "LN", "Pathology study"
    ds.ConceptNameCodeSequence = [title]
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    text = Dataset()
    text.RelationshipType = "CONTAINS"
    text.ValueType = "TEXT"
    finding = Dataset()
    finding.CodeValue, finding.CodingSchemeDesignator, finding.CodeMeaning = "121071", "DCM", "Finding"
    text.ConceptNameCodeSequence = [finding]
    text.TextValue = "Fixture report: benign follicular nodule (Bethesda II)."
    ds.ContentSequence = [text]
    return ds


def _replace_scan_data(codestream: bytes, rng: np.random.Generator) -> bytes:
    """Keep SOI..SOS header of a JPEG, fill the entropy-coded segment with garbage.

    Random bytes alone sometimes still decode (to noise); stray DHT markers inside the
    scan make libjpeg, libjpeg-turbo (Pillow) and dcmtk all give up.
    """
    sos = codestream.index(b"\xff\xda")
    (header_len,) = struct.unpack(">H", codestream[sos + 2 : sos + 4])
    start = sos + 2 + header_len
    n = len(codestream) - 2 - start
    garbage = bytearray(rng.integers(0, 255, n, dtype=np.uint8).tobytes())
    for pos in rng.integers(0, n - 2, 8):
        garbage[pos : pos + 2] = b"\xff\xc4"
    return codestream[:start] + bytes(garbage) + b"\xff\xd9"


def _with_declared_size(codestream: bytes, rows: int, cols: int) -> bytes:
    """Patch the SOF0 frame header so the codestream declares ``rows`` x ``cols``."""
    sof = codestream.index(b"\xff\xc0")
    return codestream[: sof + 5] + struct.pack(">HH", rows, cols) + codestream[sof + 9 :]


def _garbage_sequence(ds_bytes: bytes, rng: np.random.Generator) -> bytes:
    """Insert a private undefined-length sequence whose item is random bytes with no delimiters."""
    pos = ds_bytes.index(b"\x10\x00\x10\x00PN")  # before (0010,0010) PatientName, keeps tag order
    creator_value = b"FIXTURE GARBAGE "
    creator = struct.pack("<HH", 0x0009, 0x0010) + b"LO" + struct.pack("<H", len(creator_value)) + creator_value
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + rng.integers(0, 256, 160, np.uint8).tobytes()
    seq = struct.pack("<HH", 0x0009, 0x1010) + b"SQ\x00\x00" + struct.pack("<I", 0xFFFFFFFF) + item
    return ds_bytes[:pos] + creator + seq + ds_bytes[pos:]


def make_corpus(out_dir: Path, seed: int = 0) -> list[CorpusItem]:
    """Write every broken-input item into ``out_dir`` plus a ``corpus.json`` manifest."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0xC0])
    items: list[CorpusItem] = []

    def add(
        name: str,
        description: str,
        ingest: str,
        outcome: str = "none",
        send: str = "storescu",
        ts: str = "explicit",
    ) -> Path:
        path = out / f"{name}.dcm"
        sendable = ingest != "unsendable"
        args = (STORESCU_OPTIONS[ts],) if sendable else ()
        by_storescu = send == "storescu" and sendable
        items.append(CorpusItem(name, path, description, ingest, outcome, send, by_storescu, args))
        return path

    full = _explicit_bytes(_wrapped(seed, (256, 256)))
    pixel_tag = full.rindex(b"\xe0\x7f\x10\x00")
    add(
        "truncated-pixel-data",
        "VL Microscopic file cut in the middle of its native Pixel Data; storescu refuses it "
        "(premature end of stream); pydicom parses it with a Pixel Data value shorter than declared",
        "0xA900",
        send="pynetdicom-raw",
    ).write_bytes(full[: pixel_tag + (len(full) - pixel_tag) // 2])

    spec_seq = full.index(b"\x40\x00\x60\x05")  # (0040,0560) SpecimenDescriptionSequence
    add(
        "truncated-in-sequence",
        "VL Microscopic file cut inside the Specimen Description Sequence; pydicom cannot parse it",
        "0xC000",
        send="pynetdicom-raw",
    ).write_bytes(full[: spec_seq + 200])

    add(
        "garbage-sequence",
        "private undefined-length sequence whose item holds random bytes and no delimiters; "
        "neither pydicom nor dcmtk can parse it",
        "0xC000",
        send="pynetdicom-raw",
    ).write_bytes(_garbage_sequence(_explicit_bytes(_wrapped(seed + 1)), rng))

    _save(_ct(seed), add("wrong-sop-ct", "CT Image Storage: SOP class not accepted", "refused"))
    _save(
        _basic_text_sr(seed),
        add("wrong-sop-sr", "Basic Text SR (a report, no pixels): SOP class not accepted", "refused"),
    )

    ds = _wrapped(seed + 2)
    del ds.PixelData
    _save(ds, add("no-pixel-data", "VL Microscopic with Image Pixel attributes but no Pixel Data", "0xA900"))

    ds = _wrapped(seed + 3)
    del ds.Rows
    _save(ds, add("missing-rows", "VL Microscopic without Rows (0028,0010)", "0xA900"))

    ds = _wrapped(seed + 4, (256, 256))
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    _save(
        ds,
        add(
            "short-pixel-data",
            "native Pixel Data holds half of Rows*Columns*SamplesPerPixel*BitsAllocated/8 bytes",
            "0xA900",
        ),
    )

    ds = _wrapped(seed + 5)
    ds.PhotometricInterpretation = "MONOCHROME2"
    _save(ds, add("wrong-photometric", "MONOCHROME2 with SamplesPerPixel=3", "0xA900"))

    ds = _wrapped(seed + 6, (64, 64), ts="jpeg-baseline")
    small = jpeg_baseline_frame(_field(seed + 6, (64, 64)))
    ds.Rows = ds.Columns = HUGE_SIDE
    ds.PixelData = encapsulate([_with_declared_size(small, HUGE_SIDE, HUGE_SIDE)])
    ds["PixelData"].is_undefined_length = True
    _save(
        ds,
        add(
            "huge-20000",
            f"JPEG Baseline declaring {HUGE_SIDE}x{HUGE_SIDE} (400 megapixels) in both the DICOM "
            "header and the SOF; one short fragment, a few kB on disk; never decode it",
            "0xA900",
            ts="jpeg-baseline",
        ),
    )

    _save(
        _gray16_sc(seed),
        add("gray16-sc", "16-bit (12 stored) MONOCHROME2 Secondary Capture", "0x0000", "review"),
    )
    tiny = wrap_image(_field(seed + 7)[:1, :1], "vl-microscopic", "explicit", seed=seed + 7)
    _save(tiny, add("tiny-1x1", "1x1 RGB VL Microscopic image", "0x0000", "review"))

    ds = _wrapped(seed + 8, ts="jpeg-baseline")
    good = jpeg_baseline_frame(_field(seed + 8))
    ds.PixelData = encapsulate([_replace_scan_data(good, rng)])
    ds["PixelData"].is_undefined_length = True
    _save(
        ds,
        add(
            "corrupt-jpeg",
            "JPEG Baseline with valid headers (SOI..SOS) and garbage entropy-coded data",
            "0x0000",
            "failed",
            ts="jpeg-baseline",
        ),
    )

    png = io.BytesIO()
    Image.fromarray(_field(seed + 9, (64, 80))).save(png, format="PNG")
    add("not-dicom-png", "a PNG image named .dcm", "unsendable").write_bytes(png.getvalue())
    add("not-dicom-random", "4 KiB of random bytes named .dcm", "unsendable").write_bytes(
        rng.integers(0, 256, 4096, np.uint8).tobytes()
    )

    manifest = [{**asdict(item), "path": item.path.name} for item in items]
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return items


def load_corpus(out_dir: Path) -> list[CorpusItem]:
    """Read a corpus written by :func:`make_corpus` back from its manifest."""
    base = Path(out_dir)
    raw = json.loads((base / MANIFEST).read_text())
    return [
        CorpusItem(**{**entry, "path": base / entry["path"], "storescu_args": tuple(entry["storescu_args"])})
        for entry in raw
    ]
