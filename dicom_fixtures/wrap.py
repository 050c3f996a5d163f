"""Wrap RGB images as DICOM instances of the IODs the daemon accepts, in any transfer syntax.

Every IOD in ``IODS`` is supported in every transfer syntax in ``TRANSFER_SYNTAXES``
(35 combinations). The stored Photometric Interpretation follows PS3.5: RGB for native
and lossless RLE/JPEG-LS, YBR_RCT for lossless JPEG 2000, YBR_FULL_422 for JPEG Baseline.
Only the Multi-frame True Color SC IOD takes several frames; passing a frame stack to a
single-frame IOD raises ``ValueError``.
"""

import datetime as dt
import hashlib
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

from . import modules
from .encoding import STORESCU_OPTIONS, TRANSFER_SYNTAXES, photometric_for, set_pixel_data
from .identity import PatientInfo, fake_patient, make_uid

__all__ = [
    "IODS",
    "SINGLE_FRAME_IODS",
    "STORESCU_OPTIONS",
    "TRANSFER_SYNTAXES",
    "PatientInfo",
    "fake_patient",
    "wrap_image",
    "write_dicom",
]

IODS: dict[str, str] = {
    "vl-microscopic": "1.2.840.10008.5.1.4.1.1.77.1.2",
    "vl-slide-microscopic": "1.2.840.10008.5.1.4.1.1.77.1.3",
    "vl-photographic": "1.2.840.10008.5.1.4.1.1.77.1.4",
    "sc": "1.2.840.10008.5.1.4.1.1.7",
    "mf-true-color-sc": "1.2.840.10008.5.1.4.1.1.7.4",
}
SINGLE_FRAME_IODS = frozenset(IODS) - {"mf-true-color-sc"}


@dataclass(frozen=True)
class _IodSpec:
    modality: str
    vl: bool = False  # VL Image + Acquisition Context modules
    specimen: bool = False
    slide_coordinates: bool = False
    sc: bool = False  # SC Equipment + SC Image modules
    multiframe: bool = False


_SPECS = {
    "vl-microscopic": _IodSpec("GM", vl=True, specimen=True),
    "vl-slide-microscopic": _IodSpec("SM", vl=True, specimen=True, slide_coordinates=True),
    "vl-photographic": _IodSpec("XC", vl=True),
    "sc": _IodSpec("GM", sc=True),
    "mf-true-color-sc": _IodSpec("GM", sc=True, multiframe=True),
}


def _as_frames(pixels: np.ndarray, iod: str) -> np.ndarray:
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8:
        raise ValueError(f"pixels must be uint8, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[-1] == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"pixels must be HxWx3 (or FxHxWx3 for mf-true-color-sc), got shape {arr.shape}")
    if len(arr) == 0 or min(arr.shape[1:3]) < 1 or max(arr.shape[1:3]) > 65535:
        raise ValueError(f"image size {arr.shape[1:3]} out of range for DICOM Rows/Columns")
    if len(arr) > 1 and iod in SINGLE_FRAME_IODS:
        raise ValueError(f"IOD {iod!r} is single-frame; {len(arr)} frames given (only mf-true-color-sc is multi-frame)")
    return np.ascontiguousarray(arr)


def wrap_image(
    pixels: np.ndarray,
    iod: str = "vl-microscopic",
    transfer_syntax: str = "explicit",
    *,
    seed: int = 0,
    patient: PatientInfo | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    instance_number: int = 1,
    series_number: int = 1,
    comment: str | None = None,
) -> Dataset:
    """Wrap an HxWx3 uint8 RGB image (FxHxWx3 for "mf-true-color-sc") as a DICOM dataset.

    ``iod`` is a key of ``IODS`` and ``transfer_syntax`` a key of ``TRANSFER_SYNTAXES``.
    Unset identities derive from ``seed``: the patient is ``fake_patient(seed)``; study
    attributes (date, accession, study ID) derive from the study UID and series/specimen
    attributes from the series UID, so images wrapped with the same UIDs agree. The result
    has ``file_meta`` set and is ready for ``ds.save_as(path, enforce_file_format=True)``.
    """
    if iod not in IODS:
        raise ValueError(f"unknown IOD {iod!r}; expected one of {', '.join(IODS)}")
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"unknown transfer syntax {transfer_syntax!r}; expected one of {', '.join(TRANSFER_SYNTAXES)}")
    frames = _as_frames(pixels, iod)
    spec = _SPECS[iod]
    patient = patient or fake_patient(seed)
    study_uid = study_uid or make_uid("study", seed, patient.patient_id)
    series_uid = series_uid or make_uid("series", study_uid, iod, series_number)
    study = modules.study_for(study_uid)
    pixel_digest = hashlib.blake2b(frames.tobytes(), digest_size=8).hexdigest()
    sop_uid = make_uid("instance", series_uid, instance_number, iod, transfer_syntax, pixel_digest)
    content_time = study.when + dt.timedelta(minutes=2 + instance_number)

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = IODS[iod]
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = "DICOM_FIXTURES"

    modules.add_sop_common(ds, IODS[iod], sop_uid, content_time)
    modules.add_patient(ds, patient)
    modules.add_study(ds, study, patient)
    modules.add_series(ds, series_uid, spec.modality, series_number, "FNAB Diff-Quik 40x")
    modules.add_equipment(ds)
    modules.add_general_image(ds, instance_number, content_time, comment)
    photometric = photometric_for(transfer_syntax)
    modules.add_image_pixel(ds, frames.shape[1], frames.shape[2], len(frames) if spec.multiframe else None, photometric)
    if spec.vl:
        modules.add_vl_image(ds, with_anatomy=not spec.specimen)
    if spec.specimen:
        container = f"FXS-{study.accession[4:]}-{series_number}"
        modules.add_specimen(ds, container, f"{container}-A", make_uid("specimen", series_uid))
    if spec.slide_coordinates:
        h = int(pixel_digest[:8], 16)
        modules.add_slide_coordinates(
            ds, make_uid("frame-of-reference", series_uid), 10 + (h % 4000) / 100, 5 + (h >> 12) % 1500 / 100
        )
    if spec.sc:
        modules.add_sc_equipment(ds, content_time)
    if spec.multiframe:
        modules.add_sc_multiframe(ds, len(frames))
    set_pixel_data(ds, frames, transfer_syntax)
    return ds


def write_dicom(ds: Dataset, path: str | PathLike[str]) -> Path:
    """Write ``ds`` in the DICOM File Format (preamble + meta) and return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out
