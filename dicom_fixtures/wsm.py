"""A :class:`~dicom_fixtures.smear.Smear` as a DICOM VL Whole Slide Microscopy pyramid (PS3.3 A.32.8).

One instance per level, tiles as frames in TILED_FULL order (column fastest, then row, then focal
plane). Level 0 carries every focal plane; the lower levels only the focused one, as scanners do.
JPEG Baseline tiles (YBR_FULL_422) or native RGB. ``pixel_spacing=False`` leaves Pixel Spacing out, as
Orthanc's dicomizer does, so a reader must derive µm/px from Imaged Volume Width/Height.
"""

import datetime as dt
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageCms
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, JPEGBaseline8Bit

from . import modules
from .encoding import JPEG_QUALITY, jpeg_baseline_frame
from .identity import PatientInfo, fake_patient, make_uid
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


@dataclass(frozen=True)
class _Slide:
    """What every level of one slide shares."""

    patient: PatientInfo
    study: modules.StudyInfo
    series_uid: str
    frame_uid: str
    container: str
    width: int  # level 0
    height: int
    mpp: float
    planes: int
    plane_spacing_um: float


def _identity(
    seed: int, label: str, patient: PatientInfo | None, study_uid: str | None
) -> tuple[PatientInfo, modules.StudyInfo, str, str, str]:
    patient = patient or fake_patient(seed)
    study_uid = study_uid or make_uid("study", seed, patient.patient_id)
    series_uid = make_uid("wsm-series", study_uid, seed, label)
    frame_uid = make_uid("wsm-frame-of-reference", series_uid)
    study = modules.study_for(study_uid)
    return patient, study, series_uid, frame_uid, f"FXS-{study.accession[4:]}-W{seed % 1000:03d}"


def _level_dataset(
    slide: _Slide, number: int, factor: int, rows: int, cols: int, planes: int, tile: int, jpeg: bool, spacing: bool
) -> Dataset:
    """One level's data set, without its Pixel Data."""
    when = slide.study.when + dt.timedelta(minutes=5)
    ds = Dataset()
    sop_uid = make_uid("wsm-instance", slide.series_uid, factor)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = WSM_SOP_CLASS
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = "DICOM_FIXTURES"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
    modules.add_sop_common(ds, WSM_SOP_CLASS, sop_uid, when)
    modules.add_patient(ds, slide.patient)
    modules.add_study(ds, slide.study, slide.patient)
    modules.add_series(ds, slide.series_uid, "SM", 10, "FNAB smear, whole slide")
    modules.add_equipment(ds)
    ds.FrameOfReferenceUID = slide.frame_uid
    ds.PositionReferenceIndicator = "SLIDE_CORNER"
    ds.InstanceNumber = number
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S")
    original = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.ImageType = original if factor == 1 else ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"]
    frames = -(-cols // tile) * -(-rows // tile) * planes
    modules.add_image_pixel(ds, tile, tile, frames, "YBR_FULL_422" if jpeg else "RGB")
    ds.TotalPixelMatrixColumns = cols
    ds.TotalPixelMatrixRows = rows
    ds.TotalPixelMatrixFocalPlanes = planes
    ds.NumberOfOpticalPaths = 1
    mm_per_px0 = slide.mpp / 1000.0
    ds.ImagedVolumeWidth = round(slide.width * mm_per_px0, 6)
    ds.ImagedVolumeHeight = round(slide.height * mm_per_px0, 6)
    ds.ImagedVolumeDepth = slide.plane_spacing_um / 1000.0 * slide.planes
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
    organisation.DimensionOrganizationUID = make_uid("wsm-dimension", slide.series_uid)
    ds.DimensionOrganizationSequence = [organisation]
    ds.AcquisitionContextSequence = []
    ds.OpticalPathSequence = [_optical_path()]
    modules.add_specimen(ds, slide.container, f"{slide.container}-A", make_uid("specimen", slide.series_uid))
    measures = Dataset()
    if spacing:
        measures.PixelSpacing = [
            round(mm_per_px0 * slide.height / rows, 8),
            round(mm_per_px0 * slide.width / cols, 8),
        ]
    measures.SliceThickness = slide.plane_spacing_um / 1000.0
    if planes > 1:
        measures.SpacingBetweenSlices = slide.plane_spacing_um / 1000.0
    frame_type = Dataset()
    frame_type.FrameType = list(ds.ImageType)
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    shared.WholeSlideMicroscopyImageFrameTypeSequence = [frame_type]
    optical = Dataset()
    optical.OpticalPathIdentifier = "1"
    shared.OpticalPathIdentificationSequence = [optical]
    ds.SharedFunctionalGroupsSequence = [shared]
    return ds


def _write_level(path: Path, ds: Dataset, tiles: Iterator[np.ndarray], *, jpeg: bool, quality: int) -> Path:
    """The header, then Pixel Data written frame by frame (a level of any size never sits in memory)."""
    with open(path, "wb") as fh:
        pydicom.dcmwrite(fh, ds, enforce_file_format=True)
        if jpeg:
            fh.write(struct.pack("<HH2s2xL", 0x7FE0, 0x0010, b"OB", 0xFFFFFFFF))
            fh.write(struct.pack("<HHL", 0xFFFE, 0xE000, 0))  # an empty Basic Offset Table
            for tile in tiles:
                frame = jpeg_baseline_frame(tile, quality)
                frame += b"\x00" * (len(frame) % 2)
                fh.write(struct.pack("<HHL", 0xFFFE, 0xE000, len(frame)))
                fh.write(frame)
            fh.write(struct.pack("<HHL", 0xFFFE, 0xE0DD, 0))
        else:
            length = int(ds.NumberOfFrames) * int(ds.Rows) * int(ds.Columns) * 3
            fh.write(struct.pack("<HH2s2xL", 0x7FE0, 0x0010, b"OB", length + length % 2))
            for tile in tiles:
                fh.write(tile.tobytes())
            fh.write(b"\x00" * (length % 2))
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
    patient, study, series_uid, frame_uid, container = _identity(seed, smear.label, patient, study_uid)
    rows0, cols0 = smear.shape
    slide = _Slide(
        patient,
        study,
        series_uid,
        frame_uid,
        container,
        cols0,
        rows0,
        smear.mpp,
        len(smear.planes),
        smear.plane_spacing_um,
    )
    paths = []
    for number, factor in enumerate(downsamples, start=1):
        planes = list(smear.planes) if factor == 1 else [_downsample(smear.planes[smear.sharpest], factor)]
        rows, cols = planes[0].shape[:2]
        ds = _level_dataset(slide, number, factor, rows, cols, len(planes), tile, jpeg, pixel_spacing)
        path = out_dir / f"level-{number - 1}.dcm"
        paths.append(_write_level(path, ds, _tiles(planes, tile), jpeg=jpeg, quality=JPEG_QUALITY))
    return WrittenSlide(tuple(paths), study.uid, series_uid, frame_uid, container)


def _periodic_tiles(pattern: np.ndarray, rows: int, cols: int, tile: int) -> Iterator[np.ndarray]:
    """TILED_FULL tiles of a ``rows`` x ``cols`` image that repeats ``pattern`` in both directions."""
    ph, pw = pattern.shape[:2]
    for y in range(0, rows, tile):
        for x in range(0, cols, tile):
            ys = np.arange(y, y + tile) % ph
            xs = np.arange(x, x + tile) % pw
            piece = pattern[ys[:, None], xs[None, :]]
            if y + tile > rows or x + tile > cols:
                piece = piece.copy()
                piece[max(0, rows - y) :, :] = 255
                piece[:, max(0, cols - x) :] = 255
            yield np.ascontiguousarray(piece)


def write_large_wsm(
    smear: Smear,
    out_dir: Path,
    width: int,
    height: int,
    *,
    seed: int = 0,
    downsamples: tuple[int, ...] = (1, 4, 16, 64),
    jpeg: bool = True,
    quality: int = JPEG_QUALITY,
) -> WrittenSlide:
    """A slide of ``width`` x ``height`` px that repeats ``smear``'s focused plane (benchmarks: GB-sized levels,
    written a tile at a time). The smear's sides must divide by every downsample factor."""
    if any(side % f for side in smear.shape for f in downsamples):
        raise ValueError(f"the smear's {smear.shape} must divide by every downsample factor {downsamples}")
    out_dir.mkdir(parents=True, exist_ok=True)
    patient, study, series_uid, frame_uid, container = _identity(seed, smear.label, None, None)
    slide = _Slide(
        patient, study, series_uid, frame_uid, container, width, height, smear.mpp, 1, smear.plane_spacing_um
    )
    pattern0 = smear.planes[smear.sharpest]
    paths = []
    for number, factor in enumerate(downsamples, start=1):
        rows, cols = -(-height // factor), -(-width // factor)
        ds = _level_dataset(slide, number, factor, rows, cols, 1, TILE, jpeg, True)
        tiles = _periodic_tiles(_downsample(pattern0, factor), rows, cols, TILE)
        paths.append(_write_level(out_dir / f"level-{number - 1}.dcm", ds, tiles, jpeg=jpeg, quality=quality))
    return WrittenSlide(tuple(paths), study.uid, series_uid, frame_uid, container)


#: Broken slides, and what the daemon does with each: "refused" at C-STORE, "not analysed" after
#: the quiet period, or "analysed" (a slide without its lower levels is still read, from level 0).
BROKEN_SLIDES: dict[str, str] = {
    "truncated-level": "refused",
    "wrong-offsets": "refused",
    "undecodable-tiles": "not analysed",
    "missing-levels": "analysed",
}


def write_broken_slide(kind: str, smear: Smear, out_dir: Path, *, seed: int = 0) -> list[Path]:
    """A small pyramid of ``smear`` broken as ``kind`` (a key of :data:`BROKEN_SLIDES`); returns its files.

    truncated-level: level 0 cut in the middle of its pixel data; wrong-offsets: level 0 with a Basic
    Offset Table whose offsets point inside the items; undecodable-tiles: every tile of the lowest level
    keeps its JPEG header but its scan is garbage; missing-levels: level 0 only.
    """
    from pydicom.encaps import encapsulate, generate_frames

    from .broken import _replace_scan_data

    if kind not in BROKEN_SLIDES:
        raise ValueError(f"unknown broken slide {kind!r}; expected one of {', '.join(BROKEN_SLIDES)}")
    written = write_wsm(smear, out_dir, seed=seed)
    paths = list(written.paths)
    if kind == "missing-levels":
        for path in paths[1:]:
            path.unlink()
        return paths[:1]
    target = paths[0] if kind != "undecodable-tiles" else paths[-1]
    if kind == "truncated-level":
        data = target.read_bytes()
        target.write_bytes(data[: len(data) * 6 // 10])
        return paths
    ds = pydicom.dcmread(target)
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    if kind == "undecodable-tiles":
        rng = np.random.default_rng(seed)
        ds.PixelData = encapsulate([_replace_scan_data(f, rng) for f in frames], has_bot=False)
    else:
        value = bytearray(encapsulate(frames, has_bot=True))
        n = len(frames)
        offsets = struct.unpack(f"<{n}L", value[8 : 8 + 4 * n])
        value[8 : 8 + 4 * n] = struct.pack(f"<{n}L", *(o + 6 if i else o for i, o in enumerate(offsets)))
        ds.PixelData = bytes(value)
    ds["PixelData"].VR = "OB"
    ds.save_as(target, enforce_file_format=True)
    return paths
