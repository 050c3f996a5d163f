"""A :class:`~dicom_fixtures.smear.Smear` as a DICOM VL Whole Slide Microscopy pyramid (PS3.3 A.32.8).

One instance per level, tiles as frames in TILED_FULL order (column fastest, then row, then focal
plane). Level 0 carries every focal plane; the lower levels only the focused one, as scanners do.
JPEG Baseline tiles (YBR_FULL_422) or native RGB. ``pixel_spacing=False`` leaves Pixel Spacing out, as
Orthanc's dicomizer does, so a reader must derive µm/px from Imaged Volume Width/Height.
"""

import datetime as dt
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, JPEGBaseline8Bit

from . import modules
from .encoding import jpeg_baseline_frame
from .identity import PatientInfo, accession_number, fake_patient, make_uid, study_datetime
from .smear import Smear

WSM_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
TILE = 512
#: Where the scanned area's corner lies on the slide (mm, slide coordinates).
ORIGIN_MM = (20.0, 5.0)


@dataclass(frozen=True)
class WrittenSlide:
    paths: tuple[Path, ...]
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    container_identifier: str


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _tiles(planes: list[np.ndarray], tile: int) -> Iterator[np.ndarray]:
    """TILED_FULL order; edge tiles padded with white."""
    rows, cols = planes[0].shape[:2]
    for plane in planes:
        for y in range(0, rows, tile):
            for x in range(0, cols, tile):
                piece = plane[y : y + tile, x : x + tile]
                if piece.shape[:2] != (tile, tile):
                    padded = np.full((tile, tile, 3), 255, np.uint8)
                    padded[: piece.shape[0], : piece.shape[1]] = piece
                    piece = padded
                yield np.ascontiguousarray(piece)


def _downsample(image: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return image
    rows, cols = image.shape[:2]
    size = (max(1, cols // factor), max(1, rows // factor))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))


def _optical_path() -> Dataset:
    path = Dataset()
    path.OpticalPathIdentifier = "1"
    path.OpticalPathDescription = "Brightfield"
    path.IlluminationTypeCodeSequence = [_code("111744", "DCM", "Brightfield illumination")]
    path.IlluminationColorCodeSequence = [_code("414298005", "SCT", "Full Spectrum")]
    path.ICCProfile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return path


def write_wsm(
    smear: Smear,
    out_dir: Path,
    *,
    seed: int = 0,
    downsamples: tuple[int, ...] = (1, 4, 16),
    tile: int = TILE,
    jpeg: bool = True,
    pixel_spacing: bool = True,
    patient: PatientInfo | None = None,
    study_uid: str | None = None,
) -> WrittenSlide:
    """Write the pyramid as ``level-<n>.dcm`` files in ``out_dir`` (one series, one Frame of Reference)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    patient = patient or fake_patient(seed)
    study_uid = study_uid or make_uid("study", seed, patient.patient_id)
    series_uid = make_uid("wsm-series", study_uid, seed, smear.label)
    frame_uid = make_uid("wsm-frame-of-reference", series_uid)
    study_key = int(hashlib.blake2b(study_uid.encode(), digest_size=6).hexdigest(), 16)
    study = modules.StudyInfo(
        uid=study_uid,
        when=study_datetime(study_key),
        accession=accession_number(study_key),
        study_id=f"FX{study_key % 10**8:08d}",
    )
    container = f"FXS-{study.accession[4:]}-W{seed % 1000:03d}"
    rows0, cols0 = smear.shape
    mm_per_px0 = smear.mpp / 1000.0
    paths = []
    for number, factor in enumerate(downsamples, start=1):
        planes = list(smear.planes) if factor == 1 else [_downsample(smear.planes[smear.sharpest], factor)]
        rows, cols = planes[0].shape[:2]
        when = study.when + dt.timedelta(minutes=5)
        ds = Dataset()
        sop_uid = make_uid("wsm-instance", series_uid, factor)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = WSM_SOP_CLASS
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta.ImplementationVersionName = "DICOM_FIXTURES"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
        modules.add_sop_common(ds, WSM_SOP_CLASS, sop_uid, when)
        modules.add_patient(ds, patient)
        modules.add_study(ds, study, patient)
        modules.add_series(ds, series_uid, "SM", 10, "FNAB smear, whole slide")
        modules.add_equipment(ds)
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = "SLIDE_CORNER"
        ds.InstanceNumber = number
        ds.ContentDate = ds.StudyDate
        ds.ContentTime = ds.StudyTime
        ds.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S")
        ds.ImageType = (
            ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
            if factor == 1
            else [
                "DERIVED",
                "PRIMARY",
                "VOLUME",
                "RESAMPLED",
            ]
        )
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "YBR_FULL_422" if jpeg else "RGB"
        ds.PlanarConfiguration = 0
        ds.Rows = tile
        ds.Columns = tile
        ds.BitsAllocated = 8
        ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.TotalPixelMatrixColumns = cols
        ds.TotalPixelMatrixRows = rows
        ds.TotalPixelMatrixFocalPlanes = len(planes)
        ds.NumberOfOpticalPaths = 1
        tiles_across, tiles_down = -(-cols // tile), -(-rows // tile)
        ds.NumberOfFrames = tiles_across * tiles_down * len(planes)
        ds.ImagedVolumeWidth = round(cols0 * mm_per_px0, 6)
        ds.ImagedVolumeHeight = round(rows0 * mm_per_px0, 6)
        ds.ImagedVolumeDepth = smear.plane_spacing_um / 1000.0 * len(smear.planes)
        origin = Dataset()
        origin.XOffsetInSlideCoordinateSystem = ORIGIN_MM[0]
        origin.YOffsetInSlideCoordinateSystem = ORIGIN_MM[1]
        ds.TotalPixelMatrixOriginSequence = [origin]
        ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
        ds.VolumetricProperties = "VOLUME"
        ds.SpecimenLabelInImage = "NO"
        ds.BurnedInAnnotation = "NO"
        ds.FocusMethod = "AUTO"
        ds.ExtendedDepthOfField = "NO"
        ds.LossyImageCompression = "01" if jpeg else "00"
        if jpeg:
            ds.LossyImageCompressionMethod = "ISO_10918_1"
            ds.LossyImageCompressionRatio = 10
        ds.DimensionOrganizationType = "TILED_FULL"
        organisation = Dataset()
        organisation.DimensionOrganizationUID = make_uid("wsm-dimension", series_uid)
        ds.DimensionOrganizationSequence = [organisation]
        ds.AcquisitionContextSequence = []
        ds.OpticalPathSequence = [_optical_path()]
        modules.add_specimen(ds, container, f"{container}-A", make_uid("specimen", series_uid))
        measures = Dataset()
        spacing_mm = mm_per_px0 * (cols0 / cols)
        if pixel_spacing:
            measures.PixelSpacing = [round(spacing_mm * (rows0 / rows) / (cols0 / cols), 8), round(spacing_mm, 8)]
        measures.SliceThickness = smear.plane_spacing_um / 1000.0
        if len(planes) > 1:
            measures.SpacingBetweenSlices = smear.plane_spacing_um / 1000.0
        frame_type = Dataset()
        frame_type.FrameType = list(ds.ImageType)
        shared = Dataset()
        shared.PixelMeasuresSequence = [measures] if len(measures) else []
        shared.WholeSlideMicroscopyImageFrameTypeSequence = [frame_type]
        optical = Dataset()
        optical.OpticalPathIdentifier = "1"
        shared.OpticalPathIdentificationSequence = [optical]
        ds.SharedFunctionalGroupsSequence = [shared]
        if jpeg:
            ds.PixelData = encapsulate([jpeg_baseline_frame(t) for t in _tiles(planes, tile)], has_bot=False)
            ds["PixelData"].VR = "OB"
        else:
            ds.PixelData = b"".join(t.tobytes() for t in _tiles(planes, tile))
            ds["PixelData"].VR = "OB"
        path = out_dir / f"level-{number - 1}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return WrittenSlide(tuple(paths), study_uid, series_uid, frame_uid, container)
