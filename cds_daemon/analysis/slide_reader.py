"""A whole slide opened for reading: wsidicom over its levels' files, lazily, a region at a time.

Writers in the field leave out what a reader needs. Before wsidicom sees a level, its header is checked
and, where it can be, repaired in a copy (the header rewritten, the pixel data copied as they are; the
received file is never changed):

- no Image Type (Orthanc's dicomizer writes none): ORIGINAL/PRIMARY/VOLUME for the largest level,
  DERIVED/PRIMARY/VOLUME/RESAMPLED for the others;
- no Pixel Spacing, or one that disagrees with Imaged Volume Width/Height over the Total Pixel Matrix
  (Orthanc's dicomizer 1.1 writes width/rows and height/columns): the spacing from the imaged volume.

A level whose µm/px cannot be known at all (neither attribute) makes the slide unreadable: the slide
ends as "not analysed" with that reason.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom import Dataset
from wsidicom import WsiDicom
from wsidicom.config import Settings as WsiSettings

from cds_daemon.analysis.decode import DecodeError
from cds_daemon.ops.logs import get_logger

log = get_logger("slides")

#: wsidicom's tile caches (100 MB each by default): every tile is read about once here, for the mask level's
#: strips or one field, so small caches keep the helper's memory flat on any slide.
READ_SETTINGS = WsiSettings(decoded_frame_cache_size=16 * 2**20, encoded_frame_cache_size=8 * 2**20)
#: Pixel Spacing and the imaged volume may differ this much (relative) before the spacing is taken for wrong.
SPACING_TOLERANCE = 0.05


class SlideUnreadable(DecodeError):
    """The slide's levels cannot be read (the reason is shown to reviewers as "not analysed")."""


@dataclass(frozen=True)
class SlideGeometry:
    """What the result objects need of the slide, in its Frame of Reference."""

    width: int  # level 0, pixels
    height: int
    mpp: float  # level 0, micrometres per pixel
    origin_mm: tuple[float, float]  # Total Pixel Matrix Origin in slide coordinates (x, y)
    orientation: tuple[float, ...]  # Image Orientation (Slide), six direction cosines
    focal_planes: tuple[float, ...]  # z of each focal plane of level 0, µm
    frame_of_reference_uid: str | None
    container_identifier: str | None


def _spacing_from_volume(ds: Dataset) -> tuple[float, float] | None:
    """(row, column) spacing in mm from Imaged Volume Height/Width and the Total Pixel Matrix."""
    try:
        width, height = float(ds.ImagedVolumeWidth), float(ds.ImagedVolumeHeight)
        cols, rows = int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows)
    except (AttributeError, TypeError, ValueError):
        return None
    if min(width, height) <= 0 or min(cols, rows) <= 0:
        return None
    return height / rows, width / cols


def _pixel_measures(ds: Dataset) -> Dataset | None:
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    measures = (shared[0].get("PixelMeasuresSequence") or []) if shared else []
    return measures[0] if measures else None


def _written_spacing(ds: Dataset) -> tuple[float, float] | None:
    measures = _pixel_measures(ds)
    value = measures.get("PixelSpacing") if measures is not None else None
    if not value or len(value) != 2 or min(float(v) for v in value) <= 0:
        return None
    return float(value[0]), float(value[1])


def level_spacing(ds: Dataset) -> tuple[tuple[float, float], str | None]:
    """A level's (row, column) spacing in mm, and what was repaired to get it (None: as written)."""
    written, volume = _written_spacing(ds), _spacing_from_volume(ds)
    if written is None:
        if volume is None:
            raise SlideUnreadable(
                "a level has neither Pixel Spacing nor Imaged Volume Width/Height: its µm/px is unknown"
            )
        return volume, "Pixel Spacing missing: taken from Imaged Volume Width/Height"
    if volume is not None and any(abs(w - v) > SPACING_TOLERANCE * v for w, v in zip(written, volume, strict=True)):
        return volume, "Pixel Spacing disagrees with Imaged Volume Width/Height: taken from the imaged volume"
    return written, None


def _repaired(path: Path, ds: Dataset, image_type: list[str], spacing: tuple[float, float], scratch: Path) -> Path:
    """A copy of ``path`` with the header fixed: the header is rewritten, the pixel data element copied as is."""
    ds = ds.copy()
    ds.ImageType = image_type
    shared = ds.get("SharedFunctionalGroupsSequence") or [Dataset()]
    measures = shared[0].get("PixelMeasuresSequence") or [Dataset()]
    measures[0].PixelSpacing = [f"{spacing[0]:.10g}", f"{spacing[1]:.10g}"]
    if "SliceThickness" not in measures[0]:
        measures[0].SliceThickness = 0.001
    shared[0].PixelMeasuresSequence = measures
    ds.SharedFunctionalGroupsSequence = shared
    with open(path, "rb") as src:
        pydicom.dcmread(src, stop_before_pixels=True)  # leaves the file at the Pixel Data element
        scratch.mkdir(parents=True, exist_ok=True)
        target = scratch / f"{uuid.uuid4().hex}.dcm"
        with open(target, "wb") as dst:
            pydicom.dcmwrite(dst, ds, enforce_file_format=True)
            shutil.copyfileobj(src, dst, 2**22)
    return target


class SlideImage:
    """A slide's levels opened with wsidicom (repaired copies in ``scratch`` where needed; see the module)."""

    def __init__(self, paths: list[Path], scratch: Path) -> None:
        headers = [(p, pydicom.dcmread(p, stop_before_pixels=True)) for p in paths]
        headers = [(p, ds) for p, ds in headers if "TotalPixelMatrixColumns" in ds]
        if not headers:
            raise SlideUnreadable("no level of the slide has a Total Pixel Matrix")
        largest = max(int(ds.TotalPixelMatrixColumns) * int(ds.TotalPixelMatrixRows) for _, ds in headers)
        self._scratch = scratch / uuid.uuid4().hex
        self.repairs: list[str] = []
        readable = []
        for path, ds in headers:
            spacing, repair = level_spacing(ds)
            image_type = [str(v) for v in ds.get("ImageType", [])]
            size = int(ds.TotalPixelMatrixColumns) * int(ds.TotalPixelMatrixRows)
            if len(image_type) < 3 or image_type[2] not in ("VOLUME", "THUMBNAIL", "LABEL", "OVERVIEW"):
                full = size == largest
                image_type = (
                    ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
                    if full
                    else [
                        "DERIVED",
                        "PRIMARY",
                        "VOLUME",
                        "RESAMPLED",
                    ]
                )
                repair = "; ".join(filter(None, [repair, "Image Type missing: taken for a volume level"]))
            if repair is None:
                readable.append(path)
                continue
            self.repairs.append(repair)
            readable.append(_repaired(path, ds, image_type, spacing, self._scratch))
        if self.repairs:
            log.info("slide_headers_repaired", levels=len(self.repairs), repairs=sorted(set(self.repairs)))
        try:
            self.wsi = WsiDicom.open(readable, settings=READ_SETTINGS)
        except Exception as exc:  # wsidicom raises its own errors and pydicom's for what it cannot read
            self.close()
            raise SlideUnreadable(f"the slide's levels cannot be read: {type(exc).__name__}: {exc}") from exc
        base = next(
            ds for _, ds in headers if int(ds.TotalPixelMatrixColumns) * int(ds.TotalPixelMatrixRows) == largest
        )
        origin = (base.get("TotalPixelMatrixOriginSequence") or [Dataset()])[0]
        size = self.wsi.size
        self.geometry = SlideGeometry(
            width=int(size.width),
            height=int(size.height),
            mpp=float(self.wsi.mpp.width),
            origin_mm=(
                float(origin.get("XOffsetInSlideCoordinateSystem", 0.0) or 0.0),
                float(origin.get("YOffsetInSlideCoordinateSystem", 0.0) or 0.0),
            ),
            orientation=tuple(float(v) for v in (base.get("ImageOrientationSlide") or [0, -1, 0, -1, 0, 0])),
            focal_planes=tuple(float(z) for z in self.wsi.levels.base_level.focal_planes),
            frame_of_reference_uid=str(base.get("FrameOfReferenceUID", "") or "") or None,
            container_identifier=str(base.get("ContainerIdentifier", "") or "") or None,
        )
        self.header = base

    def levels(self) -> list[tuple[int, float, tuple[int, int]]]:
        """(wsidicom level, downsample from level 0, (width, height)) of each level, finest first."""
        out = []
        for level in self.wsi.levels:
            out.append(
                (int(level.level), self.geometry.width / level.size.width, (level.size.width, level.size.height))
            )
        return out

    def read(self, x: int, y: int, width: int, height: int, level: int = 0, z: float | None = None) -> np.ndarray:
        """An RGB region; (x, y, width, height) in pixels of ``level``. A tile that does not decode makes the
        slide unreadable (the reason says where)."""
        try:
            region = self.wsi.read_region((x, y), level, (width, height), z=z, as_array=True)
        except Exception as exc:  # Pillow, pylibjpeg and wsidicom raise their own types for a broken tile
            raise SlideUnreadable(
                f"level {level}, region {width}x{height} at ({x}, {y}) cannot be read: {type(exc).__name__}: {exc}"
            ) from exc
        return np.ascontiguousarray(np.asarray(region)[..., :3])

    def close(self) -> None:
        wsi = getattr(self, "wsi", None)
        if wsi is not None:
            wsi.close()
        shutil.rmtree(self._scratch, ignore_errors=True)

    def __enter__(self) -> SlideImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
