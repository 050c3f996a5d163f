"""What the listener accepts, and the cheap structural checks done before acknowledging.

The checks read header attributes only; pixel data are never decoded on the C-STORE path.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from cds_daemon.common.vocabulary import REQUIRED_SOURCE_UIDS, WHOLE_SLIDE_SOP_CLASS, RefusalCode
from cds_daemon.ingest.codestream import CodestreamError, j2k_header, jpeg_header, rle_segments
from cds_daemon.ingest.received import ReceivedFile
from cds_daemon.store.spool import valid_uid

NOT_MATCHING = 0xA900
CANNOT_UNDERSTAND = 0xC000

ACCEPTED_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.77.1.2": "VL Microscopic Image",
    "1.2.840.10008.5.1.4.1.1.77.1.3": "VL Slide-Coordinates Microscopic Image",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic Image",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image",
    WHOLE_SLIDE_SOP_CLASS: "VL Whole Slide Microscopy Image",
}

NATIVE_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)

#: Everything we can decode: pydicom natively, pylibjpeg-libjpeg, -openjpeg, -rle.
ACCEPTED_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    *NATIVE_TRANSFER_SYNTAXES,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    RLELossless,
)

_SAMPLES_FOR_PHOTOMETRIC = {
    "MONOCHROME1": 1,
    "MONOCHROME2": 1,
    "PALETTE COLOR": 1,
    "RGB": 3,
    "YBR_FULL": 3,
    "YBR_FULL_422": 3,
    "YBR_ICT": 3,
    "YBR_RCT": 3,
}

_JPEG_FAMILY = frozenset(
    {JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless}
)
_J2K_FAMILY = frozenset({JPEG2000Lossless, JPEG2000, HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K})


class NotAcceptable(Exception):
    """The dataset is not something we take: a refusal code, the DIMSE status and the reason sent back."""

    def __init__(self, code: RefusalCode, reason: str, status: int = NOT_MATCHING) -> None:
        super().__init__(reason)
        self.code = code
        self.status = status


@dataclass(frozen=True)
class AcceptedHeader:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    accession_number: str | None
    specimen_identifier: str | None = None  # Specimen module: the case a cytopathologist signs out
    container_identifier: str | None = None  # the slide
    frame_of_reference_uid: str | None = None

    @property
    def slide_key(self) -> str | None:
        """The whole slide this level belongs to (its series and Frame of Reference); None for camera images."""
        if self.sop_class_uid != WHOLE_SLIDE_SOP_CLASS:
            return None
        return f"{self.series_instance_uid}/{self.frame_of_reference_uid or '-'}"


def _specimen_identifier(ds: Dataset) -> str | None:
    items = ds.get("SpecimenDescriptionSequence") or []
    return (str(items[0].get("SpecimenIdentifier", "") or "") or None) if items else None


def _int(ds: Dataset, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword, default)
    if value is None or value == "":
        raise NotAcceptable(RefusalCode.BAD_IMAGE_ATTRIBUTES, f"missing {keyword}")
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise NotAcceptable(RefusalCode.BAD_IMAGE_ATTRIBUTES, f"{keyword} is not an integer: {value!r}") from exc


def _check_uids(ds: Dataset, request_sop_instance: str | None) -> None:
    """Every Type 1 UID the result objects copy: present and well formed, all named in one refusal."""
    missing = [k for k in REQUIRED_SOURCE_UIDS if not str(ds.get(k, "") or "")]
    if missing:
        raise NotAcceptable(RefusalCode.MISSING_ATTRIBUTE, f"missing Type 1 attributes: {', '.join(missing)}")
    invalid = [k for k in REQUIRED_SOURCE_UIDS if not valid_uid(str(ds.get(k)))]
    if invalid:
        raise NotAcceptable(RefusalCode.INVALID_UID, f"invalid UID in {', '.join(invalid)}")
    if request_sop_instance and str(ds.SOPInstanceUID) != request_sop_instance:
        raise NotAcceptable(RefusalCode.INVALID_UID, "SOPInstanceUID differs from the request's AffectedSOPInstanceUID")


def _frames(received: ReceivedFile, frames: int) -> Iterator[bytes]:
    """The encapsulated frames, read one at a time; exactly ``frames`` of them or a refusal."""
    count = 0
    try:
        for frame in received.frames(frames):
            count += 1
            if count > frames:
                break
            yield frame
    except NotAcceptable:
        raise
    except Exception as exc:  # pydicom raises ValueError/TypeError/struct.error on broken encapsulation
        raise NotAcceptable(
            RefusalCode.CODESTREAM_UNREADABLE, f"encapsulated pixel data unreadable: {exc}", CANNOT_UNDERSTAND
        ) from exc
    if count != frames:
        raise NotAcceptable(RefusalCode.CODESTREAM_MISMATCH, f"{count} compressed frames for NumberOfFrames {frames}")


def _check_codestreams(
    received: ReceivedFile, transfer_syntax: str, rows: int, cols: int, samples: int, bits: int, frames: int
) -> None:
    """Each frame's codestream header parses and agrees with Rows, Columns, samples and bits."""
    if transfer_syntax not in _JPEG_FAMILY and transfer_syntax not in _J2K_FAMILY and transfer_syntax != RLELossless:
        return
    for number, frame in enumerate(_frames(received, frames), start=1):
        try:
            if transfer_syntax == RLELossless:
                segments = rle_segments(frame)
                if segments != samples * (bits // 8):
                    raise NotAcceptable(
                        RefusalCode.CODESTREAM_MISMATCH,
                        f"frame {number}: RLE has {segments} segments, the image needs {samples * (bits // 8)}",
                    )
                continue
            header = jpeg_header(frame) if transfer_syntax in _JPEG_FAMILY else j2k_header(frame)
        except CodestreamError as exc:
            raise NotAcceptable(RefusalCode.CODESTREAM_UNREADABLE, f"frame {number}: {exc}", CANNOT_UNDERSTAND) from exc
        if (header.rows, header.columns, header.components) != (rows, cols, samples) or header.precision > bits:
            raise NotAcceptable(
                RefusalCode.CODESTREAM_MISMATCH,
                f"frame {number}: codestream is {header.columns}x{header.rows}, {header.components} components, "
                f"{header.precision} bits; the header says {cols}x{rows}, {samples} samples, {bits} bits",
            )


def _check_slide_level(ds: Dataset, max_slide_pixels: int) -> None:
    """A whole-slide level: its tile grid and Total Pixel Matrix make sense (the reader relies on them)."""
    total_cols, total_rows = _int(ds, "TotalPixelMatrixColumns"), _int(ds, "TotalPixelMatrixRows")
    if min(total_cols, total_rows) < 1:
        raise NotAcceptable(RefusalCode.BAD_IMAGE_ATTRIBUTES, "TotalPixelMatrixColumns and Rows must be >= 1")
    planes = _int(ds, "TotalPixelMatrixFocalPlanes", 1)
    if total_cols * total_rows * max(planes, 1) > max_slide_pixels:
        raise NotAcceptable(
            RefusalCode.IMAGE_TOO_LARGE,
            f"slide level too large: {total_cols}x{total_rows}x{planes} exceeds {max_slide_pixels} pixels",
        )
    organisation = str(ds.get("DimensionOrganizationType", "") or "")
    if organisation == "TILED_FULL":
        tiles = -(-total_cols // _int(ds, "Columns")) * -(-total_rows // _int(ds, "Rows"))
        paths = _int(ds, "NumberOfOpticalPaths", 1)
        expected = tiles * max(planes, 1) * max(paths, 1)
        if _int(ds, "NumberOfFrames", 1) != expected and not ds.get("SOPInstanceUIDOfConcatenationSource"):
            raise NotAcceptable(
                RefusalCode.BAD_IMAGE_ATTRIBUTES,
                f"TILED_FULL with {_int(ds, 'NumberOfFrames', 1)} frames; its tile grid needs {expected}",
            )


def check_dataset(
    received: ReceivedFile,
    *,
    context_sop_class: str,
    request_sop_instance: str | None,
    transfer_syntax: str,
    max_image_pixels: int,
    max_slide_pixels: int,
) -> AcceptedHeader:
    """Validate what a C-STORE brought; raise :class:`NotAcceptable` with the code and reason.

    Whole-slide levels are checked against ``max_slide_pixels`` (their Total Pixel Matrix) instead of
    ``max_image_pixels``: they are never decoded whole.
    """
    ds = received.header
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in ACCEPTED_SOP_CLASSES:
        raise NotAcceptable(RefusalCode.SOP_CLASS_NOT_ACCEPTED, f"SOP class {sop_class or '(none)'} is not accepted")
    if sop_class != context_sop_class:
        raise NotAcceptable(
            RefusalCode.SOP_CLASS_MISMATCH, f"SOPClassUID {sop_class} does not match the presentation context"
        )
    _check_uids(ds, request_sop_instance)
    if not received.has_pixels:
        raise NotAcceptable(RefusalCode.NO_PIXEL_DATA, "no pixel data")
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    samples, bits = _int(ds, "SamplesPerPixel"), _int(ds, "BitsAllocated")
    frames = _int(ds, "NumberOfFrames", 1)
    if min(rows, cols, samples, bits, frames) < 1:
        raise NotAcceptable(
            RefusalCode.BAD_IMAGE_ATTRIBUTES, "Rows, Columns, SamplesPerPixel, BitsAllocated and frames must be >= 1"
        )
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    expected_samples = _SAMPLES_FOR_PHOTOMETRIC.get(photometric)
    if expected_samples is None:
        raise NotAcceptable(
            RefusalCode.UNSUPPORTED_PHOTOMETRIC, f"unsupported PhotometricInterpretation {photometric or '(none)'}"
        )
    if expected_samples != samples:
        raise NotAcceptable(
            RefusalCode.BAD_IMAGE_ATTRIBUTES, f"PhotometricInterpretation {photometric} with SamplesPerPixel {samples}"
        )
    if bits not in (8, 16):
        raise NotAcceptable(RefusalCode.UNSUPPORTED_BITS, f"BitsAllocated {bits} is not supported")
    if sop_class == WHOLE_SLIDE_SOP_CLASS:
        _check_slide_level(ds, max_slide_pixels)
    elif rows * cols * frames > max_image_pixels:
        raise NotAcceptable(
            RefusalCode.IMAGE_TOO_LARGE, f"image too large: {cols}x{rows}x{frames} exceeds {max_image_pixels} pixels"
        )
    if transfer_syntax in NATIVE_TRANSFER_SYNTAXES:
        expected = get_expected_length(ds, "bytes")  # YBR_FULL_422 native: 2 samples per pixel
        got, present = received.native_length()
        if present < got:
            raise NotAcceptable(
                RefusalCode.PIXEL_DATA_SHORT, f"pixel data cut short ({present} of the declared {got} bytes)"
            )
        if got < expected:
            raise NotAcceptable(
                RefusalCode.PIXEL_DATA_SHORT, f"pixel data shorter than the header says ({got} < {expected} bytes)"
            )
        if got > expected + 1:  # one byte pads an odd length to even
            raise NotAcceptable(
                RefusalCode.PIXEL_DATA_LONG, f"pixel data longer than the header says ({got} > {expected} bytes)"
            )
    else:
        _check_codestreams(received, transfer_syntax, rows, cols, samples, bits, frames)
    return AcceptedHeader(
        sop_class_uid=sop_class,
        sop_instance_uid=str(ds.SOPInstanceUID),
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        accession_number=str(ds.get("AccessionNumber", "")) or None,
        specimen_identifier=_specimen_identifier(ds),
        container_identifier=str(ds.get("ContainerIdentifier", "") or "") or None,
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "") or "") or None,
    )
