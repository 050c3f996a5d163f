"""What the listener accepts, and the cheap structural checks done before acknowledging.

The checks read header attributes only; pixel data are never decoded on the C-STORE path.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom import Dataset
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

from cds_daemon.spool import valid_uid

ACCEPTED_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.77.1.2": "VL Microscopic Image",
    "1.2.840.10008.5.1.4.1.1.77.1.3": "VL Slide-Coordinates Microscopic Image",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic Image",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image",
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


class NotAcceptable(Exception):
    """The dataset is not something we take; the message is the reason sent back."""


@dataclass(frozen=True)
class AcceptedHeader:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str | None
    series_instance_uid: str | None
    accession_number: str | None


def _int(ds: Dataset, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword, default)
    if value is None or value == "":
        raise NotAcceptable(f"missing {keyword}")
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise NotAcceptable(f"{keyword} is not an integer: {value!r}") from exc


def check_dataset(
    ds: Dataset,
    *,
    context_sop_class: str,
    request_sop_instance: str | None,
    transfer_syntax: str,
    max_image_pixels: int,
) -> AcceptedHeader:
    """Validate what a C-STORE brought; raise :class:`NotAcceptable` with the reason."""
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in ACCEPTED_SOP_CLASSES:
        raise NotAcceptable(f"SOP class {sop_class or '(none)'} is not accepted")
    if sop_class != context_sop_class:
        raise NotAcceptable(f"SOPClassUID {sop_class} does not match the presentation context")
    uid = str(ds.get("SOPInstanceUID", ""))
    if not valid_uid(uid):
        raise NotAcceptable(f"invalid SOPInstanceUID {uid!r}")
    if request_sop_instance and uid != request_sop_instance:
        raise NotAcceptable("SOPInstanceUID differs from the request's AffectedSOPInstanceUID")
    if "PixelData" not in ds:
        raise NotAcceptable("no pixel data")
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    samples, bits = _int(ds, "SamplesPerPixel"), _int(ds, "BitsAllocated")
    frames = _int(ds, "NumberOfFrames", 1)
    if min(rows, cols, samples, bits, frames) < 1:
        raise NotAcceptable("Rows, Columns, SamplesPerPixel, BitsAllocated and frames must be >= 1")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    expected_samples = _SAMPLES_FOR_PHOTOMETRIC.get(photometric)
    if expected_samples is None:
        raise NotAcceptable(f"unsupported PhotometricInterpretation {photometric or '(none)'}")
    if expected_samples != samples:
        raise NotAcceptable(f"PhotometricInterpretation {photometric} with SamplesPerPixel {samples}")
    if bits not in (8, 16):
        raise NotAcceptable(f"BitsAllocated {bits} is not supported")
    if rows * cols * frames > max_image_pixels:
        raise NotAcceptable(f"image too large: {cols}x{rows}x{frames} exceeds {max_image_pixels} pixels")
    if transfer_syntax in NATIVE_TRANSFER_SYNTAXES:
        expected = rows * cols * samples * (bits // 8) * frames
        got = len(ds.PixelData)
        if got < expected:
            raise NotAcceptable(f"pixel data shorter than the header says ({got} < {expected} bytes)")
    return AcceptedHeader(
        sop_class_uid=sop_class,
        sop_instance_uid=uid,
        study_instance_uid=str(ds.get("StudyInstanceUID", "")) or None,
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")) or None,
        accession_number=str(ds.get("AccessionNumber", "")) or None,
    )
