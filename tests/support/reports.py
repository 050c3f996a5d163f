"""Shared data and validators for the tests of cds_daemon.reports (no tests in this module)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from cds_daemon.reports.result import AIResult

CLASSES = ("benign", "indeterminate", "malignant")
DISPLAY = (
    "Benign (Bethesda II)",
    "Indeterminate/Suspicious (Bethesda I, III, IV, V)",
    "Malignant (Bethesda VI)",
)
VL_MICROSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.2"
VL_SLIDE_COORDINATES = "1.2.840.10008.5.1.4.1.1.77.1.3"
VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MULTIFRAME_TRUE_COLOR_SC = "1.2.840.10008.5.1.4.1.1.7.4"
#: dciodvfy does not read CodingSchemeIdentificationSequence, so it warns about every private code.
ALLOWED_WARNINGS = ("Unrecognized defined term <99THYCDS>",)
#: High-CAM block of the test CAM, in CAM cells (rows, cols) of the 21x28 grid.
HOT = (slice(6, 12), slice(12, 20))


def field_pixels(label: str = "malignant", seed: int = 1) -> np.ndarray:
    """A synthetic FNAB field when dicom_fixtures has one, else a smooth colour test pattern."""
    try:
        from dicom_fixtures.synth import make_field
    except ImportError:
        yy, xx = np.mgrid[0:768, 0:1024]
        return np.stack([128 + 100 * np.sin(xx / 40), 128 + 100 * np.cos(yy / 30), 180 + 0 * xx], axis=2).astype(
            np.uint8
        )
    return make_field(label, seed=seed)


def hot_cam() -> np.ndarray:
    """21x28 CAM: 1.0 in the HOT block, 0.05 elsewhere."""
    cam = np.full((21, 28), 0.05, np.float32)
    cam[HOT] = 1.0
    return cam


def make_result(
    *,
    version: str = "0.1.0+demo",
    predicted: str = "malignant",
    probabilities: tuple[float, ...] = (0.1, 0.25, 0.65),
    referred: bool = True,
    cam: np.ndarray | None = None,
) -> AIResult:
    reasons: tuple[str, ...] = ()
    texts: tuple[str, ...] = ()
    if referred:
        reasons = ("conformal_set_not_singleton", "low_confidence", "quality_blur")
        texts = (
            "conformal prediction set is not one class (indeterminate, malignant)",
            "calibrated confidence 0.65 is below 0.80",
            "out of focus (Laplacian variance 41)",
        )
    return AIResult(
        classes=CLASSES,
        display_names=DISPLAY,
        probabilities=probabilities,
        predicted=predicted,
        conformal_set=("indeterminate", "malignant") if referred else (predicted,),
        referred=referred,
        reasons=reasons,
        reason_texts=texts,
        model_name="ThyroidEffi",
        model_version=version,
        model_sha256="9f" * 32,
        cam=hot_cam() if cam is None else cam,
        basic_probabilities=(0.12, 0.3, 0.58),
        premium_probabilities=(0.08, 0.2, 0.72),
    )


def _file_meta(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> None:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def _rgb_pixels(ds: Dataset, pixels: np.ndarray) -> None:
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()


def vl_microscopic(pixels: np.ndarray | None = None) -> Dataset:
    """A VL Microscopic Image as a microscope camera sends it: full patient/study/series, 768x1024 RGB."""
    ds = Dataset()
    ds.SOPClassUID = VL_MICROSCOPIC
    ds.SOPInstanceUID = generate_uid()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Jürgen"
    ds.PatientID = "PID-0042"
    ds.IssuerOfPatientID = "HOSP"
    ds.PatientBirthDate = "19640229"
    ds.PatientSex = "M"
    ds.StudyInstanceUID = generate_uid()
    ds.StudyDate = "20240507"
    ds.StudyTime = "101530"
    ds.AccessionNumber = "ACC2024-0815"
    ds.StudyID = "FNAB-17"
    ds.ReferringPhysicianName = "Weber^Anna^^Dr."
    ds.StudyDescription = "Thyroid FNAB cytology"
    ds.PatientAge = "060Y"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 1
    ds.Modality = "GM"
    ds.SeriesDescription = "Diff-Quik 40x"
    ds.BodyPartExamined = "THYROID"
    ds.Manufacturer = "Microscope Camera Co"
    ds.InstitutionName = "General Hospital Pathology"
    ds.InstanceNumber = 3
    ds.PatientOrientation = ""
    ds.ContentDate = "20240507"
    ds.ContentTime = "101612"
    ds.AcquisitionDateTime = "20240507101612"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.LossyImageCompression = "00"
    ds.AcquisitionContextSequence = Sequence()
    _rgb_pixels(ds, field_pixels() if pixels is None else pixels)
    _file_meta(ds)
    return ds


def vl_microscopic_with_specimen() -> Dataset:
    """A VL Microscopic Image whose camera software filled the Specimen module: slide and specimen."""
    ds = vl_microscopic()
    ds.ContainerIdentifier = "SLIDE-2024-0815-A"
    ds.IssuerOfTheContainerIdentifierSequence = Sequence()
    ds.ContainerTypeCodeSequence = Sequence()
    specimen = Dataset()
    specimen.SpecimenIdentifier = "FNA-2024-0815-1"
    specimen.SpecimenUID = generate_uid()
    specimen.IssuerOfTheSpecimenIdentifierSequence = Sequence()
    specimen.SpecimenPreparationSequence = Sequence()
    ds.SpecimenDescriptionSequence = Sequence([specimen])
    return ds


def minimal_sc(pixels: np.ndarray | None = None, *, jpeg: bool = False) -> Dataset:
    """A Secondary Capture with only what a careless modality sends: no birth date, sex, accession, IDs."""
    ds = Dataset()
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = "Anon^Case"
    ds.PatientID = "X1"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.ConversionType = "DI"
    _rgb_pixels(ds, field_pixels("benign", 2) if pixels is None else pixels)
    _file_meta(ds, JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian)
    return ds


def multiframe_sc() -> Dataset:
    """A Multi-frame True Color SC with two frames; the daemon analyses frame 1."""
    frame = field_pixels("indeterminate", 3)[:384, :512]
    ds = minimal_sc(np.concatenate([frame, frame]))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MULTIFRAME_TRUE_COLOR_SC
    ds.Rows = 384
    ds.NumberOfFrames = 2
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    return ds


def vl_other(sop_class: str, modality: str) -> Callable[[], Dataset]:
    """A VL Microscopic-like source under another accepted VL SOP class (Slide-Coordinates, Photographic)."""

    def make() -> Dataset:
        ds = vl_microscopic()
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.Modality = modality
        return ds

    return make


SOURCES: dict[str, Callable[[], Dataset]] = {
    "vl-microscopic": vl_microscopic,
    "vl-slide-coordinates": vl_other(VL_SLIDE_COORDINATES, "SM"),
    "vl-photographic": vl_other(VL_PHOTOGRAPHIC, "XC"),
    "minimal-sc": minimal_sc,
    "multiframe-sc": multiframe_sc,
}
#: A source without StudyDate/StudyID passes them on empty (type 2), which dciodvfy notes for DICOMDIR.
SOURCE_WARNINGS = {
    "minimal-sc": ("needed to build DICOMDIR",),
    "multiframe-sc": ("needed to build DICOMDIR",),
}


def pixels_of(ds: Dataset) -> np.ndarray:
    """The first frame of a test source as (H, W, 3) uint8: what the worker's decoder hands over."""
    frame = np.frombuffer(ds.PixelData, np.uint8)[: ds.Rows * ds.Columns * 3]
    return frame.reshape(ds.Rows, ds.Columns, 3)


def save(ds: Dataset, directory: Path) -> Path:
    path = directory / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def dciodvfy(ds: Dataset, directory: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) that dicom3tools' dciodvfy reports for ``ds`` saved as a Part 10 file."""
    proc = subprocess.run(
        [_tool("dciodvfy"), str(save(ds, directory))],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=60,
        check=False,
    )
    lines = [line.strip() for line in (proc.stdout + proc.stderr).splitlines()]
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    return errors, warnings


def assert_valid(ds: Dataset, directory: Path, source_kind: str = "vl-microscopic") -> None:
    """No dciodvfy errors; warnings only those expected for every object or for this kind of source."""
    errors, warnings = dciodvfy(ds, directory)
    assert errors == []
    allowed = ALLOWED_WARNINGS + SOURCE_WARNINGS.get(source_kind, ())
    unexpected = [w for w in warnings if not any(a in w for a in allowed)]
    assert unexpected == []


def dsrdump(ds: Dataset, directory: Path) -> str:
    proc = subprocess.run(
        [_tool("dsrdump"), str(save(ds, directory))],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "E:" not in proc.stderr, proc.stderr
    return proc.stdout
